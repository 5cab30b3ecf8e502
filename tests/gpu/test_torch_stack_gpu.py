"""On a GPU: a copy of the installed torch + nvidia-* stack, every library slimmed
to the GPU's arch, runs the battery with bit-identical results to the original
installation, under CUDA_MODULE_LOADING=LAZY and EAGER.

The installed site-packages is never modified: torch/ and nvidia/ (and their
.dist-info) are copied, the copy is slimmed in place, and the copy is put
first on PYTHONPATH for the slim runs. SLIMWHEEL_GPU_OUT, when set, receives
the battery outputs and a per-library size report.
"""

from __future__ import annotations

import importlib.util
import json
import multiprocessing
import os
import shutil
import subprocess
import sys
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import pytest

from slimwheel.arch import Target
from slimwheel.elf import is_elf
from slimwheel.policy import LibraryPolicy
from slimwheel.slim import SlimResult, slim_library
from tests.gpu.conftest import gpu_capability

BATTERY = Path(__file__).with_name("battery.py")
pytestmark = [pytest.mark.gpu, pytest.mark.slow]


def installed_site() -> Path:
    spec = importlib.util.find_spec("torch")
    if spec is None or spec.origin is None:
        pytest.skip("torch is not installed")
    return Path(spec.origin).parent.parent


def _slim_one(job: tuple[str, int, int, bool, bool]) -> dict[str, object]:
    path, major, minor, drop_lto, strip = job
    policy = LibraryPolicy(targets=(Target(major, minor),), drop_lto=drop_lto, strip=strip)
    r: SlimResult = slim_library(path, path, policy)
    return {
        "library": path,
        "before": r.file_bytes_before,
        "after": r.file_bytes_after,
        "selected": r.plan.removed_bytes,
        "loads": [r.loads_before, r.loads_after],
        "problems": r.report.problems,
    }


@pytest.fixture(scope="module")
def slim_stack(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return copy_and_slim(tmp_path_factory.mktemp("stack"))


def copy_and_slim(copy: Path, *, drop_lto: bool = False, strip: bool = False) -> Path:
    """Copy torch/ and nvidia/ (with .dist-info) of the installed site-packages
    to ``copy`` and slim every library there for this machine's GPU."""
    cap = gpu_capability()
    assert cap is not None
    site = installed_site()
    for entry in sorted(site.iterdir()):
        n = entry.name
        if (
            n in ("torch", "nvidia")
            or (n.startswith(("torch-", "nvidia_")) and n.endswith(".dist-info"))
        ) and entry.is_dir():
            shutil.copytree(entry, copy / n, symlinks=True)
    libs = sorted(
        str(p)
        for p in copy.rglob("*")
        if p.is_file() and not p.is_symlink() and ".so" in p.name and is_elf(p)
    )
    spawn = multiprocessing.get_context("spawn")
    with ProcessPoolExecutor(max_workers=min(16, os.cpu_count() or 2), mp_context=spawn) as pool:
        report = list(pool.map(_slim_one, [(p, *cap, drop_lto, strip) for p in libs]))
    out = os.environ.get("SLIMWHEEL_GPU_OUT")
    if out:
        Path(out).mkdir(parents=True, exist_ok=True)
        name = "stack_slim_nolto.json" if drop_lto else "stack_slim.json"
        name = "stack_slim_strip.json" if strip else name
        (Path(out) / name).write_text(json.dumps(report, indent=1))
    assert all(not r["problems"] for r in report)
    before = sum(int(r["before"]) for r in report)  # type: ignore[call-overload]
    after = sum(int(r["after"]) for r in report)  # type: ignore[call-overload]
    print(f"stack: {len(report)} libraries, {before / 1e6:.0f} MB -> {after / 1e6:.0f} MB")
    return copy


def run_battery(
    mode: str,
    pythonpath: Path | None,
    out: Path,
    python: str = sys.executable,
    extra: tuple[str, ...] = (),
) -> dict[str, object]:
    env = dict(os.environ, CUDA_MODULE_LOADING=mode, PYTHONDONTWRITEBYTECODE="1")
    if pythonpath is not None:
        env["PYTHONPATH"] = os.pathsep.join([str(pythonpath), env.get("PYTHONPATH", "")])
    proc = subprocess.run(
        [python, str(BATTERY), str(out), *extra],
        env=env,
        capture_output=True,
        text=True,
        timeout=900,
    )
    assert proc.returncode == 0, proc.stderr[-4000:]
    return json.loads(out.read_text())  # type: ignore[no-any-return]


@pytest.mark.parametrize("mode", ["LAZY", "EAGER"])
def test_slim_stack_is_bit_identical(slim_stack: Path, tmp_path: Path, mode: str) -> None:
    out = Path(os.environ.get("SLIMWHEEL_GPU_OUT", tmp_path))
    out.mkdir(parents=True, exist_ok=True)
    orig = run_battery(mode, None, out / f"battery_orig_{mode}.json")
    again = run_battery(mode, None, out / f"battery_orig2_{mode}.json")
    slim = run_battery(mode, slim_stack, out / f"battery_slim_{mode}.json")
    site = str(installed_site())
    for run in (orig, again):
        assert isinstance(run["libraries"], list)
        assert any(site in p and "libtorch_cuda" in p for p in run["libraries"])
    slim_libs = slim["libraries"]
    assert isinstance(slim_libs, list)
    assert any(str(slim_stack) in p and "libtorch_cuda" in p for p in slim_libs)
    assert any(str(slim_stack) in p and "libcublas" in p for p in slim_libs)
    assert not any(site in p for p in slim_libs), "the slim run mapped original libraries"
    compare(orig, again, slim, mode)


def compare(
    orig: dict[str, object],
    again: dict[str, object],
    slim: dict[str, object],
    mode: str,
    *,
    same_errors_ok: bool = False,
) -> None:
    """The slim run's results equal the original's: bit for bit, except results
    that differ between two runs of the original itself (compared by value).
    ``same_errors_ok``: a case that fails the same way in the original is a result too."""
    o, o2, s = orig["results"], again["results"], slim["results"]
    assert isinstance(o, dict) and isinstance(o2, dict) and isinstance(s, dict)
    errors = sorted(
        k
        for k in {*o, *s}
        if k.endswith(":error") and not (same_errors_ok and o.get(k) == s.get(k))
    )
    assert not errors, {k: o.get(k, s.get(k)) for k in errors}
    assert sorted(s) == sorted(o)
    nondeterministic = sorted(k for k in o if o[k] != o2[k])
    differ = [k for k in o if k not in nondeterministic and o[k] != s[k]]
    assert not differ, {k: (o[k], s[k]) for k in differ}
    for k in nondeterministic:
        for field in ("sum", "abs_sum"):
            a, b = o[k][field], s[k][field]
            assert abs(a - b) <= 1e-3 * max(1.0, abs(a)), (k, field, a, b)
    print(
        f"{mode}: {len(o) - len(nondeterministic)} results bit-identical; "
        f"nondeterministic in the original itself (compared by value): {nondeterministic}"
    )
