"""``slimwheel build`` and the store: reproducible, installable slim wheels."""

from __future__ import annotations

import base64
import csv
import hashlib
import io
import json
import os
import subprocess
import sys
import zipfile
from pathlib import Path

import jsonschema
import pytest

from slimwheel.arch import Target, can_run
from slimwheel.cli import main
from slimwheel.elf import open_elf
from slimwheel.fatbin import scan
from slimwheel.store import Store, file_sha256
from slimwheel.wheel import record_hash
from tests.helpers import local_wheel, venv_purelib

SM90 = Target(9, 0)


def _hash(data: bytes) -> str:
    return "sha256=" + base64.urlsafe_b64encode(hashlib.sha256(data).digest()).rstrip(b"=").decode()


def make_wheel(
    outdir: Path,
    name: str,
    version: str,
    files: dict[str, bytes],
    *,
    tag: str = "py3-none-linux_x86_64",
    lie: str | None = None,
    symlink: str | None = None,
) -> Path:
    """A wheel as a build backend writes it (dist-info, METADATA, WHEEL, RECORD)."""
    di = f"{name}-{version}.dist-info"
    members = dict(files)
    members[f"{di}/METADATA"] = (
        f"Metadata-Version: 2.1\nName: {name}\nVersion: {version}\n".encode()
    )
    members[f"{di}/WHEEL"] = (
        f"Wheel-Version: 1.0\nGenerator: test\nRoot-Is-Purelib: false\nTag: {tag}\n".encode()
    )
    rows = []
    for path, data in members.items():
        h = _hash(data)
        if path == lie:
            h = _hash(b"something else")
        rows.append([path, h, str(len(data))])
    rows.append([f"{di}/RECORD", "", ""])
    buf = io.StringIO()
    csv.writer(buf, lineterminator="\n").writerows(rows)
    members[f"{di}/RECORD"] = buf.getvalue().encode()
    path = outdir / f"{name}-{version}-{tag}.whl"
    with zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED) as zf:
        for member, data in members.items():
            zf.writestr(member, data)
        if symlink:
            info = zipfile.ZipInfo(symlink)
            info.external_attr = 0o120777 << 16
            zf.writestr(info, "target")
    return path


def _build(wheel: Path, out: Path, store: Path, *extra: str, arch: str = "sm_90") -> int:
    """``slimwheel build WHEEL --arch ARCH -o OUT --store STORE -q EXTRA...``, in process."""
    return main(
        ["build", str(wheel), "--arch", arch, "-o", str(out), "-q", "--store", str(store), *extra]
    )


def test_two_libraries_and_python_files(
    fixture_libs: dict[str, Path], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    files = {
        "demo/__init__.py": b"VALUE = 1\n",
        "demo/data.txt": b"hello\n" * 100,
        "demo/lib/libmany.so": fixture_libs["many_none"].read_bytes(),
        "demo/lib/libbig.so": fixture_libs["big"].read_bytes(),
        "demo/lib/libnocode.so": fixture_libs["sm80_only"].read_bytes()[:0]
        + b"\x7fELF"
        + b"\0" * 60,
    }
    del files["demo/lib/libnocode.so"]
    wheel = make_wheel(tmp_path, "demo", "1.0", files)
    out = tmp_path / "out"
    store = tmp_path / "store"
    assert _build(wheel, out, store, "--jobs", "2") == 0
    (built,) = out.iterdir()
    assert built.name == "demo-1.0+sm90-py3-none-linux_x86_64.whl"
    with zipfile.ZipFile(wheel) as a, zipfile.ZipFile(built) as b:
        for name in ("demo/__init__.py", "demo/data.txt"):
            ia, ib = a.getinfo(name), b.getinfo(name)
            assert a.read(name) == b.read(name)
            assert (ia.CRC, ia.compress_size, ia.compress_type) == (
                ib.CRC,
                ib.compress_size,
                ib.compress_type,
            )
        assert len(b.read("demo/lib/libbig.so")) < len(a.read("demo/lib/libbig.so")) // 2
        meta = b.read("demo-1.0+sm90.dist-info/METADATA").decode()
        assert "Version: 1.0+sm90" in meta
        prov = json.loads(b.read("demo-1.0+sm90.dist-info/slimwheel.json"))
        schema = Path(__file__).resolve().parents[2] / "slimwheel/schemas/provenance.schema.json"
        jsonschema.validate(prov, json.loads(schema.read_text()))
        assert {lib["path"] for lib in prov["libraries"]} == {
            "demo/lib/libmany.so",
            "demo/lib/libbig.so",
        }
        assert prov["targets"] == ["sm_90"]
        names = b.namelist()
        assert names[-1] == "demo-1.0+sm90.dist-info/RECORD"
        assert names == sorted(names[:3]) + names[3:]
    assert len(Store(store).entries()) == 2


def test_version_labels(fixture_libs: dict[str, Path], tmp_path: Path) -> None:
    wheel = make_wheel(
        tmp_path,
        "gpu_pkg",
        "2.5.1+cu124",
        {"gpu_pkg/lib.so": fixture_libs["many_size"].read_bytes()},
    )
    for extra, expected in (
        ([], "gpu_pkg-2.5.1+cu124.sm80.sm90-"),
        (["--local-label", "h100"], "gpu_pkg-2.5.1+cu124.h100-"),
        (["--no-local-label"], "gpu_pkg-2.5.1+cu124-"),
        (["--drop-lto"], "gpu_pkg-2.5.1+cu124.sm80.sm90.nolto-"),
    ):
        out = tmp_path / f"out{len(extra)}{expected[-6:]}"
        assert _build(wheel, out, tmp_path / "s", *extra, arch="sm_80,sm_90") == 0
        (built,) = out.iterdir()
        assert built.name.startswith(expected), built.name
        with zipfile.ZipFile(built) as zf:
            prov = json.loads(
                next(zf.read(n) for n in zf.namelist() if n.endswith(".dist-info/slimwheel.json"))
            )
        assert prov["lto_policy"] == ("drop" if "--drop-lto" in extra else "keep")


def test_store_entry_that_lies_is_rebuilt(fixture_libs: dict[str, Path], tmp_path: Path) -> None:
    wheel = make_wheel(tmp_path, "demo", "1.0", {"demo/lib.so": fixture_libs["big"].read_bytes()})
    store = tmp_path / "store"
    args = ["build", str(wheel), "--arch", "sm_90", "--store", str(store), "-q", "-j", "1"]
    assert main([*args, "-o", str(tmp_path / "a")]) == 0
    (entry,) = Store(store).entries()
    data = bytearray(entry.path.read_bytes())
    data[-1] ^= 0xFF
    entry.path.write_bytes(bytes(data))
    assert main([*args, "-o", str(tmp_path / "b")]) == 0
    a = next((tmp_path / "a").iterdir()).read_bytes()
    b = next((tmp_path / "b").iterdir()).read_bytes()
    assert a == b
    (entry2,) = Store(store).entries()
    assert entry2.path.read_bytes() != bytes(data)
    assert main(["cache", "--store", str(store), "info"]) == 0
    assert main(["cache", "--store", str(store), "prune", "--max-size", "0"]) == 0
    assert Store(store).entries() == []


def test_concurrent_builds_share_one_entry(fixture_libs: dict[str, Path], tmp_path: Path) -> None:
    wheel = make_wheel(tmp_path, "demo", "1.0", {"demo/lib.so": fixture_libs["big"].read_bytes()})
    store = tmp_path / "store"
    procs = [
        subprocess.Popen(
            [
                sys.executable,
                "-m",
                "slimwheel",
                "build",
                str(wheel),
                "--arch",
                "sm_90",
                "-q",
                "--store",
                str(store),
                "-o",
                str(tmp_path / f"out{i}"),
            ],
            stderr=subprocess.PIPE,
        )
        for i in range(2)
    ]
    for p in procs:
        _, err = p.communicate(timeout=300)
        assert p.returncode == 0, err
    outs = [next((tmp_path / f"out{i}").iterdir()).read_bytes() for i in range(2)]
    assert outs[0] == outs[1]
    assert len(Store(store).entries()) == 1
    assert list((store / "tmp").iterdir()) == []


@pytest.mark.parametrize(
    ("kind", "message"),
    [
        ("dotdot", "escapes the install directory"),
        ("absolute", "absolute"),
        ("symlink", "symbolic link"),
        ("lying_record", "RECORD hash or size does not match"),
        ("truncated", "not a readable zip"),
        ("corrupt_fatbin", "fatbin"),
    ],
)
def test_hostile_wheels(
    fixture_libs: dict[str, Path],
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    kind: str,
    message: str,
) -> None:
    lib = fixture_libs["many_none"].read_bytes()
    files = {"demo/lib.so": lib, "demo/__init__.py": b""}
    if kind == "dotdot":
        wheel = make_wheel(tmp_path, "demo", "1.0", {**files, "demo/../../evil.py": b""})
    elif kind == "absolute":
        wheel = make_wheel(tmp_path, "demo", "1.0", {**files, "/etc/evil": b""})
    elif kind == "symlink":
        wheel = make_wheel(tmp_path, "demo", "1.0", files, symlink="demo/link")
    elif kind == "lying_record":
        wheel = make_wheel(tmp_path, "demo", "1.0", files, lie="demo/__init__.py")
    elif kind == "truncated":
        wheel = make_wheel(tmp_path, "demo", "1.0", files)
        wheel.write_bytes(wheel.read_bytes()[:5000])
    else:
        data = bytearray(lib)
        start = data.find(b"\x50\xed\x55\xba")
        data[start + 16 : start + 24] = b"\xff" * 8
        wheel = make_wheel(tmp_path, "demo", "1.0", {**files, "demo/lib.so": bytes(data)})
    out = tmp_path / "out"
    rc = _build(wheel, out, tmp_path / "store", "-j", "1")
    err = capsys.readouterr().err
    assert rc == 1
    assert err.count("\n") == 1 and "Traceback" not in err
    assert wheel.name in err and message in err
    if kind == "corrupt_fatbin":
        assert "demo/lib.so" in err
    assert not out.exists() or list(out.iterdir()) == []


@pytest.mark.slow
def test_curand_wheel(tmp_path: Path) -> None:
    wheel = local_wheel("nvidia-curand==10.4.0.35")
    outs = []
    for i, store in enumerate(("s1", "s2", "s1")):
        out = tmp_path / f"out{i}"
        assert _build(wheel, out, tmp_path / store) == 0
        outs.append(next(out.iterdir()))
    assert outs[0].read_bytes() == outs[1].read_bytes() == outs[2].read_bytes()
    assert outs[0].name == "nvidia_curand-10.4.0.35+sm90-py3-none-manylinux_2_27_x86_64.whl"
    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True)
    py = venv / "bin" / "python"
    subprocess.run(
        [str(py), "-m", "pip", "install", "-q", "--no-index", "--no-deps", str(outs[0])], check=True
    )
    check = subprocess.run([str(py), "-m", "pip", "check"], capture_output=True, text=True)
    assert check.returncode == 0, check.stdout
    site = venv_purelib(py)
    record = site / "nvidia_curand-10.4.0.35+sm90.dist-info" / "RECORD"
    lib = None
    for path, h, _size in csv.reader(record.read_text().splitlines()):
        if h:
            assert record_hash(bytes.fromhex(file_sha256(site / path)), digest=True) == h, path
        if path.endswith("libcurand.so.10"):
            lib = site / path
    assert lib is not None
    with open_elf(lib) as elf:
        elements = [e for _, e in scan(elf).elements]
    assert elements and all(can_run(e, SM90) for e in elements)
    assert os.path.getsize(lib) < 60_000_000


def test_same_name_different_content_is_refused(
    fixture_libs: dict[str, Path], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    w1 = make_wheel(
        tmp_path / "a", "demo", "1.0", {"demo/lib.so": fixture_libs["big"].read_bytes()}
    )
    w2 = make_wheel(tmp_path / "b", "demo", "1.0", {"demo/x.py": b"other"})
    out = tmp_path / "out"
    args = ["build", "--arch", "sm_90", "-o", str(out), "-q", "--store", str(tmp_path / "s")]
    assert main([*args, str(w1), str(w2)]) == 1
    assert "two different wheels named" in capsys.readouterr().err
    assert not out.exists() or list(out.iterdir()) == []
    assert main([*args, str(w1), str(w1)]) == 0
    assert len(list(out.iterdir())) == 1


def test_source_date_epoch(
    fixture_libs: dict[str, Path], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    wheel = make_wheel(tmp_path, "demo", "1.0", {"demo/lib.so": fixture_libs["big"].read_bytes()})
    monkeypatch.setenv("SOURCE_DATE_EPOCH", "1700000000")
    out = tmp_path / "out"
    assert _build(wheel, out, tmp_path / "s") == 0
    with zipfile.ZipFile(next(out.iterdir())) as zf:
        assert {i.date_time for i in zf.infolist()} == {(2023, 11, 14, 22, 13, 20)}


@pytest.mark.slow
@pytest.mark.parametrize("delay", [0.8, 1.6, 2.4])
def test_interrupt_leaves_nothing_half_written(tmp_path: Path, delay: float) -> None:
    import signal
    import time

    wheel = local_wheel("nvidia-curand==10.4.0.35")
    out, store = tmp_path / "out", tmp_path / "store"
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "slimwheel",
            "build",
            str(wheel),
            "--arch",
            "sm_90",
            "-q",
            "-j",
            "2",
            "-o",
            str(out),
            "--store",
            str(store),
        ],
        start_new_session=True,
        stderr=subprocess.PIPE,
    )
    time.sleep(delay)
    os.killpg(proc.pid, signal.SIGINT)  # what Ctrl-C does: the whole process group
    proc.communicate(timeout=120)
    assert proc.returncode in (0, 130, -signal.SIGINT)
    leftovers = [p.name for p in out.iterdir()] if out.exists() else []
    assert all(n.endswith(".whl") for n in leftovers), leftovers
    for w in leftovers:  # a wheel that is there is whole
        with zipfile.ZipFile(out / w) as zf:
            assert zf.testzip() is None
    assert not (store / "tmp").exists() or list((store / "tmp").iterdir()) == []
    for entry in Store(store).entries():
        assert Store(store).lookup(entry.key) is not None  # hash still matches
