"""bench/bench_host_load.py's arguments: a bad rule or round count is refused by argparse,
in one line, before anything is read or written."""

from __future__ import annotations

from pathlib import Path

import pytest

from bench.bench_host_load import main


@pytest.mark.parametrize(
    ("flag", "value", "said"),
    [
        ("--min-hole", "4Q", "not a size"),
        ("--min-hole", "default,512", "sizes are whole KiB"),
        ("--rounds", "0", "a number of rounds"),
        ("--rounds", "x", "a number of rounds"),
    ],
)
def test_a_bad_argument_is_refused(
    flag: str, value: str, said: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    work = tmp_path / "work"
    with pytest.raises(SystemExit) as e:
        main(["profile.json", "lib.so", flag, value, "--workdir", str(work)])
    assert e.value.code == 2
    err = capsys.readouterr().err.strip().splitlines()[-1]
    assert said in err and flag in err
    assert not work.exists()


def test_rules_are_named_in_kib_once_each() -> None:
    from bench.bench_host_load import rules_arg

    assert rules_arg("64K,default,65536,16K") == ["default", "16K", "64K"]
