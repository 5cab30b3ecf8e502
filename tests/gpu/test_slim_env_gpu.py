"""On a GPU: ``slimwheel slim-env --arch native`` on a copy of the installed
torch + nvidia-* environment, the battery, then ``slimwheel restore``.

The copy is a fresh venv whose site-packages holds copies of torch/, nvidia/
and their .dist-info (a .pth file puts the installed site-packages after it
for torch's pure-Python dependencies). slim-env slims the copy in place for
the GPU it finds; the battery must give the original installation's results
under CUDA_MODULE_LOADING=LAZY and EAGER, with the slimmed files mapped;
every RECORD line must match its file; restore must bring back every file
of the copy byte for byte. The installed site-packages is never written.
"""

from __future__ import annotations

import csv
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from slimwheel.store import file_sha256
from slimwheel.wheel import record_hash
from tests.gpu.test_torch_stack_gpu import compare, installed_site, run_battery
from tests.helpers import venv_purelib

pytestmark = [pytest.mark.gpu, pytest.mark.slow]


def _digests(root: Path) -> dict[str, str]:
    out = {}
    for p in sorted(root.rglob("*")):
        if p.is_symlink():
            out[str(p.relative_to(root))] = "-> " + os.readlink(p)
        elif p.is_file():
            out[str(p.relative_to(root))] = file_sha256(p)
    return out


def _records_true(site: Path) -> int:
    checked = 0
    for record in site.glob("*.dist-info/RECORD"):
        for path, h, size in csv.reader(record.read_text().splitlines()):
            if not h or not (site / path).is_file():
                continue
            assert h == record_hash(bytes.fromhex(file_sha256(site / path)), digest=True), path
            assert int(size) == (site / path).stat().st_size, path
            checked += 1
    return checked


def _cli(*args: str) -> str:
    proc = subprocess.run(
        [sys.executable, "-m", "slimwheel", *args], capture_output=True, text=True, timeout=900
    )
    assert proc.returncode == 0, proc.stderr[-4000:]
    return proc.stdout + proc.stderr


def venv_copy(where: Path) -> tuple[Path, Path]:
    """(python, site-packages) of a venv under ``where`` holding copies of the installed
    torch/, nvidia/ and their .dist-info; a .pth puts the installed site after it."""
    site = installed_site()
    venv = where / "venv"
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(venv)], check=True)
    py = venv / "bin" / "python"
    vsite = venv_purelib(py)
    for entry in sorted(site.iterdir()):
        n = entry.name
        if entry.is_dir() and (
            n in ("torch", "nvidia")
            or (n.startswith(("torch-", "nvidia_")) and n.endswith(".dist-info"))
        ):
            shutil.copytree(entry, vsite / n, symlinks=True)
    (vsite / "zz_installed_site.pth").write_text(f"{site}\n")
    return py, vsite


def test_slim_env_native_then_restore(tmp_path: Path) -> None:
    site = installed_site()
    py, vsite = venv_copy(tmp_path)
    before = _digests(vsite)
    installed_before = {
        p: os.stat(p).st_mtime_ns for p in (site / "torch/lib").glob("*.so*") if p.is_file()
    }

    env = ["--python", str(py), "--store", str(tmp_path / "store")]
    print(_cli("slim-env", "--arch", "native", *env).strip()[-1500:])
    status = _cli("status", *env)
    print(status.strip()[-1500:])
    assert "libtorch_cuda.so" in status
    assert _records_true(vsite) > 1000
    slim_size = (vsite / "torch/lib/libtorch_cuda.so").stat().st_size
    assert slim_size < (site / "torch/lib/libtorch_cuda.so").stat().st_size * 0.8

    out = Path(os.environ.get("SLIMWHEEL_GPU_OUT", tmp_path)) / "slim_env"
    out.mkdir(parents=True, exist_ok=True)
    for mode in ("LAZY", "EAGER"):
        orig = run_battery(mode, None, out / f"orig_{mode}.json")
        again = run_battery(mode, None, out / f"orig2_{mode}.json")
        slim = run_battery(mode, None, out / f"slim_env_{mode}.json", python=str(py))
        libs = slim["libraries"]
        assert isinstance(libs, list)
        assert any(p.startswith(str(vsite)) and "libtorch_cuda" in p for p in libs)
        assert any(p.startswith(str(vsite)) and "libcublasLt" in p for p in libs)
        assert not any(p.startswith(str(site) + "/") for p in libs), "mapped the installed original"
        compare(orig, again, slim, mode)

    print(_cli("restore", *env).strip()[-500:])
    after = _digests(vsite)
    assert after == before, sorted(k for k in {*before, *after} if before.get(k) != after.get(k))[
        :20
    ]
    assert {
        p: os.stat(p).st_mtime_ns for p in (site / "torch/lib").glob("*.so*") if p.is_file()
    } == installed_before
    (out / "summary.json").write_text(
        json.dumps({"files": len(before), "libtorch_cuda_slim_bytes": slim_size}, indent=1)
    )
