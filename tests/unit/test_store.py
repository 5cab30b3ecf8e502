"""The store: hashed once when written, trusted by identity, re-hashed when that changes."""

from __future__ import annotations

import os
import zipfile
from pathlib import Path
from typing import Any

import pytest

from slimwheel import build as build_module
from slimwheel import store as store_module
from slimwheel import wheel as wheel_module
from slimwheel.cli import main
from slimwheel.store import Store, file_sha256
from slimwheel.wheel import WheelError, set_metadata_field, source_date_epoch
from tests.integration.test_build import make_wheel


def _make(data: bytes) -> Any:
    def build(dest: Path) -> dict[str, Any]:
        dest.write_bytes(data)
        return {"n": len(data)}

    return build


def _count_hashes(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    calls: list[str] = []
    real = store_module.file_sha256

    def counting(path: str | os.PathLike[str]) -> str:
        calls.append(os.fspath(path))
        return real(path)

    monkeypatch.setattr(store_module, "file_sha256", counting)
    return calls


def test_lookup_trusts_identity_and_rehashes_when_it_changes(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    store = Store(tmp_path / "s")
    key = "ab" * 32
    entry, built = store.get_or_build(key, _make(b"x" * 1000))
    assert built and entry.sha256 == file_sha256(entry.path)
    calls = _count_hashes(monkeypatch)
    for _ in range(3):
        assert store.lookup(key) is not None
    assert calls == [], "an unchanged entry is not read again"

    st = entry.path.stat()
    os.utime(entry.path, ns=(st.st_atime_ns, st.st_mtime_ns + 10**9))  # touched, same bytes
    assert store.lookup(key) is not None
    assert len(calls) == 1, "a changed identity is re-hashed once"
    assert store.lookup(key) is not None and len(calls) == 1, "and then trusted again"

    with open(entry.path, "r+b") as f:  # other bytes, same size, new mtime
        f.write(b"y")
    assert store.lookup(key) is None
    again, rebuilt = store.get_or_build(key, _make(b"x" * 1000))
    assert rebuilt and again.path.read_bytes() == b"x" * 1000


def test_verify_finds_what_identity_cannot(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    store = Store(tmp_path / "s")
    good, _ = store.get_or_build("aa" * 32, _make(b"good" * 100))
    bad, _ = store.get_or_build("bb" * 32, _make(b"bad!" * 100))
    st = bad.path.stat()
    with open(bad.path, "r+b") as f:  # corrupted in place, identity restored
        f.write(b"BAD!")
    os.utime(bad.path, ns=(st.st_atime_ns, st.st_mtime_ns))
    assert store.lookup(bad.key) is not None, "identity alone cannot see it"
    assert main(["cache", "--store", str(store.root), "verify"]) == 1
    out = capsys.readouterr().out
    assert f"removed {bad.key}: library: content differs" in out
    assert "checked 2 entries: 1 intact, 1 removed" in out
    assert store.lookup(bad.key) is None and store.lookup(good.key) is not None
    assert main(["cache", "--store", str(store.root), "verify"]) == 0


def test_derived_form_is_made_once(tmp_path: Path) -> None:
    store = Store(tmp_path / "s")
    entry, _ = store.get_or_build("cc" * 32, _make(b"z" * 5000))
    made: list[Path] = []

    def make(src: Path, dest: Path) -> dict[str, Any]:
        made.append(src)
        dest.write_bytes(src.read_bytes()[::-1])
        return {"reversed": True}

    p1, info1 = store.derived(entry, "rev", make)
    p2, info2 = store.derived(entry, "rev", make)
    assert len(made) == 1 and p1 == p2 and info1 == info2 and info1["reversed"] is True
    assert p1.read_bytes() == b"z" * 5000
    with open(p1, "r+b") as f:
        f.write(b"!")  # damaged: made again
    os.utime(p1, ns=(0, 0))
    store.derived(entry, "rev", make)
    assert len(made) == 2


def test_warm_build_reads_no_member_and_validates_nothing_again(
    fixture_libs: dict[str, Path], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    lib = fixture_libs["many_size"].read_bytes()
    nocode = fixture_libs["sm80_only"].read_bytes()
    wheel = make_wheel(tmp_path, "demo", "1.0", {"demo/a.so": lib, "demo/b.so": nocode})
    store = str(tmp_path / "store")
    cmd = ["build", str(wheel), "--arch", "sm_80", "-q", "--jobs", "1", "--store", store]
    assert main([*cmd, "-o", str(tmp_path / "cold")]) == 0

    def refuse(*_a: object, **_k: object) -> None:
        raise AssertionError("a warm build read what the store already knew")

    monkeypatch.setattr(build_module, "extract_member", refuse)
    monkeypatch.setattr(wheel_module, "_hash_member", refuse)
    copy = tmp_path / "copy" / wheel.name
    copy.parent.mkdir()
    copy.write_bytes(wheel.read_bytes())  # byte-identical: validated already
    assert main([*cmd[:1], str(copy), *cmd[2:], "-o", str(tmp_path / "warm")]) == 0
    (cold,) = (tmp_path / "cold").glob("*.whl")
    (warm,) = (tmp_path / "warm").glob("*.whl")
    assert cold.read_bytes() == warm.read_bytes()
    with zipfile.ZipFile(warm) as zf:
        assert zf.testzip() is None


def test_metadata_field_is_edited_by_field() -> None:
    text = (
        "Metadata-Version: 2.1\nName: demo\nVersion: 1.0\n  continued\n"
        "Summary: x\n\nVersion: 1.0 in the description\n"
    )
    out = set_metadata_field(text, "Version", "1.0+sm90")
    assert out == (
        "Metadata-Version: 2.1\nName: demo\nVersion: 1.0+sm90\n"
        "Summary: x\n\nVersion: 1.0 in the description\n"
    )
    crlf = "Name: demo\r\nversion: 2\r\n\r\nbody\r\n"
    assert set_metadata_field(crlf, "Version", "3") == "Name: demo\r\nversion: 3\r\n\r\nbody\r\n"
    with pytest.raises(WheelError, match="no Version field"):
        set_metadata_field("Name: demo\n\nVersion: 1\n", "Version", "2")


@pytest.mark.parametrize("value", ["1e20", "nan", "inf", "-1", "4354819200", "soon"])
def test_source_date_epoch_out_of_range(value: str, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SOURCE_DATE_EPOCH", value)
    with pytest.raises(wheel_module.InputError, match="SOURCE_DATE_EPOCH"):
        source_date_epoch()
