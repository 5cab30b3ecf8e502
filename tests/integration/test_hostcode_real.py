"""--cpu on a real library, without a GPU: numpy's OpenBLAS under a numpy matmul.

A fresh virtual environment gets the numpy wheel from PyPI. The matmul is
recorded (host code only: no GPU here), the environment is slimmed in place
with --cpu, the matmul runs identically, ``np.linalg.svd`` (never recorded)
gets the guard's message, and restore brings every file back byte for byte.
"""

from __future__ import annotations

import hashlib
import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from tests.helpers import local_wheel, venv_purelib

NUMPY = "numpy==2.4.6"

WORKLOAD = """
import hashlib, sys
import numpy as np
rng = np.random.default_rng(0)
a = rng.random((300, 300))
print(hashlib.sha256((a @ a).tobytes()).hexdigest())
if sys.argv[1:] == ["svd"]:
    print(np.linalg.svd(a)[1][:3])
"""


def cli(*args: str, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "slimwheel", *args], capture_output=True, text=True, env=env,
        timeout=600,
    )  # fmt: skip


def tree_hashes(root: Path) -> dict[str, str]:
    return {
        str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(root.rglob("*"))
        if p.is_file() and "__pycache__" not in p.parts
    }


@pytest.fixture(scope="module")
def numpy_env(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    base = tmp_path_factory.mktemp("numpy-env")
    venv = base / "venv"
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True)
    python = venv / "bin" / "python"
    wheel = local_wheel(NUMPY)
    subprocess.run(
        [str(python), "-m", "pip", "install", "-q", "--no-deps", "--no-index", str(wheel)],
        check=True,
    )
    (base / "mm.py").write_text(WORKLOAD)
    return python, base


def test_openblas_matmul_profile(numpy_env: tuple[Path, Path]) -> None:
    python, base = numpy_env
    site = venv_purelib(python)
    env = dict(os.environ, SLIMWHEEL_STORE=str(base / "store"))
    script = str(base / "mm.py")
    expected = subprocess.run([str(python), script], capture_output=True, text=True, check=True)
    profile = base / "mm.json"
    got = cli("profile", "-o", str(profile), "--", str(python), script, env=env)
    assert got.returncode == 0, got.stderr
    doc = json.loads(profile.read_text())
    (blas,) = [lib for lib in doc["libraries"] if "openblas" in lib["name"]]
    assert blas["host"]["pages"] > 0

    # What --cpu removes from OpenBLAS: at least 80% of its host code.
    blas_path = site / blas["site_relative"]
    got = cli(
        "slim", "--arch", "sm_90", "--profile", str(profile), "--cpu", str(blas_path),
        "-o", str(base / "blas-slim.so"), "--json", env=env,
    )  # fmt: skip
    assert got.returncode == 0, got.stderr
    host = json.loads(got.stdout)["host_code"]
    share = host["bytes"]["removed"] / host["bytes"]["before"]
    print(f"OpenBLAS host code: {host['bytes']['before']} -> removed {host['bytes']['removed']} "
          f"({share:.1%}), {host['functions']['removed']} of {host['functions']['total']} "
          "functions")  # fmt: skip
    assert share >= 0.80

    before = tree_hashes(site)
    got = cli(
        "slim-env", "--python", str(python), "--arch", "sm_90", "--profile", str(profile),
        "--cpu", "--guard", env=env,
    )  # fmt: skip
    assert got.returncode == 0, got.stderr
    assert tree_hashes(site)[blas["site_relative"]] != before[blas["site_relative"]]
    status = cli("status", "--python", str(python), env=env)
    assert status.returncode == 0 and "host code -" in status.stdout, status.stdout
    assert "guard installed" in status.stdout

    # The recorded workload: identical.
    after = subprocess.run([str(python), script], capture_output=True, text=True)
    assert (after.returncode, after.stdout) == (0, expected.stdout)
    # One it never saw: a fault, named by the guard (the environment's, then doctor's).
    bare = subprocess.run([str(python), script, "svd"], capture_output=True, text=True)
    assert bare.returncode == -signal.SIGSEGV
    assert "was removed by slimwheel --cpu" in bare.stderr, bare.stderr
    guarded = cli("doctor", "--", str(python), script, "svd", env=env)
    assert guarded.returncode == 128 + signal.SIGSEGV
    lines = [ln for ln in guarded.stderr.splitlines() if ln.startswith("slimwheel: ")]
    # numpy's own svd wrapper goes first (C++: its name demangled), or OpenBLAS's LAPACK.
    assert len(lines) == 1, guarded.stderr
    assert "svd" in lines[0] and "was removed by slimwheel --cpu" in lines[0], lines[0]
    assert "_umath_linalg" in lines[0] or "openblas" in lines[0]
    assert "_Z" not in lines[0]

    got = cli("restore", "--python", str(python), env=env)
    assert got.returncode == 0, got.stderr
    assert tree_hashes(site) == before
    svd = subprocess.run([str(python), script, "svd"], capture_output=True, text=True)
    assert svd.returncode == 0


TORCH_CPU = "torch==2.13.0"  # the CPU build (pip takes it from this machine's disk)
MOBILENET = Path(__file__).resolve().parents[2] / "profiles" / "workloads" / "mobilenet_v2_infer.py"


@pytest.mark.slow
def test_libtorch_cpu_mobilenet_inference(tmp_path: Path) -> None:
    """CPU-only torch: MobileNetV2 inference recorded, the environment slimmed with
    --cpu, the inference identical, an unrecorded op named by the guard, restore exact."""
    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True)
    python = venv / "bin" / "python"
    subprocess.run(
        [str(python), "-m", "pip", "install", "-q", TORCH_CPU, "numpy"], check=True, timeout=900
    )
    site = venv_purelib(python)
    env = dict(os.environ, SLIMWHEEL_STORE=str(tmp_path / "store"))
    expected = subprocess.run([str(python), str(MOBILENET)], capture_output=True, text=True)
    assert expected.returncode == 0, expected.stderr
    profile = tmp_path / "mobilenet.json"
    got = cli("profile", "-o", str(profile), "--", str(python), str(MOBILENET), env=env)
    assert got.returncode == 0, got.stderr
    before = tree_hashes(site)
    before_sizes = {str(p.relative_to(site)): p.stat().st_size for p in site.rglob("*.so*")}
    got = cli(
        "slim-env", "--python", str(python), "--arch", "sm_90", "--profile", str(profile),
        "--cpu", env=env,
    )  # fmt: skip
    assert got.returncode == 0, got.stderr
    status = cli("status", "--python", str(python), env=env).stdout
    (line,) = [ln for ln in status.splitlines() if ln.startswith("torch/lib/libtorch_cpu.so")]
    print(line)
    assert "host code -" in line
    lib = site / "torch/lib/libtorch_cpu.so"
    size_before = int(before_sizes[str(lib.relative_to(site))])
    after = subprocess.run([str(python), str(MOBILENET)], capture_output=True, text=True)
    assert after.returncode == 0, after.stderr
    assert after.stdout.split()[0] == expected.stdout.split()[0]  # the logits' digest
    guarded = cli(
        "doctor", "--", str(python), "-c", "import torch; print(torch.randn(3).sum())", env=env
    )
    assert guarded.returncode == 128 + signal.SIGSEGV, guarded.stderr[-2000:]
    lines = [ln for ln in guarded.stderr.splitlines() if ln.startswith("slimwheel: ")]
    assert len(lines) == 1 and "was removed by slimwheel --cpu" in lines[0], guarded.stderr
    assert lib.stat().st_size < 0.6 * size_before  # most of its host code is gone
    got = cli("restore", "--python", str(python), env=env)
    assert got.returncode == 0, got.stderr
    assert tree_hashes(site) == before
