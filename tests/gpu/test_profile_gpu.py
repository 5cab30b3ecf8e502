"""On a GPU: record usage profiles with the CUPTI recorder, slim to them, rerun.

1. Fixture: kernels usage_kA, usage_kB, usage_kC in three translation units;
   the program launches kA and reads a variable of kC's unit. The profile
   names exactly kA and the variable; the slimmed library keeps kA's and kC's
   elements and drops kB's; the program runs identically under LAZY and
   EAGER; launching kB fails with "no kernel image".
2. torch: a CNN training script (with one spawned worker) and a transformer
   inference script, profiled on the installed stack; a copy of the stack
   slimmed with arch + the merged profile reruns both with identical outputs.
   The profiles and a per-library report go to SLIMWHEEL_GPU_OUT.
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
from slimwheel.elf import is_elf
from slimwheel.policy import LibraryPolicy
from slimwheel.profile import load_profile, merge
from slimwheel.slim import slim_library
from slimwheel.store import file_sha256
from tests.gpu.conftest import gpu_capability
from tests.gpu.test_slim_fixtures_gpu import NO_KERNEL_IMAGE, run
from tests.gpu.test_torch_stack_gpu import installed_site

pytestmark = pytest.mark.gpu
REPO = Path(__file__).resolve().parents[2]
RUNNER = Path(__file__).with_name("run_fixture.py")
WORKLOADS = REPO / "profiles" / "workloads"


def _out(tmp_path: Path) -> Path:
    out = Path(os.environ.get("SLIMWHEEL_GPU_OUT", tmp_path))
    out.mkdir(parents=True, exist_ok=True)
    return out


def _profile(output: Path, command: list[str], env: dict[str, str] | None = None) -> None:
    proc = subprocess.run(
        [sys.executable, "-m", "slimwheel", "profile", "-o", str(output), "--", *command],
        capture_output=True,
        text=True,
        env=env,
        cwd=REPO,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]


def test_usage_fixture(fixture_libs: dict[str, Path], tmp_path: Path) -> None:
    cap = gpu_capability()
    assert cap is not None
    lib = fixture_libs["usage"]
    prof = tmp_path / "usage.json"
    _profile(prof, [sys.executable, str(RUNNER), str(lib), "usage_run_a"])
    p = load_profile(prof)
    usage = p.for_library(file_sha256(lib), lib.name)
    assert usage is not None, p.to_json()
    assert usage.kernels == ("usage_kA",)
    assert usage.variables == ("usage_c_value",)
    assert usage.images, "the loaded cubin's hash matches an element"
    shutil.copy(prof, _out(tmp_path) / "fixture_usage_profile.json")
    slim = tmp_path / lib.name
    r = slim_library(lib, slim, LibraryPolicy(targets=(Target(*cap),), usage=usage))
    assert r.report.problems == [] and r.unused_bytes > 0
    for mode in ("LAZY", "EAGER"):
        before, after = run(lib, "usage_run_a", mode), run(slim, "usage_run_a", mode)
        assert before == after and before["rc"] == 0, (mode, before, after)
        assert run(lib, "usage_run_b", mode)["rc"] == 0
        assert run(slim, "usage_run_b", mode)["rc"] == NO_KERNEL_IMAGE


@pytest.mark.slow
def test_torch_workloads(tmp_path: Path) -> None:
    cap = gpu_capability()
    assert cap is not None
    out = _out(tmp_path)
    site = installed_site()
    scripts = {
        "cnn_train": WORKLOADS / "cnn_train.py",
        "transformer_infer": WORKLOADS / "transformer_infer.py",
    }
    env = {k: v for k, v in os.environ.items() if k != "CUDA_MODULE_LOADING"}
    originals = {}
    for name, script in scripts.items():
        result = tmp_path / f"{name}_orig.json"
        _profile(out / f"{name}.profile.json", [sys.executable, str(script), str(result)], env)
        originals[name] = json.loads(result.read_text())
    profile = merge(load_profile(out / f"{n}.profile.json") for n in scripts)
    # torch loads the CUDA runtime of the nvidia-cuda-runtime wheel: its version is recorded.
    assert any(n.startswith("libcudart.so") and v >= 12000 for n, v in profile.runtimes), (
        profile.runtimes
    )
    assert profile.driver_version and profile.driver_version >= 12000
    copy = tmp_path / "stack"
    copy.mkdir()
    for n in ("torch", "nvidia"):
        shutil.copytree(site / n, copy / n, symlinks=True)
    report = []
    for path in sorted(p for p in copy.rglob("*") if p.is_file() and not p.is_symlink()):
        if ".so" not in path.name or not is_elf(path):
            continue
        usage = profile.for_library(file_sha256(path), path.name)
        r = slim_library(path, path, LibraryPolicy(targets=(Target(*cap),), usage=usage))
        assert r.report.problems == []
        if r.plan.removed_elements:
            arch = r.plan.removed_bytes - r.unused_bytes
            report.append(
                {
                    "library": str(path.relative_to(copy)),
                    "profiled": usage is not None,
                    "elements": r.plan.removed_elements + r.plan.kept_elements,
                    "kept": r.plan.kept_elements,
                    "removed_wrong_arch_bytes": arch,
                    "removed_unused_bytes": r.unused_bytes,
                    "file_bytes": [r.file_bytes_before, r.file_bytes_after],
                }
            )
    (out / "profile_report.json").write_text(json.dumps(report, indent=1))
    for mode in ("LAZY", "EAGER"):
        run_env = dict(
            env,
            CUDA_MODULE_LOADING=mode,
            PYTHONPATH=os.pathsep.join([str(copy), env.get("PYTHONPATH", "")]),
        )
        for name, script in scripts.items():
            result = tmp_path / f"{name}_slim_{mode}.json"
            proc = subprocess.run(
                [sys.executable, str(script), str(result)],
                env=run_env,
                capture_output=True,
                text=True,
                timeout=900,
            )
            assert proc.returncode == 0, proc.stderr[-3000:]
            assert json.loads(result.read_text()) == originals[name], (name, mode)
    before = sum(x["file_bytes"][0] for x in report)
    after = sum(x["file_bytes"][1] for x in report)
    unused = sum(x["removed_unused_bytes"] for x in report)
    print(
        f"profile-slimmed stack: {before / 1e6:.0f} MB -> {after / 1e6:.0f} MB; "
        f"{unused / 1e6:.0f} MB removed as unused beyond arch"
    )
