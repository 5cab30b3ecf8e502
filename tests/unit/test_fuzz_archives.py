"""Fuzzing the untrusted parts of archives and environments (hypothesis, bounded).

Wheel members and RECORD lines, conda members (names, kinds, link targets),
provenance JSON, environment RECORD lines: whatever the input, only a
SlimwheelError comes out, and nothing is written outside the place given.
"""

from __future__ import annotations

import contextlib
import io
import json
import os
import posixpath
import tarfile
import tempfile
import warnings
import zipfile
from pathlib import Path

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from slimwheel.condapkg import unpack
from slimwheel.env import PipRecords
from slimwheel.errors import SlimwheelError
from slimwheel.index import read_wheel
from slimwheel.wheel import open_wheel, rewrite_wheel

SETTINGS = settings(
    max_examples=120,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture],
)

_PARTS = st.sampled_from(
    ["demo", "..", ".", "", "lib", "x.so", "a\\b", "C:", "\0", "é", "demo-1.0.dist-info", "~"]
)
names = st.lists(_PARTS, min_size=1, max_size=5).map("/".join)
json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.text(max_size=20),
    lambda kids: (
        st.lists(kids, max_size=4) | st.dictionaries(st.text(max_size=8), kids, max_size=4)
    ),
    max_leaves=12,
)
record_fields = st.lists(
    st.one_of(names, st.text(max_size=30), st.sampled_from(["sha256=", "sha256=AAAA", "12", "-1"])),
    min_size=0,
    max_size=4,
)


def _csv_line(fields: list[str]) -> str:
    import csv

    buf = io.StringIO()
    csv.writer(buf, lineterminator="\n").writerow(fields)
    return buf.getvalue()


def _outside(root: Path, before: set[str]) -> set[str]:
    """Paths under ``root`` that appeared since ``before``."""
    return {str(p) for p in root.rglob("*")} - before


@SETTINGS
@given(
    members=st.lists(names, min_size=0, max_size=6),
    record=st.lists(record_fields, max_size=6),
    provenance=json_values,
)
def test_wheels(members: list[str], record: list[list[str]], provenance: object) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        wheel = root / "demo-1.0-py3-none-any.whl"
        di = "demo-1.0.dist-info"
        with zipfile.ZipFile(wheel, "w") as zf:
            zf.writestr(f"{di}/METADATA", "Metadata-Version: 2.1\nName: demo\nVersion: 1.0\n")
            zf.writestr(f"{di}/WHEEL", "Wheel-Version: 1.0\n")
            zf.writestr(f"{di}/slimwheel.json", json.dumps(provenance))
            for m in members:
                with warnings.catch_warnings():  # a duplicate name is a case, not a problem
                    warnings.simplefilter("ignore")
                    if m.split("\0")[0]:  # zipfile cuts a name at its first NUL
                        zf.writestr(m, b"data")
            zf.writestr(f"{di}/RECORD", "".join(_csv_line(f) for f in record))
        out = root / "out"
        out.mkdir()
        before = {str(p) for p in root.rglob("*")}
        try:
            info = open_wheel(str(wheel))
        except SlimwheelError:
            info = None
        with contextlib.suppress(SlimwheelError):
            read_wheel(wheel)
        if info is not None:
            from packaging.version import Version

            with contextlib.suppress(SlimwheelError):
                rewrite_wheel(info, out, version=Version("1.0+x"))
        created = _outside(root, before)
        assert all(p.startswith(str(out) + os.sep) for p in created), created


_KINDS = st.sampled_from(["file", "dir", "symlink", "hardlink"])
# Safe names often, so members get past the name checks to the link and kind checks.
member_names = st.one_of(
    st.lists(st.sampled_from(["demo", "lib", "x.so"]), min_size=1, max_size=3).map("/".join),
    names,
)
link_targets = st.one_of(names, st.sampled_from(["..", "../..", "/etc", "a/../../b", "lib"]))


@settings(SETTINGS, max_examples=500)
@given(
    entries=st.lists(st.tuples(member_names, _KINDS, link_targets), min_size=1, max_size=8),
    paths_json=json_values,
)
def test_conda_packages(entries: list[tuple[str, str, str]], paths_json: object) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        pkg = root / "demo-1.0-0.tar.bz2"
        with tarfile.open(pkg, "w:bz2") as tf:

            def add(name: str, kind: str, target: str, data: bytes = b"x") -> None:
                ti = tarfile.TarInfo(name)
                if kind == "dir":
                    ti.type = tarfile.DIRTYPE
                elif kind == "symlink":
                    ti.type, ti.linkname = tarfile.SYMTYPE, target
                elif kind == "hardlink":
                    ti.type, ti.linkname = tarfile.LNKTYPE, target
                else:
                    ti.size = len(data)
                tf.addfile(ti, io.BytesIO(data) if kind == "file" else None)

            index = {"name": "demo", "version": "1.0", "build": "0", "subdir": "linux-64"}
            add("info/index.json", "file", "", json.dumps(index).encode())
            add("info/paths.json", "file", "", json.dumps(paths_json).encode())
            for name, kind, target in entries:
                if name:
                    add(name, kind, target)
        dest = root / "dest"
        dest.mkdir()
        before = {str(p) for p in root.rglob("*")}
        with contextlib.suppress(SlimwheelError):
            unpack(pkg, dest)
        created = _outside(root, before)
        assert all(p.startswith(str(dest) + os.sep) for p in created), created
        for p in dest.rglob("*"):
            if p.is_symlink():  # every link it made stays inside
                target = posixpath.normpath(
                    posixpath.join(posixpath.dirname(str(p)), os.readlink(p))
                )
                assert target.startswith(str(dest)), (p, os.readlink(p))


@SETTINGS
@given(rows=st.lists(record_fields, max_size=8))
def test_environment_records(rows: list[list[str]]) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        site = Path(tmp)
        di = site / "demo-1.0.dist-info"
        di.mkdir()
        (di / "RECORD").write_text("".join(_csv_line(r) for r in rows))
        try:
            found = list(PipRecords(site).files())
        except SlimwheelError:
            return
        for _owner, rel in found:
            assert not rel.startswith("/") and posixpath.normpath(rel) == rel
            assert rel != ".." and not rel.startswith("../")
