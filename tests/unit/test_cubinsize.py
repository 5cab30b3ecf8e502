"""Bytes per kernel and per cubin section category (cubinsize.py), against pyelftools."""

from __future__ import annotations

import io
import json
import subprocess
import sys
from pathlib import Path

from elftools.elf.elffile import ELFFile

from slimwheel.cubinsize import HEADERS, category_of, measure_element
from slimwheel.elf import ElfFile, map_file
from slimwheel.fatbin import payload, scan


def test_every_byte_of_a_cubin_is_counted_once(fixture_libs: dict[str, Path]) -> None:
    lib = fixture_libs["many_none"]
    checked = 0
    with map_file(lib) as buf:
        for _r, el in scan(ElfFile(buf, str(lib))).elements:
            data = payload(buf, el, name=str(lib))
            got = measure_element(data, el, str(lib))[1]
            assert sum(got.by_category.values()) == len(data)
            if not el.is_cubin:
                continue
            # The oracle: pyelftools' sections, categorized the same way.
            oracle: dict[str, int] = {}
            elf = ELFFile(io.BytesIO(bytes(data)))
            for sec in elf.iter_sections():
                if sec["sh_type"] in ("SHT_NULL", "SHT_NOBITS") or not sec["sh_size"]:
                    continue
                cat = category_of(sec.name)
                oracle[cat] = oracle.get(cat, 0) + sec["sh_size"]
            oracle[HEADERS] = len(data) - sum(oracle.values())
            assert dict(got.by_category) == {k: v for k, v in oracle.items() if v}
            if got.by_kernel:
                texts = {
                    s.name[len(".text.") :]: s["sh_size"]
                    for s in elf.iter_sections()
                    if s.name.startswith(".text.")
                }
                assert set(got.by_kernel) == {"fixture_add", "_Z11fixture_mulPffi"}
                for k, n in got.by_kernel.items():
                    assert n > texts[k], "a kernel's code and its other sections"
                checked += 1
    assert checked >= 7


def _inspect(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "slimwheel", "inspect", "-q", *args], capture_output=True, text=True
    )


def test_inspect_top_and_filter(fixture_libs: dict[str, Path]) -> None:
    lib = str(fixture_libs["many_none"])
    got = _inspect(lib, "--top", "1", "--json")
    assert got.returncode == 0, got.stderr
    doc = json.loads(got.stdout)
    sizes = doc["sizes"]
    stored = sum(c["stored_bytes"] for c in sizes["by_category"])
    assert abs(stored - doc["totals"]["device_code_bytes"]) <= 64, "shares add up to the file"
    assert sizes["kernels_matched"] == 2 and len(sizes["kernels"]) == 1
    (top,) = sizes["kernels"]
    assert top["arches"] and top["uncompressed_bytes"] > 0
    got = _inspect(lib, "--filter", r"fixture_mul\(float\*", "--json")
    (only,) = json.loads(got.stdout)["sizes"]["kernels"]
    assert only["kernel"] == "_Z11fixture_mulPffi", "matched by its demangled name"
    assert only["demangled"] == "fixture_mul(float*, float, int)"
    text = _inspect(lib, "--top", "5").stdout
    assert "Device code by cubin section" in text and "fixture_add" in text
    bad = _inspect(lib, "--filter", "(")
    assert bad.returncode == 2 and len(bad.stderr.strip().splitlines()) == 1, bad.stderr


def test_measured_symbols_are_element_symbols_and_broken_cubins_are_named(
    fixture_libs: dict[str, Path],
) -> None:
    """measure_element's symbols (one section-table parse for symbols and sizes)
    are what element_symbols reads; a broken cubin is refused naming the library
    and the element."""
    import pytest

    from slimwheel.cubin import element_symbols
    from slimwheel.errors import CubinError

    lib = fixture_libs["many_none"]
    with map_file(lib) as buf:
        elements = [el for _r, el in scan(ElfFile(buf, str(lib))).elements]
        assert any(el.is_cubin for el in elements)
        for el in elements:
            data = payload(buf, el, name="lib.so")
            assert measure_element(data, el, "lib.so")[0] == element_symbols(
                data, el, name="lib.so"
            )
        el = next(e for e in elements if e.is_cubin)
        broken = bytearray(payload(buf, el, name="lib.so"))
        broken[0x28:0x30] = (1 << 40).to_bytes(8, "little")  # e_shoff: past the end
        with pytest.raises(CubinError) as err:
            measure_element(broken, el, "lib.so")
    assert str(err.value).startswith(f"lib.so: element at {el.offset:#x} ({el.arch_name})")
