"""On a GPU: host code (--cpu) on the torch stack, and the guard for host and device code.

1. The usage fixture slimmed with a profile of kernel kA: launching kB under
   ``slimwheel doctor`` fails as before ("no kernel image") and the guard
   names usage_kB, the library and the profile, under LAZY and EAGER.
2. A copy of the installed torch + nvidia-* environment; the GPU battery is
   recorded (device and host code) under LAZY and under EAGER, the profiles
   merged; ``slim-env --arch native --profile P --cpu`` slims the copy in
   place; the battery gives the original's results under both modes; a CPU
   workload the battery never ran gets the guard's line for removed host
   code; ``restore`` brings every file back byte for byte.
3. The same copy slimmed with the profile but without --cpu: a CUDA op the
   battery never ran fails, and the guard names the removed kernel.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from slimwheel.arch import Target
from slimwheel.policy import LibraryPolicy
from slimwheel.profile import load_profile
from slimwheel.slim import slim_library
from slimwheel.store import file_sha256
from tests.fixtures.builds import BUILDS, build
from tests.gpu.conftest import gpu_capability
from tests.gpu.test_slim_env_gpu import _digests, venv_copy
from tests.gpu.test_slim_fixtures_gpu import NO_KERNEL_IMAGE
from tests.gpu.test_torch_stack_gpu import BATTERY, compare, run_battery
from tests.helpers import venv_purelib

pytestmark = pytest.mark.gpu
REPO = Path(__file__).resolve().parents[2]
RUNNER = Path(__file__).with_name("run_fixture.py")


def _out(tmp_path: Path) -> Path:
    out = Path(os.environ.get("SLIMWHEEL_GPU_OUT", tmp_path)) / "cpu"
    out.mkdir(parents=True, exist_ok=True)
    return out


def _cli(
    *args: str, env: dict[str, str] | None = None, ok: bool = True
) -> subprocess.CompletedProcess[str]:
    proc = subprocess.run(
        [sys.executable, "-m", "slimwheel", *args], capture_output=True, text=True,
        timeout=1200, env=env, cwd=REPO,
    )  # fmt: skip
    if ok:
        assert proc.returncode == 0, proc.stderr[-4000:]
    return proc


def _guard_lines(stderr: str) -> list[str]:
    return [ln for ln in stderr.splitlines() if ln.startswith("slimwheel: /")]


@pytest.fixture(scope="module")
def usage_lib(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The usage fixture alone (SLIMWHEEL_FIXTURE_CACHE as for every fixture)."""
    keep = os.environ.get("SLIMWHEEL_FIXTURE_CACHE")
    where = Path(keep) if keep else tmp_path_factory.mktemp("fixtures")
    where.mkdir(parents=True, exist_ok=True)
    return build(BUILDS["usage"], where)


def test_the_guard_names_a_kernel_a_profile_removed(usage_lib: Path, tmp_path: Path) -> None:
    cap = gpu_capability()
    assert cap is not None
    lib = usage_lib
    prof = tmp_path / "usage.json"
    _cli("profile", "-o", str(prof), "--", sys.executable, str(RUNNER), str(lib), "usage_run_a")
    p = load_profile(prof)
    usage = p.for_library(file_sha256(lib), lib.name)
    assert usage is not None and usage.kernels == ("usage_kA",)
    slim = tmp_path / lib.name
    policy = LibraryPolicy(
        targets=(Target(*cap),), usage=usage, profile_digest=p.digest(), cpu=True
    )
    assert slim_library(lib, slim, policy).report.problems == []
    for mode in ("LAZY", "EAGER"):
        env = dict(os.environ, CUDA_MODULE_LOADING=mode)
        got = _cli("doctor", "--", sys.executable, str(RUNNER), str(slim), "usage_run_b", env=env)
        assert json.loads(got.stdout.strip().splitlines()[-1])["rc"] == NO_KERNEL_IMAGE
        lines = _guard_lines(got.stderr)
        print(mode, lines)
        assert len(lines) == 1, got.stderr[-2000:]
        assert f"{lib.name}: kernel usage_kB was removed by a slimwheel profile" in lines[0]
        assert f"(profile {p.digest()[:12]})" in lines[0]
        # The profiled kernel still runs, and the guard says nothing.
        got = _cli("doctor", "--", sys.executable, str(RUNNER), str(slim), "usage_run_a", env=env)
        assert json.loads(got.stdout.strip().splitlines()[-1])["rc"] == 0
        assert _guard_lines(got.stderr) == []


#: Module loading modes to record and compare under (SLIMWHEEL_GPU_MODES=LAZY for a short run).
MODES = tuple(os.environ.get("SLIMWHEEL_GPU_MODES", "LAZY,EAGER").split(","))


def _record_battery(py: Path, tmp_path: Path, store: Path) -> Path:
    """The battery recorded under each mode (host paths differ), merged."""
    parts = []
    for mode in MODES:
        prof = tmp_path / f"battery_{mode}.json"
        env = dict(os.environ, CUDA_MODULE_LOADING=mode, SLIMWHEEL_STORE=str(store))
        rec = tmp_path / f"rec_{mode}.json"
        _cli("profile", "-o", str(prof), "--", str(py), str(BATTERY), str(rec), env=env)
        parts.append(str(prof))
    merged = tmp_path / "battery.json"
    _cli("profile", "merge", *parts, "-o", str(merged))
    return merged


#: CPU paths the battery (a GPU workload) does not take; each run on its own.
CPU_UNCOVERED = (
    "import torch; x = torch.randn(48, 48, dtype=torch.float64); "
    "print(torch.linalg.eigvals(x).abs().sum().item())",
    "import torch; x = torch.randn(4096); print(torch.fft.rfft(x).abs().sum().item())",
    "import torch; x = torch.randn(64, 64); print(torch.linalg.svd(x)[1].sum().item())",
)
#: CUDA ops the battery does not run (it draws its inputs on the CPU), tried in one
#: process: their kernels' elements hold no kernel the battery ran.
CUDA_UNCOVERED = """
import torch
for name, f in (
    ("rand", lambda: torch.rand(1000, device="cuda")),
    ("randn", lambda: torch.randn(1000, device="cuda")),
    ("bernoulli", lambda: torch.bernoulli(torch.full((1000,), 0.5, device="cuda"))),
):
    try:
        print(name, f().sum().item(), flush=True)
    except RuntimeError as exc:
        print(name, "failed:", str(exc).splitlines()[0], flush=True)
"""


@pytest.fixture(scope="module")
def recorded_copy(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path, Path, Path]:
    """(python, site-packages, battery profile, store) of a copy of the stack.

    SLIMWHEEL_GPU_CACHE names a directory that keeps them between runs (the
    copy is always restored by the tests), so the two tests below can run as
    separate commands.
    """
    cache = os.environ.get("SLIMWHEEL_GPU_CACHE")
    base = Path(cache) if cache else tmp_path_factory.mktemp("stack")
    base.mkdir(parents=True, exist_ok=True)
    store = base / "store"
    given = os.environ.get("SLIMWHEEL_GPU_PROFILE")  # recorded before on this machine's stack
    profile = Path(given) if given else base / "battery.json"
    if (base / "ready").is_file():
        py = base / "venv" / "bin" / "python"
        # A run killed while the copy was slimmed: back to the original first.
        _cli("restore", "--python", str(py), "--store", str(store))
        return py, venv_purelib(py), profile, store
    py, vsite = venv_copy(base)
    if not given:
        _record_battery(py, base, store)
    (base / "ready").write_text("ok\n")
    return py, vsite, profile, store


@pytest.mark.slow
def test_the_battery_records_host_code(recorded_copy: tuple[Path, Path, Path, Path]) -> None:
    """The merged battery profile: host code of the copy's torch libraries, page-exact."""
    _py, vsite, profile, _store = recorded_copy
    doc = load_profile(profile)
    print("host_exact:", doc.host_exact, "processes:", doc.processes)
    seen = {lib.name: lib for lib in doc.libraries if lib.host}
    print(len(seen), "libraries with host code recorded")
    assert doc.host_recorded and doc.host_exact
    assert {"libtorch_cpu.so", "libtorch_cuda.so", "libc10.so"} <= set(seen)
    lib = seen["libtorch_cpu.so"]
    assert lib.sha256 == file_sha256(vsite / "torch/lib/libtorch_cpu.so"), "the copy's bytes"


@pytest.mark.slow
def test_torch_stack_with_host_code_removed(
    recorded_copy: tuple[Path, Path, Path, Path], tmp_path: Path
) -> None:
    py, vsite, profile, store = recorded_copy
    out = _out(tmp_path)
    shutil.copy(profile, out / "battery_profile.json")
    doc = load_profile(profile)
    print("host_exact:", doc.host_exact, "processes:", doc.processes)
    before = _digests(vsite)
    env = ["--python", str(py), "--store", str(store)]
    dry = _cli(
        "slim-env", "--arch", "native", "--profile", str(profile), "--cpu", "--dry-run", *env
    )
    print(dry.stdout[-1500:])
    got = _cli("slim-env", "--arch", "native", "--profile", str(profile), "--cpu", *env)
    print(got.stdout[-2000:], got.stderr[-2000:])
    status = _cli("status", *env).stdout
    (out / "status.txt").write_text(status)
    assert "libtorch_cpu.so" in status and "host code -" in status

    for mode in MODES:
        orig = run_battery(mode, None, out / f"orig_{mode}.json")
        again = run_battery(mode, None, out / f"orig2_{mode}.json")
        slim = run_battery(mode, None, out / f"slim_cpu_{mode}.json", python=str(py))
        libs = slim["libraries"]
        assert isinstance(libs, list)
        assert any(p.startswith(str(vsite)) and "libtorch_cpu" in p for p in libs)
        compare(orig, again, slim, mode)
        print(f"{mode}: {len(orig['results'])} results compared")  # type: ignore[arg-type]

    # CPU paths the battery never took: removed host code, named by the guard.
    crashed = 0
    for code in CPU_UNCOVERED:
        got = _cli("doctor", "--", str(py), "-c", code, ok=False)
        lines = _guard_lines(got.stderr)
        print("uncovered CPU:", got.returncode, lines)
        with (out / "uncovered_cpu.txt").open("a") as f:
            f.write(f"{code}\nrc {got.returncode}\n{got.stderr[-3000:]}\n\n")
        if got.returncode == 0:
            continue  # the battery's host code covered it after all
        assert got.returncode == 128 + 11 and len(lines) == 1, got.stderr[-3000:]
        assert "was removed by slimwheel --cpu" in lines[0]
        assert f"(profile {doc.digest()[:12]})" in lines[0]
        crashed += 1
    assert crashed, "every uncovered CPU workload ran: nothing to show the guard on"

    _cli("restore", *env)
    after = _digests(vsite)
    assert after == before, sorted(k for k in {*before, *after} if before.get(k) != after.get(k))[
        :20
    ]


@pytest.mark.slow
def test_torch_stack_removed_kernel_is_named(
    recorded_copy: tuple[Path, Path, Path, Path], tmp_path: Path
) -> None:
    """Device code only (no --cpu): the battery gives the original's results; a CUDA op
    it never ran fails, and the guard names the kernel the profile removed."""
    py, vsite, profile, store = recorded_copy
    out = _out(tmp_path)
    doc = load_profile(profile)
    before = _digests(vsite)
    env = ["--python", str(py), "--store", str(store)]
    _cli("slim-env", "--arch", "native", "--profile", str(profile), *env)
    for mode in MODES:  # the note the guard reads changes no loaded byte
        orig = run_battery(mode, None, out / f"orig_dev_{mode}.json")
        again = run_battery(mode, None, out / f"orig2_dev_{mode}.json")
        slim = run_battery(mode, None, out / f"slim_dev_{mode}.json", python=str(py))
        compare(orig, again, slim, mode)
    got = _cli("doctor", "--", str(py), "-c", CUDA_UNCOVERED, ok=False)
    lines = _guard_lines(got.stderr)
    print("uncovered CUDA:", got.returncode, got.stdout, lines)
    (out / "uncovered_cuda.txt").write_text(got.stdout + "\n" + got.stderr[-4000:])
    assert got.returncode == 0, got.stderr[-3000:]
    failed = [ln for ln in got.stdout.splitlines() if "failed:" in ln]
    assert failed, "every uncovered CUDA op ran: nothing to show the guard on"
    assert all("no kernel image" in ln for ln in failed), failed
    # One line per library at least; a launch without a name adds none where one was named.
    assert 1 <= len(lines) <= len(failed), got.stderr[-3000:]
    for line in lines:
        assert "removed by a slimwheel profile" in line or "has no code" in line, line
        assert f"(profile {doc.digest()[:12]})" in line
    _cli("restore", *env)
    assert _digests(vsite) == before
