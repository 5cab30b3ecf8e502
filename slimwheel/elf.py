"""Reading 64-bit little-endian ELF files (x86_64, aarch64 hosts; CUDA cubins).

Spec: the System V gABI (https://www.sco.com/developers/gabi/latest/contents.html)
and the x86-64 / AArch64 psABI supplements. DT_RELR is from the gABI proposal
adopted by glibc 2.36 (https://groups.google.com/g/generic-abi/c/bX460iggiKg).

The reader is lazy and works over any buffer that supports ``len``, slicing,
``find`` and :func:`struct.unpack_from` (``bytes`` or a read-only ``mmap``):
libraries are hundreds of megabytes and are never read into memory whole.
Every read is bounds-checked; malformed input raises :class:`ElfError`.
"""

from __future__ import annotations

import enum
import mmap
import os
import struct
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from functools import cached_property

from .errors import ElfError, SlimwheelError
from .files import open_regular, reading_mapped

Buffer = bytes | bytearray | mmap.mmap

ELF_MAGIC = b"\x7fELF"


class ELFClass(enum.IntEnum):
    ELF32 = 1
    ELF64 = 2


class ELFData(enum.IntEnum):
    LSB = 1
    MSB = 2


class EMachine(enum.IntEnum):
    X86_64 = 62
    AARCH64 = 183
    CUDA = 190


class SHT(enum.IntEnum):
    NULL = 0
    PROGBITS = 1
    SYMTAB = 2
    STRTAB = 3
    RELA = 4
    HASH = 5
    DYNAMIC = 6
    NOTE = 7
    NOBITS = 8
    REL = 9
    DYNSYM = 11
    RELR = 19


class SHF(enum.IntFlag):
    WRITE = 0x1
    ALLOC = 0x2
    EXECINSTR = 0x4


class PT(enum.IntEnum):
    NULL = 0
    LOAD = 1
    DYNAMIC = 2
    INTERP = 3
    NOTE = 4
    PHDR = 6
    TLS = 7
    GNU_EH_FRAME = 0x6474E550
    GNU_STACK = 0x6474E551
    GNU_RELRO = 0x6474E552


class DT(enum.IntEnum):
    NULL = 0
    NEEDED = 1
    PLTRELSZ = 2
    STRTAB = 5
    SYMTAB = 6
    RELA = 7
    RELASZ = 8
    RELAENT = 9
    STRSZ = 10
    INIT = 12
    FINI = 13
    SONAME = 14
    JMPREL = 23
    INIT_ARRAY = 25
    FINI_ARRAY = 26
    INIT_ARRAYSZ = 27
    FINI_ARRAYSZ = 28
    PREINIT_ARRAY = 32
    PREINIT_ARRAYSZ = 33
    RELRSZ = 35
    RELR = 36
    RELRENT = 37


class STT(enum.IntEnum):
    NOTYPE = 0
    OBJECT = 1
    FUNC = 2
    SECTION = 3
    FILE = 4
    GNU_IFUNC = 10


class STB(enum.IntEnum):
    LOCAL = 0
    GLOBAL = 1
    WEAK = 2


SHN_UNDEF = 0
SHN_LORESERVE = 0xFF00
SHN_XINDEX = 0xFFFF

# Relocation types that store "base + addend" (what fatbin wrappers use).
R_X86_64_RELATIVE = 8
R_AARCH64_RELATIVE = 1027
RELATIVE_TYPES = {EMachine.X86_64: R_X86_64_RELATIVE, EMachine.AARCH64: R_AARCH64_RELATIVE}

_EHDR = struct.Struct("<16sHHIQQQIHHHHHH")
_SHDR = struct.Struct("<IIQQQQIIQQ")
_PHDR = struct.Struct("<IIQQQQQQ")
_SYM = struct.Struct("<IBBHQQ")
_RELA = struct.Struct("<QQq")
_DYN = struct.Struct("<qQ")
_U64 = struct.Struct("<Q")

# Hard caps on counts claimed by headers, so a hostile file cannot make the
# reader loop or allocate without bound.
MAX_SECTIONS = 1 << 20
MAX_SEGMENTS = 1 << 16


@dataclass(frozen=True, slots=True)
class ElfHeader:
    elf_class: int
    data: int
    osabi: int
    type: int
    machine: int
    version: int
    entry: int
    phoff: int
    shoff: int
    flags: int
    ehsize: int
    phentsize: int
    phnum: int
    shentsize: int
    shnum: int
    shstrndx: int


@dataclass(frozen=True, slots=True)
class Section:
    index: int
    name: str
    name_offset: int
    type: int
    flags: int
    addr: int
    offset: int
    size: int
    link: int
    info: int
    addralign: int
    entsize: int

    @property
    def alloc(self) -> bool:
        return bool(self.flags & SHF.ALLOC)

    @property
    def file_size(self) -> int:
        """Bytes the section occupies in the file (0 for SHT_NOBITS)."""
        return 0 if self.type == SHT.NOBITS else self.size

    @property
    def file_end(self) -> int:
        return self.offset + self.file_size


@dataclass(frozen=True, slots=True)
class Segment:
    index: int
    type: int
    flags: int
    offset: int
    vaddr: int
    paddr: int
    filesz: int
    memsz: int
    align: int


@dataclass(frozen=True, slots=True)
class Symbol:
    name: str
    value: int
    size: int
    type: int
    bind: int
    other: int
    shndx: int


@dataclass(frozen=True, slots=True)
class Relocation:
    """A dynamic relocation; ``addend`` is None for DT_RELR entries (value in place)."""

    offset: int
    type: int
    symbol: int
    addend: int | None
    table: str  # "rela" or "relr"
    entry_offset: int  # file offset of the RELA entry, or -1 for RELR


@dataclass(frozen=True, slots=True)
class DynamicEntry:
    tag: int
    value: int


class ElfFile:
    """A lazily parsed ELF64 little-endian file over a buffer.

    ``name`` only labels errors. Sections, segments and the dynamic table are
    parsed on first use; nothing beyond the headers is copied.
    """

    def __init__(self, buf: Buffer, name: str = "<memory>") -> None:
        self.buf = buf
        self.name = name
        self.size = len(buf)
        self.header = self._parse_header()

    # -- bounds-checked primitives -------------------------------------

    def _fail(self, message: str) -> ElfError:
        return ElfError(message, path=self.name)

    def check_range(self, offset: int, size: int, what: str) -> None:
        if offset < 0 or size < 0 or offset + size > self.size:
            raise self._fail(
                f"{what} at file offset {offset:#x} (+{size:#x}) lies outside the file "
                f"({self.size:#x} bytes); truncated or corrupt"
            )

    def unpack(self, st: struct.Struct, offset: int, what: str) -> tuple[int, ...]:
        self.check_range(offset, st.size, what)
        return st.unpack_from(self.buf, offset)

    def read(self, offset: int, size: int, what: str = "data") -> bytes:
        self.check_range(offset, size, what)
        return bytes(self.buf[offset : offset + size])

    # -- headers ------------------------------------------------------

    def _parse_header(self) -> ElfHeader:
        if self.size < 4 or self.buf[:4] != ELF_MAGIC:
            raise self._fail("not an ELF file")
        if self.size < _EHDR.size:
            raise self._fail("truncated ELF header")
        ident, *rest = _EHDR.unpack_from(self.buf, 0)
        if ident[4] != ELFClass.ELF64:
            raise self._fail("32-bit ELF is not supported (64-bit only)")
        if ident[5] != ELFData.LSB:
            raise self._fail("big-endian ELF is not supported (little-endian only)")
        hdr = ElfHeader(ident[4], ident[5], ident[7], *rest)
        if hdr.shoff and hdr.shentsize != _SHDR.size:
            raise self._fail(f"unexpected section header size {hdr.shentsize}")
        if hdr.phoff and hdr.phnum and hdr.phentsize != _PHDR.size:
            raise self._fail(f"unexpected program header size {hdr.phentsize}")
        return hdr

    @cached_property
    def section_numbering(self) -> tuple[int, int]:
        """(section count, index of the section name table), extended numbering resolved.

        gABI: with SHN_LORESERVE or more sections, e_shnum is 0 and section 0's
        sh_size holds the count; with a name table index of SHN_LORESERVE or
        more, e_shstrndx is SHN_XINDEX and section 0's sh_link holds it. The
        index is 0 when there is no usable name table (e_shstrndx reserved or
        out of range).
        """
        h = self.header
        if h.shoff == 0:
            return 0, 0
        shnum, shstrndx = h.shnum, h.shstrndx
        xindex = shstrndx == SHN_XINDEX
        if shnum == 0 or xindex:
            first = self.unpack(_SHDR, h.shoff, "section header 0")
            if shnum == 0:
                shnum = first[5]
            if xindex:
                shstrndx = first[6]
        elif shstrndx >= SHN_LORESERVE:
            shstrndx = 0  # a reserved value, not an index
        if shnum > MAX_SECTIONS:
            where = " (section 0's sh_size, e_shnum being 0)" if h.shnum == 0 else ""
            raise self._fail(f"implausible section count {shnum}{where}")
        self.check_range(h.shoff, shnum * _SHDR.size, "section header table")
        return shnum, shstrndx if shstrndx < shnum else 0

    @cached_property
    def sections(self) -> tuple[Section, ...]:
        shnum, shstrndx = self.section_numbering
        shoff = self.header.shoff
        raw = [_SHDR.unpack_from(self.buf, shoff + i * _SHDR.size) for i in range(shnum)]
        names = b""
        if shstrndx:
            s = raw[shstrndx]
            names = self.read(s[4], s[5], "section name table")
        out = []
        for i, r in enumerate(raw):
            name = _cstr(names, r[0]) if names else ""
            out.append(Section(i, name, *r))
        return tuple(out)

    @cached_property
    def segments(self) -> tuple[Segment, ...]:
        h = self.header
        if h.phoff == 0 or h.phnum == 0:
            return ()
        if h.phnum > MAX_SEGMENTS:
            raise self._fail(f"implausible program header count {h.phnum}")
        self.check_range(h.phoff, h.phnum * _PHDR.size, "program header table")
        return tuple(
            Segment(i, *_PHDR.unpack_from(self.buf, h.phoff + i * _PHDR.size))
            for i in range(h.phnum)
        )

    def section_by_name(self, name: str) -> Section | None:
        for s in self.sections:
            if s.name == name:
                return s
        return None

    @property
    def loads(self) -> list[Segment]:
        return [p for p in self.segments if p.type == PT.LOAD]

    def vaddr_to_offset(self, vaddr: int, size: int = 1) -> int:
        """File offset of a mapped virtual address (the range must be file-backed)."""
        for p in self.loads:
            if p.vaddr <= vaddr and vaddr + size <= p.vaddr + p.filesz:
                offset = p.offset + (vaddr - p.vaddr)
                self.check_range(offset, size, f"data at virtual address {vaddr:#x}")
                return offset
        raise self._fail(f"virtual address {vaddr:#x} is not backed by the file")

    def offset_to_vaddr(self, offset: int) -> int | None:
        for p in self.loads:
            if p.offset <= offset < p.offset + p.filesz:
                return p.vaddr + (offset - p.offset)
        return None

    # -- dynamic section and relocations -------------------------------

    @cached_property
    def dynamic(self) -> tuple[DynamicEntry, ...]:
        dyn = next((p for p in self.segments if p.type == PT.DYNAMIC), None)
        if dyn is None:
            return ()
        self.check_range(dyn.offset, dyn.filesz, "dynamic segment")
        out = []
        for i in range(dyn.filesz // _DYN.size):
            tag, val = self.unpack(_DYN, dyn.offset + i * _DYN.size, "dynamic entry")
            if tag == DT.NULL:
                break
            out.append(DynamicEntry(tag, val))
        return tuple(out)

    def dynamic_value(self, tag: int) -> int | None:
        for d in self.dynamic:
            if d.tag == tag:
                return d.value
        return None

    def _dyn_table(self, addr_tag: int, size_tag: int, what: str) -> tuple[int, int] | None:
        addr = self.dynamic_value(addr_tag)
        size = self.dynamic_value(size_tag)
        if addr is None or not size:
            return None
        off = self.vaddr_to_offset(addr, size)
        return off, size

    def rela_relocations(self, start: int = 0, end: int = 1 << 64) -> Iterator[Relocation]:
        """DT_RELA entries targeting [start, end) (not the PLT's DT_JMPREL, which
        holds no data pointers). Only matches become objects: a big library has
        ~10^5 relocations."""
        table = self._dyn_table(DT.RELA, DT.RELASZ, "DT_RELA table")
        if table is None:
            return
        off, size = table
        count = size // _RELA.size
        view = memoryview(self.buf)[off : off + count * _RELA.size]
        try:
            for i, (r_offset, r_info, addend) in enumerate(_RELA.iter_unpack(view)):
                if start <= r_offset < end:
                    yield Relocation(
                        r_offset,
                        r_info & 0xFFFFFFFF,
                        r_info >> 32,
                        addend,
                        "rela",
                        off + i * _RELA.size,
                    )
        finally:
            view.release()

    def relr_addresses(self) -> Iterator[int]:
        """Addresses relocated by DT_RELR (each holds base-relative value in place)."""
        table = self._dyn_table(DT.RELR, DT.RELRSZ, "DT_RELR table")
        if table is None:
            return
        off, size = table
        where = 0
        for i in range(size // 8):
            (entry,) = self.unpack(_U64, off + i * 8, "DT_RELR entry")
            if entry & 1 == 0:
                yield entry
                where = entry + 8
            else:
                bits = entry >> 1
                addr = where
                while bits:
                    if bits & 1:
                        yield addr
                    bits >>= 1
                    addr += 8
                where += 63 * 8

    def relocations_in(self, start: int, end: int) -> dict[int, Relocation]:
        """Dynamic relocations (RELA and RELR) whose target lies in [start, end)."""
        out = {r.offset: r for r in self.rela_relocations(start, end)}
        for addr in self.relr_addresses():
            if start <= addr < end:
                out[addr] = Relocation(addr, -1, 0, None, "relr", -1)
        return out

    def dynamic_string(self, offset: int) -> str:
        """A string of the dynamic string table (DT_STRTAB)."""
        strtab = self.dynamic_value(DT.STRTAB)
        strsz = self.dynamic_value(DT.STRSZ)
        if strtab is None or strsz is None or offset >= strsz:
            raise self._fail(f"dynamic string {offset} outside DT_STRTAB")
        base = self.vaddr_to_offset(strtab, strsz)
        return _cstr(self.read(base, strsz, "dynamic string table"), offset)

    @property
    def soname(self) -> str | None:
        value = self.dynamic_value(DT.SONAME)
        return None if value is None else self.dynamic_string(value)

    @property
    def machine_name(self) -> str:
        try:
            return EMachine(self.header.machine).name.lower()
        except ValueError:
            return f"machine-{self.header.machine}"

    def read_u64_at_vaddr(self, vaddr: int) -> int:
        (value,) = self.unpack(_U64, self.vaddr_to_offset(vaddr, 8), "pointer")
        return int(value)

    # -- symbols -------------------------------------------------------

    def symbols(
        self, section: Section, keep: Callable[[int, int, int], bool] | None = None
    ) -> Iterator[Symbol]:
        """Symbols of a SHT_SYMTAB / SHT_DYNSYM section; with ``keep``, only those
        for whose (st_info, st_other, st_shndx) it says True (the others' names are
        never read: a cubin's symbol table is mostly section and local symbols)."""
        if section.entsize not in (0, _SYM.size):
            raise self._fail(f"section {section.name}: unexpected symbol size {section.entsize}")
        if not 0 <= section.link < len(self.sections):
            raise self._fail(f"section {section.name}: bad string table link {section.link}")
        strsec = self.sections[section.link]
        self.check_range(strsec.offset, strsec.file_size, f"{strsec.name} string table")
        self.check_range(section.offset, section.size, f"{section.name} symbol table")
        base, limit = strsec.offset, strsec.offset + strsec.file_size
        buf = self.buf
        for i in range(section.size // _SYM.size):
            name, info, other, shndx, value, size = _SYM.unpack_from(
                buf, section.offset + i * _SYM.size
            )
            if keep is not None and not keep(info, other, shndx):
                continue
            text = ""
            if name < limit - base:  # read in place: a string table can be 100 MB
                end = buf.find(b"\0", base + name, limit)
                text = bytes(buf[base + name : end if end >= 0 else limit]).decode(
                    "utf-8", "replace"
                )
            yield Symbol(text, value, size, info & 0xF, info >> 4, other, shndx)


def _cstr(table: bytes, offset: int) -> str:
    if offset >= len(table):
        return ""
    end = table.find(b"\0", offset)
    if end < 0:
        end = len(table)
    return table[offset:end].decode("utf-8", "replace")


def release(buf: Buffer, start: int, end: int) -> None:
    """Drop mapped pages of [start, end) from this process's resident set.

    The file is mapped read-only and shared, so the pages stay in the page
    cache and are read again on the next access; this only bounds RSS when a
    scan sweeps through hundreds of megabytes.
    """
    if not isinstance(buf, mmap.mmap) or not hasattr(mmap, "MADV_DONTNEED"):
        return
    page = mmap.PAGESIZE
    lo = start - start % page
    hi = min(end, len(buf))
    if hi > lo:
        buf.madvise(mmap.MADV_DONTNEED, lo, hi - lo)


def is_elf(path: str | os.PathLike[str]) -> bool:
    """Whether a file starts with the ELF magic (reads four bytes)."""
    try:
        with open(path, "rb") as f:
            return f.read(4) == ELF_MAGIC
    except OSError:
        return False


@contextmanager
def map_file(path: str | os.PathLike[str]) -> Iterator[Buffer]:
    """Map a file read-only; empty files give ``b""`` (mmap refuses them)."""
    try:
        f = open_regular(path)
    except SlimwheelError as exc:
        raise ElfError(exc.message, path=os.fspath(path)) from None
    with f:
        size = os.fstat(f.fileno()).st_size
        if size == 0:
            yield b""
            return
        mm = mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ)
        try:
            with reading_mapped(os.fspath(path)):
                yield mm
        finally:
            mm.close()


@contextmanager
def open_elf(path: str | os.PathLike[str]) -> Iterator[ElfFile]:
    """Open and map an ELF file read-only."""
    with map_file(path) as buf:
        yield ElfFile(buf, os.fspath(path))
