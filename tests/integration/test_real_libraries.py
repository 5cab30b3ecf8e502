"""The reader against real CUDA libraries from the local wheels, with cuobjdump as oracle."""

from __future__ import annotations

import hashlib
import subprocess
from pathlib import Path

import pytest

from slimwheel.elf import open_elf
from slimwheel.fatbin import payload, scan
from tests.helpers import cuobjdump_listing, find_cuobjdump, our_listing

pytestmark = pytest.mark.slow


def _check_against_cuobjdump(lib: Path, tmp_path: Path) -> int:
    with open_elf(lib) as elf:
        layout = scan(elf)
        assert our_listing(layout, (".nv_fatbin",)) == cuobjdump_listing(lib)
        subprocess.run(
            [find_cuobjdump(), "-xelf", "all", str(lib)],
            cwd=tmp_path,
            check=True,
            capture_output=True,
        )
        theirs = sorted(tmp_path.glob("*.cubin"), key=lambda p: int(p.name.split(".")[-3]))
        ours = [
            (region, el)
            for region in layout.regions
            if region.section == ".nv_fatbin"
            for el in region.elements
            if el.kind == 2
        ]
        assert len(ours) == len(theirs) > 0
        for (_region, el), path in zip(ours, theirs, strict=True):
            mine = hashlib.sha256(payload(elf.buf, el, name=str(lib))).hexdigest()
            assert mine == hashlib.sha256(path.read_bytes()).hexdigest(), path.name
            path.unlink()
        return len(ours)


def test_curand_x86_64(curand_lib: Path, tmp_path: Path) -> None:
    assert _check_against_cuobjdump(curand_lib, tmp_path) == 99


def test_curand_aarch64(curand_aarch64_lib: Path, tmp_path: Path) -> None:
    with open_elf(curand_aarch64_lib) as elf:
        assert elf.machine_name == "aarch64"
        layout = scan(elf)
        assert layout.wrappers and all(w.data.how == "rela" for w in layout.wrappers)
    assert _check_against_cuobjdump(curand_aarch64_lib, tmp_path) > 0


def test_torch_cuda_linalg(linalg_lib: Path, tmp_path: Path) -> None:
    assert _check_against_cuobjdump(linalg_lib, tmp_path) == 325
