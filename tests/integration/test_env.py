"""``slim-env``, ``status`` and ``restore`` on real virtual environments."""

from __future__ import annotations

import csv
import fcntl
import hashlib
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from slimwheel.cli import main
from slimwheel.elf import open_elf
from slimwheel.fatbin import scan
from slimwheel.store import file_sha256
from slimwheel.wheel import record_hash
from tests.helpers import local_wheel, venv_purelib

pytestmark = pytest.mark.slow
LIB = "nvidia/cu13/lib/libcurand.so.10"


def _empty_venv(tmp_path: Path) -> Path:
    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(venv)], check=True)
    return venv / "bin" / "python"


def _venv(tmp_path: Path) -> tuple[Path, Path]:
    py = _empty_venv(tmp_path)
    subprocess.run(
        [
            sys.executable,
            "-m",
            "pip",
            "--python",
            str(py),
            "install",
            "-q",
            "--no-index",
            "--no-deps",
            str(local_wheel("nvidia-curand==10.4.0.35")),
        ],
        check=True,
    )
    site = venv_purelib(py)
    return py, site


def _snapshot(site: Path) -> dict[str, str]:
    return {
        str(p.relative_to(site)): file_sha256(p) for p in sorted(site.rglob("*")) if p.is_file()
    }


def _record_true(site: Path) -> None:
    for record in site.glob("*.dist-info/RECORD"):
        for path, h, size in csv.reader(record.read_text().splitlines()):
            if not h:
                continue
            f = site / path
            assert h == record_hash(bytes.fromhex(file_sha256(f)), digest=True), path
            assert int(size) == f.stat().st_size, path


def _cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "slimwheel", *args], capture_output=True, text=True
    )


def test_slim_status_restore(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    py, site = _venv(tmp_path)
    store = str(tmp_path / "store")
    before = _snapshot(site)
    assert (
        main(["slim-env", "--python", str(py), "--arch", "sm_90", "--store", store, "--dry-run"])
        == 0
    )
    assert "would save" in capsys.readouterr().out and _snapshot(site) == before
    assert main(["slim-env", "--python", str(py), "--arch", "sm_90", "--store", store]) == 0
    assert (site / LIB).stat().st_size < 60_000_000
    _record_true(site)
    check = subprocess.run(
        [sys.executable, "-m", "pip", "--python", str(py), "check"], capture_output=True, text=True
    )
    assert check.returncode == 0, check.stdout
    with open_elf(site / LIB) as elf:
        assert {e.arch for _, e in scan(elf).elements} == {90}
    capsys.readouterr()
    assert main(["status", "--python", str(py), "--store", store]) == 0
    assert "slimmed for sm_90" in capsys.readouterr().out
    assert main(["slim-env", "--python", str(py), "--arch", "sm_90", "--store", store]) == 0
    assert "already slimmed" in capsys.readouterr().out
    assert main(["restore", "--python", str(py), "--store", store]) == 0
    assert _snapshot(site) == before, "restore gives back every byte"


def test_hard_linked_cache_stays_untouched(tmp_path: Path) -> None:
    py, site = _venv(tmp_path)
    cache = tmp_path / "cache" / "libcurand.so.10"
    cache.parent.mkdir()
    shutil.copy(site / LIB, cache)
    os.unlink(site / LIB)
    os.link(cache, site / LIB)  # how uv and conda install from their caches
    digest = file_sha256(cache)
    r = _cli("slim-env", "--python", str(py), "--arch", "sm_90", "--store", str(tmp_path / "s"))
    assert r.returncode == 0, r.stderr
    assert file_sha256(cache) == digest
    assert (site / LIB).stat().st_ino != cache.stat().st_ino


def test_uv_venv_cache_untouched(tmp_path: Path) -> None:
    uv = shutil.which("uv") or str(Path(sys.executable).parent / "uv")
    uv_cache = tmp_path / "uv-cache"
    venv = tmp_path / "uvenv"
    env = dict(os.environ, UV_CACHE_DIR=str(uv_cache), UV_LINK_MODE="hardlink")
    subprocess.run([uv, "venv", "-q", "--python", sys.executable, str(venv)], check=True, env=env)
    wheel = local_wheel("nvidia-curand==10.4.0.35")
    subprocess.run(
        [
            uv,
            "pip",
            "install",
            "-q",
            "--python",
            str(venv / "bin" / "python"),
            "--no-index",
            "--find-links",
            str(wheel.parent),
            "nvidia-curand==10.4.0.35",
        ],
        check=True,
        env=env,
    )
    cached = {p: file_sha256(p) for p in uv_cache.rglob("*") if p.is_file() and ".so" in p.name}
    assert cached, "uv keeps the library in its cache"
    site = next((venv / "lib").glob("python*/site-packages"))
    assert (site / LIB).stat().st_nlink > 1, "uv hard-linked the library"
    r = _cli(
        "slim-env",
        "--python",
        str(venv / "bin" / "python"),
        "--arch",
        "sm_90",
        "--store",
        str(tmp_path / "s"),
    )
    assert r.returncode == 0, r.stderr
    assert {p: file_sha256(p) for p in cached} == cached
    _record_true(site)


def test_concurrent_runs_are_refused(tmp_path: Path) -> None:
    py, site = _venv(tmp_path)
    store = tmp_path / "store"
    fd = os.open(site, os.O_RDONLY | os.O_DIRECTORY)  # the environment's own lock
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        r = _cli("slim-env", "--python", str(py), "--arch", "sm_90", "--store", str(store))
    finally:
        os.close(fd)
    assert r.returncode == 1 and "another slimwheel process" in r.stderr
    assert r.stderr.count("\n") == 1


@pytest.mark.parametrize("point", ["pending", "replaced", "recorded", "restored"])
def test_killed_runs_leave_a_consistent_environment(tmp_path: Path, point: str) -> None:
    py, site = _venv(tmp_path)
    store = str(tmp_path / "store")
    before = _snapshot(site)
    args = ["--python", str(py), "--store", store]
    kill = dict(os.environ, SLIMWHEEL_TEST_KILL_AT=point)
    if point == "restored":
        assert _cli("slim-env", "--arch", "sm_90", *args).returncode == 0
        r = subprocess.run([sys.executable, "-m", "slimwheel", "restore", *args], env=kill)
    else:
        r = subprocess.run(
            [sys.executable, "-m", "slimwheel", "slim-env", "--arch", "sm_90", *args], env=kill
        )
    assert r.returncode == -9
    assert _cli("status", *args).returncode == 0  # reconciles
    _record_true(site)
    assert _cli("restore", *args).returncode == 0
    assert _snapshot(site) == before


def test_no_backup_cannot_restore(tmp_path: Path) -> None:
    py, _site = _venv(tmp_path)
    args = ["--python", str(py), "--store", str(tmp_path / "store")]
    assert _cli("slim-env", "--arch", "sm_90", "--no-backup", *args).returncode == 0
    r = _cli("restore", *args)
    assert r.returncode == 1 and "no original was kept" in r.stderr


def _conda_prefix(tmp_path: Path, lib: Path) -> Path:
    """A prefix laid out as conda writes it: the files, and conda-meta with paths_data."""
    prefix = tmp_path / "prefix"
    (prefix / "lib").mkdir(parents=True)
    (prefix / "conda-meta").mkdir()
    (prefix / "lib" / "libfixture.so").write_bytes(lib.read_bytes())
    (prefix / "lib" / "README.fixture").write_text("not a library\n")
    paths = []
    for rel in ("lib/README.fixture", "lib/libfixture.so"):
        data = (prefix / rel).read_bytes()
        digest = hashlib.sha256(data).hexdigest()
        paths.append(
            {
                "_path": rel,
                "path_type": "hardlink",
                "sha256": digest,
                "sha256_in_prefix": digest,
                "size_in_bytes": len(data),
            }
        )
    meta = {
        "name": "fixture-cuda",
        "version": "1.0",
        "build": "cuda130_0",
        "build_number": 0,
        "channel": "https://conda.anaconda.org/local",
        "subdir": "linux-64",
        "files": [p["_path"] for p in paths],
        "paths_data": {"paths": paths, "paths_version": 1},
        "depends": [],
        "requested_spec": "fixture-cuda",
    }
    # conda's own layout: two-space indent, keys sorted
    (prefix / "conda-meta" / "fixture-cuda-1.0-cuda130_0.json").write_text(
        json.dumps(meta, indent=2, sort_keys=True) + "\n"
    )
    (prefix / "conda-meta" / "history").write_text("==> 2026-11-30 <==\n+local::fixture-cuda-1.0\n")
    return prefix


def test_conda_prefix(fixture_libs: dict[str, Path], tmp_path: Path) -> None:
    prefix = _conda_prefix(tmp_path, fixture_libs["big"])
    before = _snapshot(prefix)
    args = ["--prefix", str(prefix), "--store", str(tmp_path / "store")]
    r = _cli("slim-env", "--arch", "sm_90", *args)
    assert r.returncode == 0, r.stderr
    lib = prefix / "lib" / "libfixture.so"
    assert lib.stat().st_size < fixture_libs["big"].stat().st_size // 2
    meta = json.loads((prefix / "conda-meta" / "fixture-cuda-1.0-cuda130_0.json").read_text())
    entry = next(p for p in meta["paths_data"]["paths"] if p["_path"] == "lib/libfixture.so")
    digest = file_sha256(lib)
    assert entry["sha256"] == entry["sha256_in_prefix"] == digest
    assert entry["size_in_bytes"] == lib.stat().st_size
    assert "slimmed for sm_90" in _cli("status", *args).stdout
    assert _cli("restore", *args).returncode == 0
    assert _snapshot(prefix) == before, "files and conda-meta back byte for byte"
    assert _cli("slim-env", "--arch", "sm_90", "--prefix", str(tmp_path)).returncode == 2


def test_install_then_slim_what_pip_installed(tmp_path: Path) -> None:
    py = _empty_venv(tmp_path)
    venv = py.parent.parent
    wheel = local_wheel("nvidia-curand==10.4.0.35")
    r = _cli(
        "install",
        "--python",
        str(py),
        "--arch",
        "sm_90",
        "--store",
        str(tmp_path / "store"),
        "--",
        "--no-index",
        "--no-deps",
        "-q",
        str(wheel),
    )
    assert r.returncode == 0, r.stderr
    assert "slimmed nvidia-curand" in r.stdout
    site = next((venv / "lib").glob("python*/site-packages"))
    assert (site / LIB).stat().st_size < 60_000_000
    _record_true(site)
    # pip reinstalling the slimmed distribution: the state forgets it, pip owns it again
    subprocess.run(
        [
            sys.executable,
            "-m",
            "pip",
            "--python",
            str(py),
            "install",
            "-q",
            "--no-index",
            "--no-deps",
            "--force-reinstall",
            str(wheel),
        ],
        check=True,
    )
    status = _cli("status", "--python", str(py), "--store", str(tmp_path / "store"))
    assert status.returncode == 0 and "slimmed for" not in status.stdout
    _record_true(site)


def test_torch_environment(tmp_path: Path) -> None:
    """torch 2.14.1 with its nvidia-* dependencies, slimmed in place and restored."""
    py = _empty_venv(tmp_path)
    venv = py.parent.parent
    subprocess.run(
        [sys.executable, "-m", "pip", "--python", str(py), "install", "-q", "torch==2.14.1"],
        check=True,
    )
    site = next((venv / "lib").glob("python*/site-packages"))
    before = _snapshot(site)
    args = ["--python", str(py), "--store", str(tmp_path / "store")]
    r = _cli("slim-env", "--arch", "sm_90", *args)
    assert r.returncode == 0, r.stderr
    assert (site / "torch/lib/libtorch_cuda.so").stat().st_size < 300_000_000
    _record_true(site)
    check = subprocess.run(
        [sys.executable, "-m", "pip", "--python", str(py), "check"], capture_output=True, text=True
    )
    assert check.returncode == 0, check.stdout
    imported = subprocess.run(
        [str(py), "-c", "import torch; print(torch.__version__)"], capture_output=True, text=True
    )
    assert imported.returncode == 0 and "2.14.1" in imported.stdout, imported.stderr[-2000:]
    assert _cli("restore", *args).returncode == 0
    assert _snapshot(site) == before


def _add_to_record(site: Path, libs: dict[str, bytes]) -> None:
    """Put ``libs`` (path in site-packages -> bytes) into curand's distribution."""
    record = next(site.glob("nvidia_curand*.dist-info")) / "RECORD"
    lines = record.read_text().splitlines()
    for rel, data in libs.items():
        (site / rel).parent.mkdir(parents=True, exist_ok=True)
        (site / rel).write_bytes(data)
        digest = record_hash(hashlib.sha256(data).digest(), digest=True)
        lines.insert(0, f"{rel},{digest},{len(data)}")
    record.write_text("\n".join(lines) + "\n")


def test_jobs_give_the_same_environment(fixture_libs: dict[str, Path], tmp_path: Path) -> None:
    """--jobs 2 makes the slim forms in two processes: the same files, the same plan."""
    extra = {
        "nvidia/cu13/lib/libbig.so": fixture_libs["big"].read_bytes(),
        "nvidia/cu13/lib/libusage.so": fixture_libs["usage"].read_bytes(),
    }
    got = {}
    for jobs in ("1", "2"):
        py, site = _venv(tmp_path / jobs)
        _add_to_record(site, extra)
        args = ["--python", str(py), "--arch", "sm_90", "--jobs", jobs]
        store = ["--store", str(tmp_path / jobs / "store")]
        dry = _cli("slim-env", *args, *store, "--dry-run")
        assert dry.returncode == 0, dry.stderr
        r = _cli("slim-env", *args, *store)
        assert r.returncode == 0, r.stderr
        assert r.stdout.count(" -> ") == 3, r.stdout
        _record_true(site)
        got[jobs] = (dry.stdout, r.stdout, _snapshot(site))
    assert got["1"] == got["2"]


def test_a_bad_library_stops_jobs_before_anything_changes(
    fixture_libs: dict[str, Path], tmp_path: Path
) -> None:
    py, site = _venv(tmp_path)
    good = fixture_libs["big"].read_bytes()
    _add_to_record(site, {"nvidia/cu13/lib/libbad.so": good[: len(good) // 3]})
    before = _snapshot(site)
    args = ["--python", str(py), "--arch", "sm_90", "--store", str(tmp_path / "s"), "-j", "2"]
    r = _cli("slim-env", *args)
    assert r.returncode != 0
    err = r.stderr.strip().splitlines()
    assert len(err) == 1 and "libbad.so" in err[0], r.stderr
    assert _snapshot(site) == before, "no library replaced"
    assert _cli("slim-env", "--python", str(py), "--arch", "sm_90", "-j", "0").returncode == 2
