"""On a GPU: the installed stack slimmed with ``--strip`` (DWARF and static symbol
tables removed from every ELF library, device code or not) runs the battery with
the original's results under LAZY and EAGER loading; and fixture libraries with
host debug information, stripped and compacted, run their kernels unchanged.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from slimwheel.arch import Target
from slimwheel.policy import LibraryPolicy
from slimwheel.slim import slim_library
from tests.gpu.test_slim_fixtures_gpu import HARNESS, run
from tests.gpu.test_torch_stack_gpu import compare, copy_and_slim, installed_site, run_battery

pytestmark = [pytest.mark.gpu]


@pytest.fixture(scope="module")
def strip_stack(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return copy_and_slim(tmp_path_factory.mktemp("strip"), strip=True)


@pytest.mark.slow
@pytest.mark.parametrize("mode", ["LAZY", "EAGER"])
def test_strip_stack(strip_stack: Path, tmp_path: Path, mode: str) -> None:
    out = Path(os.environ.get("SLIMWHEEL_GPU_OUT", tmp_path)) / "strip"
    out.mkdir(parents=True, exist_ok=True)
    orig = run_battery(mode, None, out / f"orig_{mode}.json")
    again = run_battery(mode, None, out / f"orig2_{mode}.json")
    slim = run_battery(mode, strip_stack, out / f"strip_{mode}.json")
    libs = slim["libraries"]
    assert isinstance(libs, list)
    assert any(str(strip_stack) in p and "libtorch_cpu" in p for p in libs)
    site = str(installed_site())
    assert not any(p.startswith(site + "/") for p in libs), "the slim run mapped original libraries"
    compare(orig, again, slim, f"strip {mode}")


@pytest.mark.parametrize("mode", ["LAZY", "EAGER"])
@pytest.mark.parametrize("name", ["big_g", "big_phdr", "many_size", "usage"])
def test_stripped_fixture_runs_identically(
    fixture_libs: dict[str, Path], tmp_path: Path, target: Target, name: str, mode: str
) -> None:
    harness = HARNESS.get(name, "big_run")
    orig = fixture_libs[name]
    slim = tmp_path / orig.name
    r = slim_library(orig, slim, LibraryPolicy(targets=(target,), strip=True))
    assert r.report.problems == []
    if name == "big_g":
        assert r.stripped_bytes > 0
    before, after = run(orig, harness, mode), run(slim, harness, mode)
    print(name, mode, before, after)
    assert after == before and before["rc"] == 0
