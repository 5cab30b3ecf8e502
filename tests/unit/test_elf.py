"""The ELF reader against pyelftools, on nvcc-built libraries."""

from __future__ import annotations

import struct
import tracemalloc
from pathlib import Path

import pytest
from elftools.elf.dynamic import DynamicSegment
from elftools.elf.elffile import ELFFile
from elftools.elf.relocation import RelocationSection, RelrRelocationSection

from slimwheel.cli import main
from slimwheel.elf import MAX_SECTIONS, SHT, ElfFile, open_elf
from slimwheel.errors import ElfError
from slimwheel.fatbin import scan
from tests.elf_bytes import SHN_XINDEX, Sec, elf_bytes


@pytest.mark.parametrize("name", ["many_none", "relr", "rdc", "many_sections"])
def test_headers_match_pyelftools(fixture_libs: dict[str, Path], name: str) -> None:
    path = fixture_libs[name]
    with open(path, "rb") as f, open_elf(path) as ours:
        ref = ELFFile(f)
        assert ours.header.machine == 62 and ref["e_machine"] == "EM_X86_64"
        assert [(s.name, s.offset, s.size, s.addr, s.flags) for s in ours.sections] == [
            (s.name, s["sh_offset"], s["sh_size"], s["sh_addr"], s["sh_flags"])
            for s in ref.iter_sections()
        ]
        assert [(p.type, p.offset, p.vaddr, p.filesz, p.memsz) for p in ours.segments] == [
            (
                p["p_type"] if isinstance(p["p_type"], int) else _PT[p["p_type"]],
                p["p_offset"],
                p["p_vaddr"],
                p["p_filesz"],
                p["p_memsz"],
            )
            for p in ref.iter_segments()
        ]
        dyn = next(s for s in ref.iter_segments() if isinstance(s, DynamicSegment))
        assert [(d.tag, d.value) for d in ours.dynamic] == [
            (t.entry.d_tag if isinstance(t.entry.d_tag, int) else _dt(t), t.entry.d_val)
            for t in dyn.iter_tags()
            if t.entry.d_tag != "DT_NULL"
        ]
        dynsym = next(s for s in ours.sections if s.type == SHT.DYNSYM)
        ref_dynsym = ref.get_section_by_name(".dynsym")
        assert [(s.name, s.value, s.size) for s in ours.symbols(dynsym)] == [
            (s.name, s["st_value"], s["st_size"]) for s in ref_dynsym.iter_symbols()
        ]
        assert ours.soname is None or isinstance(ours.soname, str)


def _dt(tag: object) -> int:
    from elftools.elf.enums import ENUM_D_TAG

    return int(ENUM_D_TAG[tag.entry.d_tag])  # type: ignore[attr-defined]


_PT = {
    "PT_LOAD": 1,
    "PT_DYNAMIC": 2,
    "PT_INTERP": 3,
    "PT_NOTE": 4,
    "PT_PHDR": 6,
    "PT_TLS": 7,
    "PT_GNU_EH_FRAME": 0x6474E550,
    "PT_GNU_STACK": 0x6474E551,
    "PT_GNU_RELRO": 0x6474E552,
    "PT_GNU_PROPERTY": 0x6474E553,
    "PT_NULL": 0,
}


@pytest.mark.parametrize("name", ["many_none", "relr"])
def test_dynamic_relocations_match_pyelftools(fixture_libs: dict[str, Path], name: str) -> None:
    path = fixture_libs[name]
    with open(path, "rb") as f, open_elf(path) as ours:
        ref = ELFFile(f)
        rela = ref.get_section_by_name(".rela.dyn")
        assert isinstance(rela, RelocationSection)
        assert [(r.offset, r.type, r.addend) for r in ours.rela_relocations()] == [
            (r["r_offset"], r["r_info_type"], r["r_addend"]) for r in rela.iter_relocations()
        ]
        relr = ref.get_section_by_name(".relr.dyn")
        if name == "relr":
            assert isinstance(relr, RelrRelocationSection)
            theirs = [r["r_offset"] for r in relr.iter_relocations()]
            assert theirs and list(ours.relr_addresses()) == theirs
        else:
            assert relr is None and list(ours.relr_addresses()) == []


def test_wrappers_through_relr(fixture_libs: dict[str, Path]) -> None:
    with open_elf(fixture_libs["relr"]) as elf:
        layout = scan(elf)
        assert layout.wrappers and all(w.data.how == "relr" for w in layout.wrappers)
        assert {w.data.target for w in layout.wrappers} == {r.vaddr for r in layout.regions}


def test_not_elf_and_truncated(tmp_path: Path, fixture_libs: dict[str, Path]) -> None:
    junk = tmp_path / "junk.so"
    junk.write_bytes(b"hello world" * 10)
    with pytest.raises(ElfError, match="not an ELF file"), open_elf(junk):
        pass
    data = fixture_libs["many_none"].read_bytes()
    cut = tmp_path / "cut.so"
    cut.write_bytes(data[: len(data) // 2])
    with pytest.raises(ElfError, match="truncated or corrupt"), open_elf(cut) as elf:
        scan(elf)
    empty = tmp_path / "empty.so"
    empty.write_bytes(b"")
    with pytest.raises(ElfError, match="not an ELF file"), open_elf(empty):
        pass


def test_extended_section_numbering_is_read(fixture_libs: dict[str, Path]) -> None:
    """65,000+ sections: e_shnum 0 and e_shstrndx SHN_XINDEX, the values in section 0."""
    with open_elf(fixture_libs["many_sections"]) as elf:
        assert (elf.header.shnum, elf.header.shstrndx) == (0, SHN_XINDEX)
        count, shstrndx = elf.section_numbering
        assert count == len(elf.sections) == elf.sections[0].size > 0xFF00 + 64
        assert shstrndx == elf.sections[0].link and elf.sections[shstrndx].name == ".shstrtab"
        assert sum(1 for s in elf.sections if s.name.startswith("many_")) == 0xFF00 + 64


def _with_section0(data: bytes, *, size: int | None = None, link: int | None = None) -> bytes:
    out = bytearray(data)
    shoff = ElfFile(data).header.shoff
    if size is not None:
        struct.pack_into("<Q", out, shoff + 32, size)  # section 0's sh_size
    if link is not None:
        struct.pack_into("<I", out, shoff + 40, link)  # section 0's sh_link
    return bytes(out)


@pytest.mark.parametrize(
    ("claim", "message"),
    [
        (1 << 63, r"implausible section count \d+ \(section 0's sh_size, e_shnum being 0\)"),
        (MAX_SECTIONS + 1, "implausible section count"),
        (MAX_SECTIONS, "section header table at file offset .* lies outside the file"),
        (5, "section header table at file offset .* lies outside the file"),
    ],
)
def test_extended_section_count_claims_are_bounded(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], claim: int, message: str
) -> None:
    """A hostile section 0 sh_size (e_shnum 0) is refused in one line, allocating nothing big."""
    good = elf_bytes([], [Sec(".a"), Sec(".b")], extended_count=True)
    assert len(ElfFile(good).sections) == 4
    path = tmp_path / "libhostile.so"
    path.write_bytes(_with_section0(good, size=claim))
    tracemalloc.start()
    try:
        with pytest.raises(ElfError, match=message) as exc, open_elf(path) as elf:
            _ = elf.sections
    finally:
        _, peak = tracemalloc.get_traced_memory()
        tracemalloc.stop()
    assert peak < 1 << 20
    assert "\n" not in str(exc.value) and str(exc.value).startswith(str(path))
    assert main(["inspect", str(path)]) == 1
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "Traceback" not in err and "libhostile.so" in err


def test_extended_name_table_index_out_of_range_gives_no_names() -> None:
    good = elf_bytes([], [Sec(".a")], xindex=True)
    assert [s.name for s in ElfFile(good).sections] == ["", ".a", ".shstrtab"]
    for link in (3, 0xFFFFFFFF):
        elf = ElfFile(_with_section0(good, link=link))
        assert [s.name for s in elf.sections] == ["", "", ""]
        assert elf.section_numbering == (3, 0)
