"""The reader against libraries nvcc builds at test time (tests/fixtures)."""

from __future__ import annotations

import hashlib
import subprocess
from collections import Counter
from pathlib import Path

import pytest

from slimwheel.cubin import read_element
from slimwheel.elf import open_elf
from slimwheel.fatbin import FatbinLayout, Region, payload, scan
from tests.fixtures.builds import BUILDS, Build
from tests.helpers import cuobjdump_listing, find_cuobjdump, our_listing


def _layout(path: Path) -> FatbinLayout:
    with open_elf(path) as elf:
        return scan(elf)


def _kernel_regions(path: Path) -> list[tuple[Region, list[set[str]]]]:
    """Regions whose elements define kernels, with each element's kernel set."""
    out = []
    with open_elf(path) as elf:
        for region in scan(elf).regions:
            kernels = []
            for el in region.elements:
                syms = read_element(elf.buf, el, name=str(path))
                kernels.append(set(syms.kernels) if syms else set())
            if any(kernels):
                out.append((region, kernels))
    return out


@pytest.mark.parametrize("name", [n for n, b in BUILDS.items() if not b.rdc and b.units == 1])
def test_translation_unit_region_holds_exactly_what_was_asked(
    fixture_libs: dict[str, Path], name: str
) -> None:
    build: Build = BUILDS[name]
    regions = _kernel_regions(fixture_libs[name])
    assert len(regions) == 1, "one translation unit, one region with kernels"
    region, kernels = regions[0]
    got = Counter((el.kind_label, el.arch_name) for el in region.elements)
    assert got == Counter(build.expected_arches)
    for el, ks in zip(region.elements, kernels, strict=True):
        assert ks == build.kernels, el.arch_name
        if build.compression is not None:
            assert el.compression.value == build.compression
        assert el.debug == ("-G" in build.flags)
        assert el.data_size > 0


def test_per_arch_library_has_one_region_per_arch(fixture_libs: dict[str, Path]) -> None:
    build = BUILDS["per_arch"]
    regions = _kernel_regions(fixture_libs["per_arch"])
    got = sorted([el.arch_name for el in r.elements] for r, _ in regions)
    assert got == sorted([code] for _virtual, code in build.codes)
    assert all(ks == [build.kernels] for _, ks in regions)
    assert {r.section for r, _ in regions} == {".rodata"}


@pytest.mark.parametrize("name", [n for n, b in BUILDS.items() if b.units == 1])
def test_device_variables(fixture_libs: dict[str, Path], name: str) -> None:
    build = BUILDS[name]
    path = fixture_libs[name]
    with open_elf(path) as elf:
        layout = scan(elf)
        for region in layout.regions:
            for el in region.elements:
                syms = read_element(elf.buf, el, name=name)
                assert syms is not None
                if not syms.kernels or region.section == "__nv_relfatbin":
                    continue
                got = {(v.name, v.space) for v in syms.variables}
                if el.is_ptx:
                    # PTX spells managed variables as .global with an attribute.
                    assert {n for n, _ in got} == {n for n, _ in build.variables}
                else:
                    assert got == build.variables, el.arch_name


def test_variants_come_from_the_flags(fixture_libs: dict[str, Path]) -> None:
    layout = _layout(fixture_libs["many_none"])
    by_name = {el.arch_name: el for _, el in layout.elements}
    assert by_name["sm_90a"].variant.value == "a"
    assert by_name["sm_90a"].arch == 90
    assert by_name["sm_100f"].variant.value == "f"
    assert by_name["sm_100f"].arch == 100
    assert by_name["sm_90"].variant.value == ""
    managed = _layout(fixture_libs["managed"])
    assert {el.arch_name for _, el in managed.elements if el.is_ptx} == {"compute_120f"}


@pytest.mark.parametrize("name", [n for n, b in BUILDS.items() if not (b.rdc or b.embedded)])
def test_every_kernel_region_has_one_wrapper(fixture_libs: dict[str, Path], name: str) -> None:
    layout = _layout(fixture_libs[name])
    targets = Counter(w.data.target for w in layout.wrappers)
    version = {w.data.target: w.version for w in layout.wrappers}
    for region, _ in _kernel_regions(fixture_libs[name]):
        assert targets[region.vaddr] == 1
        assert version[region.vaddr] == 1
    # nvcc 13 also registers a kernel-less device-link region through a v2 wrapper.
    how = "relr" if name == "relr" else "rela"
    assert all(w.data.how == how for w in layout.wrappers)
    assert {r.vaddr for r in layout.regions} == set(targets)
    assert layout.unreferenced() == []


def test_rdc_library(fixture_libs: dict[str, Path]) -> None:
    build = BUILDS["rdc"]
    path = fixture_libs["rdc"]
    layout = _layout(path)
    rel = [r for r in layout.regions if r.section == "__nv_relfatbin"]
    assert len(rel) == len(build.sources), "one relocatable region per translation unit"
    for region in rel:
        got = Counter((el.kind_label, el.arch_name) for el in region.elements)
        assert got == Counter(build.expected_arches)
    per_tu = [ks for _, ks in _kernel_regions(path) if _.section == "__nv_relfatbin"]
    assert set().union(*[k for ks in per_tu for k in ks]) == build.kernels
    linked = [(r, ks) for r, ks in _kernel_regions(path) if r.section == ".nv_fatbin"]
    assert len(linked) == 1
    region, kernels = linked[0]
    assert sorted(el.arch_name for el in region.elements) == ["sm_80", "sm_90"]
    assert all(ks == build.kernels for ks in kernels)
    v2 = [w for w in layout.wrappers if w.version == 2]
    assert len(v2) == 1 and v2[0].data.target == region.vaddr
    assert v2[0].second is not None, "v2 wrappers point at the prelinked array"
    rel_targets = {w.data.target for w in layout.wrappers if w.version == 1}
    assert {r.vaddr for r in rel} <= rel_targets


@pytest.mark.parametrize("name", list(BUILDS))
def test_listing_matches_cuobjdump(fixture_libs: dict[str, Path], name: str) -> None:
    path = fixture_libs[name]
    layout = _layout(path)
    assert our_listing(layout, (".nv_fatbin",)) == cuobjdump_listing(path)
    assert our_listing(layout, (".nv_fatbin", "__nv_relfatbin")) == cuobjdump_listing(
        path, include_rel=True
    )


@pytest.mark.parametrize("name", ["many_none", "many_size", "many_speed", "rdc"])
def test_cubins_match_cuobjdump_extraction(
    fixture_libs: dict[str, Path], name: str, tmp_path: Path
) -> None:
    path = fixture_libs[name]
    subprocess.run(
        [find_cuobjdump(), "-all", "-xelf", "all", str(path)],
        cwd=tmp_path,
        check=True,
        capture_output=True,
    )
    theirs = sorted(tmp_path.glob("*.cubin"), key=lambda p: int(p.name.split(".")[-3]))
    with open_elf(path) as elf:
        ours = [
            hashlib.sha256(payload(elf.buf, el, name=name)).hexdigest()
            for region in scan(elf).regions
            for el in region.elements
            if el.kind == 2
        ]
    assert ours == [hashlib.sha256(p.read_bytes()).hexdigest() for p in theirs]
