"""On a GPU: fixture libraries slimmed to the GPU's arch compute what the originals do.

Each (library, loading mode) runs in its own process (CUDA_MODULE_LOADING is
read once per process). A library with nothing for the GPU must fail with
"no kernel image" (cudaErrorNoKernelImageForDevice, 209) before and after.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from slimwheel.arch import Target
from slimwheel.policy import LibraryPolicy
from slimwheel.slim import slim_library

RUNNER = Path(__file__).with_name("run_fixture.py")
NO_KERNEL_IMAGE = 209

HARNESS = {
    "many_none": "fixture_run",
    "many_size": "fixture_run",
    "many_speed": "fixture_run",
    "sm90_debug": "fixture_run",
    "relr": "fixture_run",
    "managed": "fixture_managed_run",
    "rdc": "rdc_run",
    "big": "big_run",
    "big_phdr": "big_run",
    "embedded": "embedded_run",
    "per_arch": "per_arch_run",
    "sm80_only": "fixture_run",
    "usage": "usage_run_a",
}


_ORIGINAL_RUNS: dict[tuple[Path, str], dict[str, object]] = {}


def run(lib: Path, harness: str, mode: str) -> dict[str, object]:
    env = dict(os.environ, CUDA_MODULE_LOADING=mode)
    proc = subprocess.run(
        [sys.executable, str(RUNNER), str(lib), harness],
        capture_output=True,
        text=True,
        env=env,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stderr
    return json.loads(proc.stdout.strip().splitlines()[-1])  # type: ignore[no-any-return]


@pytest.mark.gpu
@pytest.mark.parametrize("mode", ["LAZY", "EAGER"])
@pytest.mark.parametrize("name", list(HARNESS))
@pytest.mark.parametrize("compact", [True, False], ids=["compact", "zeroed"])
def test_slimmed_fixture_runs_identically(
    fixture_libs: dict[str, Path],
    tmp_path: Path,
    target: Target,
    name: str,
    mode: str,
    compact: bool,
) -> None:
    orig = fixture_libs[name]
    slim = tmp_path / orig.name
    result = slim_library(orig, slim, LibraryPolicy(targets=(target,), compact=compact))
    assert result.report.problems == []
    if compact and name in ("big", "embedded"):
        assert result.holes >= 1 and result.file_bytes_after < result.file_bytes_before // 2
    if compact and name == "per_arch":  # wrong-arch regions zeroed whole, out of the file
        assert result.holes >= 1
    key = (orig, mode)
    if key not in _ORIGINAL_RUNS:
        _ORIGINAL_RUNS[key] = run(orig, HARNESS[name], mode)
    before = _ORIGINAL_RUNS[key]
    after = run(slim, HARNESS[name], mode)
    print(name, mode, before, after)
    assert after == before
    if name == "sm80_only":
        assert before["rc"] == NO_KERNEL_IMAGE
    else:
        assert before["rc"] == 0
