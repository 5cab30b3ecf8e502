"""bench/bench_host_holes.py's arguments: a bad list is refused by argparse, in one line."""

from __future__ import annotations

import pytest

from bench.bench_host_holes import main


@pytest.mark.parametrize(
    ("flag", "value", "said"),
    [
        ("--max-holes", "abc", "not a list of numbers"),
        ("--max-holes", "256,0", "a cap is at least 1"),
        ("--min-hole", "4Q", "not a size"),
        ("--min-hole", "4K,512", "sizes are whole KiB"),
    ],
)
def test_a_bad_rule_list_is_refused(
    flag: str, value: str, said: str, capsys: pytest.CaptureFixture[str]
) -> None:
    with pytest.raises(SystemExit) as e:
        main(["profile.json", ".", flag, value])
    assert e.value.code == 2
    err = capsys.readouterr().err.strip().splitlines()[-1]
    assert said in err and flag in err
