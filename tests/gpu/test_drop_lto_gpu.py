"""On a GPU: the installed stack slimmed with ``--drop-lto`` (LTO-IR removed
too: cuFFT's 112 MB, cuSPARSE's) runs the battery and a cuFFT sweep over
~2,000 sizes, precisions and ranks with the original's results, under LAZY
and EAGER loading.

What this shows: ordinary cuFFT transforms (and the battery's cuSPARSE calls)
never use the LTO-IR. What it cannot show, and the option's help says: cuFFT
LTO callbacks (cufftXtSetJITCallback) and cuSPARSE's JIT-LTO routines
(cusparseSpMMOp) link that LTO-IR at run time and fail without it.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from tests.gpu.test_torch_stack_gpu import compare, copy_and_slim, installed_site, run_battery

pytestmark = [pytest.mark.gpu, pytest.mark.slow]


@pytest.fixture(scope="module")
def nolto_stack(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return copy_and_slim(tmp_path_factory.mktemp("nolto"), drop_lto=True)


@pytest.mark.parametrize("mode", ["LAZY", "EAGER"])
@pytest.mark.parametrize("what", ["battery", "fft-sweep"])
def test_drop_lto_stack(nolto_stack: Path, tmp_path: Path, mode: str, what: str) -> None:
    out = Path(os.environ.get("SLIMWHEEL_GPU_OUT", tmp_path)) / "nolto"
    out.mkdir(parents=True, exist_ok=True)
    extra = ("--fft-sweep",) if what == "fft-sweep" else ()
    orig = run_battery(mode, None, out / f"{what}_orig_{mode}.json", extra=extra)
    again = run_battery(mode, None, out / f"{what}_orig2_{mode}.json", extra=extra)
    slim = run_battery(mode, nolto_stack, out / f"{what}_nolto_{mode}.json", extra=extra)
    libs = slim["libraries"]
    assert isinstance(libs, list)
    assert any(str(nolto_stack) in p and "libcufft" in p for p in libs)
    site = str(installed_site())
    assert not any(p.startswith(site + "/") for p in libs), "the slim run mapped original libraries"
    compare(orig, again, slim, f"{what} {mode}", same_errors_ok=what == "fft-sweep")
