"""Fatbin regions and elements inside an ELF library, and their payloads.

Format notes: ``shared/design/fatbin.md`` (region header, element header, flags,
wrappers), re-checked against nvcc 13.0 builds and ``cuobjdump``.

A *region* is one fatbin (``0xBA55ED50`` header + entries): one per translation
unit in ``.nv_fatbin`` / ``__nv_relfatbin``, and loaded by the library itself
from ``.cask_resource``, ``.ldata``, ``.rodata`` or ``.data``. An *element* is
one entry of a region: a cubin, PTX or LTO-IR for one architecture.

Everything is read lazily from the library's buffer. Sizes in headers are
untrusted: every range is checked, and decompression is capped.
"""

from __future__ import annotations

import enum
import io
import itertools
import struct
from collections.abc import Iterator
from dataclasses import dataclass, field

import lz4.block
import zstandard

from .elf import RELATIVE_TYPES, SHF, SHT, Buffer, ElfFile, Relocation, Section, release
from .errors import FatbinError

REGION_MAGIC = 0xBA55ED50
REGION_MAGIC_BYTES = struct.pack("<I", REGION_MAGIC)
WRAPPER_MAGIC = 0x466243B1

_REGION = struct.Struct("<IHHQ")
_ELEMENT = struct.Struct("<HHIQIIHHIIIQQQ")
_WRAPPER = struct.Struct("<IIQQ")
_OPTIONS = struct.Struct("<II")

REGION_HEADER_SIZE = _REGION.size  # 16
ELEMENT_MIN_HEADER = _ELEMENT.size  # 64
ELEMENT_MAX_HEADER = 1 << 16
WRAPPER_SIZE = _WRAPPER.size  # 24

#: Default cap on one element's decompressed size (the largest seen is ~40 MB).
MAX_UNCOMPRESSED = 1 << 30
#: An LZ4 block cannot expand more than ~255x; a larger claim is corrupt.
LZ4_MAX_RATIO = 255
#: Real elements compress up to ~210:1 (libtorch_cuda.so); zstd can claim far more.
MAX_RATIO = 4096
#: All elements of a library decompressed: real libraries reach ~19x their file size.
BUDGET_RATIO = 64
MIN_DECOMPRESSION_BUDGET = 256 << 20

#: Sections that hold nothing but fatbin regions (and zero padding).
DEDICATED_SECTIONS = (".nv_fatbin", "__nv_relfatbin")
#: Sections known to carry regions among other data.
EMBEDDING_SECTIONS = (".cask_resource", ".ldata", ".rodata", ".data", ".lrodata")
WRAPPER_SECTION = ".nvFatBinSegment"
#: A search through other data drops the pages it swept every this many bytes.
RELEASE_EVERY = 32 << 20


class ElementKind(enum.IntEnum):
    PTX = 1
    ELF = 2
    OLD_CUBIN = 4
    NVVM = 8  # LTO-IR

    @classmethod
    def label(cls, value: int) -> str:
        try:
            return {1: "ptx", 2: "elf", 4: "cubin-old", 8: "lto-ir"}[cls(value)]
        except ValueError:
            return f"kind-{value}"


class Compression(enum.Enum):
    NONE = "none"
    LZ4 = "lz4"
    ZSTD = "zstd"


class ElementFlag(enum.IntFlag):
    ADDR64 = 0x1
    DEBUG = 0x2
    HOST_LINUX = 0x10
    LZ4 = 0x2000
    ZSTD = 0x8000
    ARCH_SPECIFIC = 0x100000  # "a": sm_90a
    FAMILY = 0x200000  # "f": sm_100f


# Plain ints for the hot paths (IntFlag arithmetic is slow in bulk).
_ZSTD, _LZ4 = int(ElementFlag.ZSTD), int(ElementFlag.LZ4)
_ARCH_SPECIFIC, _FAMILY = int(ElementFlag.ARCH_SPECIFIC), int(ElementFlag.FAMILY)


class Variant(enum.Enum):
    """The suffix of an architecture: plain, arch-specific ``a``, family ``f``."""

    PLAIN = ""
    ARCH_SPECIFIC = "a"
    FAMILY = "f"


@dataclass(frozen=True, slots=True)
class Element:
    """One entry of a fatbin region. Offsets are file offsets."""

    offset: int
    kind: int
    version: int
    header_size: int
    payload_size: int
    compressed_size: int
    options_offset: int
    code_version: tuple[int, int]
    arch: int
    identifier: str
    flags: int
    uncompressed_size: int

    @property
    def size(self) -> int:
        """Header plus stored payload: the bytes this element occupies."""
        return self.header_size + self.payload_size

    @property
    def end(self) -> int:
        return self.offset + self.size

    @property
    def payload_offset(self) -> int:
        return self.offset + self.header_size

    @property
    def compression(self) -> Compression:
        if self.flags & _ZSTD:
            return Compression.ZSTD
        if self.flags & _LZ4:
            return Compression.LZ4
        return Compression.NONE

    @property
    def data_size(self) -> int:
        """Size of the payload once decompressed."""
        if self.compression is Compression.NONE:
            return self.payload_size
        return self.uncompressed_size

    @property
    def variant(self) -> Variant:
        if self.flags & _ARCH_SPECIFIC:
            return Variant.ARCH_SPECIFIC
        if self.flags & _FAMILY:
            return Variant.FAMILY
        return Variant.PLAIN

    @property
    def debug(self) -> bool:
        return bool(self.flags & ElementFlag.DEBUG)

    @property
    def kind_label(self) -> str:
        return ElementKind.label(self.kind)

    @property
    def is_cubin(self) -> bool:
        return self.kind in (ElementKind.ELF, ElementKind.OLD_CUBIN)

    @property
    def is_ptx(self) -> bool:
        return self.kind == ElementKind.PTX

    @property
    def arch_name(self) -> str:
        """``sm_90a`` for code, ``compute_90a`` for PTX / LTO-IR."""
        prefix = "sm" if self.is_cubin else "compute"
        return f"{prefix}_{self.arch}{self.variant.value}"


@dataclass(frozen=True, slots=True)
class Region:
    """One fatbin: a 16-byte header and its elements, in section ``section``."""

    section: str
    section_index: int
    offset: int
    vaddr: int
    size: int  # bytes of entries after the header
    elements: tuple[Element, ...]

    @property
    def total_size(self) -> int:
        return REGION_HEADER_SIZE + self.size

    @property
    def end(self) -> int:
        return self.offset + self.total_size


@dataclass(frozen=True, slots=True)
class PointerSite:
    """Where a pointer in the library is stored and how the loader fills it."""

    vaddr: int
    target: int
    how: str  # "rela", "relr" or "absolute"
    entry_offset: int  # file offset of the RELA entry; -1 otherwise


@dataclass(frozen=True, slots=True)
class Wrapper:
    """A ``__fatBinC_Wrapper_t`` in ``.nvFatBinSegment`` (24 bytes)."""

    vaddr: int
    offset: int
    version: int
    data: PointerSite
    second: PointerSite | None  # filename (v1) or prelinked-array pointer (v2)


@dataclass(slots=True)
class FatbinLayout:
    """Every region found in a library, and the wrappers that reference them."""

    regions: list[Region] = field(default_factory=list)
    wrappers: list[Wrapper] = field(default_factory=list)

    def unreferenced(self) -> list[Region]:
        """Regions in dedicated sections that no wrapper points at."""
        targets = {w.data.target for w in self.wrappers}
        return [
            r for r in self.regions if r.section in DEDICATED_SECTIONS and r.vaddr not in targets
        ]

    @property
    def elements(self) -> Iterator[tuple[Region, Element]]:
        for r in self.regions:
            for e in r.elements:
                yield r, e


# -- parsing ---------------------------------------------------------------


def _parse_element(buf: Buffer, off: int, end: int, name: str) -> Element:
    if off + ELEMENT_MIN_HEADER > end:
        raise FatbinError(f"fatbin element header at {off:#x} runs past its region", path=name)
    (
        kind,
        version,
        hsize,
        psize,
        csize,
        opt_off,
        minor,
        major,
        arch,
        id_off,
        id_len,
        flags,
        _reserved,
        usize,
    ) = _ELEMENT.unpack_from(buf, off)
    where = f"fatbin element at {off:#x}"
    if kind == 0:
        raise FatbinError(f"{where}: kind 0 (not an element)", path=name)
    if not ELEMENT_MIN_HEADER <= hsize <= ELEMENT_MAX_HEADER:
        raise FatbinError(f"{where}: implausible header size {hsize}", path=name)
    if off + hsize + psize > end:
        raise FatbinError(
            f"{where}: payload of {psize} bytes runs past its region (truncated or corrupt)",
            path=name,
        )
    compressed = flags & (ElementFlag.LZ4 | ElementFlag.ZSTD)
    if compressed:
        if (flags & ElementFlag.LZ4) and (flags & ElementFlag.ZSTD):
            raise FatbinError(f"{where}: flagged both LZ4 and Zstandard", path=name)
        if not 0 < csize <= psize:
            raise FatbinError(f"{where}: compressed size {csize} outside payload", path=name)
        if usize == 0:
            raise FatbinError(f"{where}: compressed without an uncompressed size", path=name)
    ident = ""
    if id_off and id_len:
        if id_off + id_len > hsize:
            raise FatbinError(f"{where}: identifier outside the header", path=name)
        raw = bytes(buf[off + id_off : off + id_off + id_len])
        ident = raw.split(b"\0", 1)[0].decode("utf-8", "replace").strip()
    if opt_off and opt_off + _OPTIONS.size > hsize:
        raise FatbinError(f"{where}: options descriptor outside the header", path=name)
    return Element(
        offset=off,
        kind=kind,
        version=version,
        header_size=hsize,
        payload_size=psize,
        compressed_size=csize,
        options_offset=opt_off,
        code_version=(major, minor),
        arch=arch,
        identifier=ident,
        flags=flags,
        uncompressed_size=usize,
    )


def _region_header(buf: Buffer, off: int, limit: int) -> int | None:
    """Entries size of a valid region header at ``off``, else None."""
    if off + REGION_HEADER_SIZE > limit:
        return None
    magic, version, hsize, size = _REGION.unpack_from(buf, off)
    if magic != REGION_MAGIC or version != 1 or hsize != REGION_HEADER_SIZE:
        return None
    if size % 8 or off + REGION_HEADER_SIZE + size > limit:
        return None
    return int(size)


def parse_region(
    buf: Buffer, off: int, limit: int, *, section: Section, vaddr: int, name: str
) -> Region:
    """Parse the region whose header is at file offset ``off``."""
    size = _region_header(buf, off, limit)
    if size is None:
        raise FatbinError(f"no valid fatbin header at {off:#x}", path=name)
    end = off + REGION_HEADER_SIZE + size
    pos = off + REGION_HEADER_SIZE
    elements = []
    while pos < end:
        if end - pos < ELEMENT_MIN_HEADER and _all_zero(buf, pos, end):
            break  # zeroed tail left by a region that was shrunk in place
        el = _parse_element(buf, pos, end, name)
        elements.append(el)
        pos = el.end
    return Region(section.name, section.index, off, vaddr, size, tuple(elements))


_ZERO_CHUNK = bytes(1 << 20)


def _all_zero(buf: Buffer, start: int, end: int) -> bool:
    pos = start
    while pos < end:
        n = min(end - pos, len(_ZERO_CHUNK))
        if buf[pos : pos + n] != _ZERO_CHUNK[:n]:
            return False
        pos += n
    return True


def scan_section(elf: ElfFile, sec: Section) -> list[Region]:
    """Every region in one section.

    In ``.nv_fatbin`` / ``__nv_relfatbin`` anything other than regions and
    zero padding is an error. Elsewhere, a candidate header that is not a
    valid region is ordinary data and is skipped.
    """
    elf.check_range(sec.offset, sec.size, f"section {sec.name}")
    if sec.name in DEDICATED_SECTIONS:
        return _walk_dedicated(elf, sec)
    return _search_embedded(elf, sec)


def _walk_dedicated(elf: ElfFile, sec: Section) -> list[Region]:
    """Walk header to header; payload pages are never touched."""
    buf, name = elf.buf, elf.name
    end = sec.offset + sec.size
    pos = swept = sec.offset + (-sec.addr % 8)
    regions: list[Region] = []
    while pos < end:
        if pos - swept > RELEASE_EVERY:
            release(buf, swept, pos)
            swept = pos
        if _region_header(buf, pos, end) is not None:
            region = parse_region(
                buf, pos, end, section=sec, vaddr=sec.addr + (pos - sec.offset), name=name
            )
            regions.append(region)
            pos = region.end
            continue
        if buf[pos : min(pos + 8, end)].strip(b"\0"):
            what = (
                "corrupt fatbin header"
                if buf[pos : pos + 4] == REGION_MAGIC_BYTES
                else ("unrecognized data (not a fatbin region)")
            )
            raise FatbinError(f"{sec.name}: {what} at {pos:#x}", path=name)
        found = buf.find(REGION_MAGIC_BYTES, pos, end)
        nxt = end if found < 0 else found
        if not _all_zero(buf, pos, nxt):
            raise FatbinError(
                f"{sec.name}: unrecognized data between {pos:#x} and {nxt:#x}", path=name
            )
        if found >= 0 and (sec.addr + (found - sec.offset)) % 8:
            raise FatbinError(f"{sec.name}: misaligned fatbin header at {found:#x}", path=name)
        pos = nxt
    release(buf, swept, end)
    return regions


def _search_embedded(elf: ElfFile, sec: Section) -> list[Region]:
    """Find regions among other data: a candidate that does not parse is data."""
    buf, name = elf.buf, elf.name
    end = sec.offset + sec.size
    regions: list[Region] = []
    pos = swept = sec.offset
    while pos < end:
        if pos - swept > RELEASE_EVERY:
            release(buf, swept, pos)
            swept = pos
        found = buf.find(REGION_MAGIC_BYTES, pos, end)
        if found < 0:
            break
        vaddr = sec.addr + (found - sec.offset)
        region = None
        if vaddr % 8 == 0 and _region_header(buf, found, end) is not None:
            try:
                region = parse_region(buf, found, end, section=sec, vaddr=vaddr, name=name)
            except FatbinError:
                region = None
        if region is None:
            pos = found + 4
            continue
        regions.append(region)
        pos = region.end
    release(buf, swept, end)
    return regions


def candidate_sections(elf: ElfFile) -> list[Section]:
    """Sections that can hold device code the driver may load.

    The dedicated sections, plus every other allocated, file-backed,
    non-executable section (``.cask_resource``, ``.ldata``, ``.rodata``, ...).
    """
    out = []
    for s in elf.sections:
        if s.type != SHT.PROGBITS or not s.alloc or s.size == 0:
            continue
        if s.name in DEDICATED_SECTIONS or not (s.flags & SHF.EXECINSTR):
            out.append(s)
    # No linker writes two data sections over the same bytes; a file that does
    # would have every region found (and edited) twice.
    by_offset = sorted(out, key=lambda s: (s.offset, s.size))
    for a, b in itertools.pairwise(by_offset):
        if b.offset < a.offset + a.size:
            raise FatbinError(
                f"sections {a.name or a.index} and {b.name or b.index} overlap in the file "
                f"at {b.offset:#x}",
                path=elf.name,
            )
    return out


def _pointer_site(
    elf: ElfFile, vaddr: int, relocs: dict[int, Relocation], relative: int | None
) -> PointerSite:
    r = relocs.get(vaddr)
    if r is None:
        return PointerSite(vaddr, elf.read_u64_at_vaddr(vaddr), "absolute", -1)
    if r.table == "relr":
        return PointerSite(vaddr, elf.read_u64_at_vaddr(vaddr), "relr", -1)
    if r.type == relative and r.addend is not None:
        return PointerSite(vaddr, r.addend, "rela", r.entry_offset)
    raise FatbinError(
        f"fatbin wrapper pointer at {vaddr:#x} has an unexpected relocation type {r.type}",
        path=elf.name,
    )


def scan_wrappers(elf: ElfFile) -> list[Wrapper]:
    """The wrappers of ``.nvFatBinSegment`` with the relocations that fill them."""
    sec = elf.section_by_name(WRAPPER_SECTION)
    if sec is None or sec.size == 0 or sec.type == SHT.NOBITS:
        return []
    elf.check_range(sec.offset, sec.size, f"section {sec.name}")
    relocs = elf.relocations_in(sec.addr, sec.addr + sec.size)
    relative = RELATIVE_TYPES.get(elf.header.machine)  # type: ignore[call-overload]
    out = []
    for i in range(sec.size // WRAPPER_SIZE):
        off = sec.offset + i * WRAPPER_SIZE
        magic, version, _data, _second = _WRAPPER.unpack_from(elf.buf, off)
        if magic != WRAPPER_MAGIC:
            if magic == 0:
                continue
            raise FatbinError(f"{sec.name}: bad wrapper magic at {off:#x}", path=elf.name)
        vaddr = sec.addr + i * WRAPPER_SIZE
        data = _pointer_site(elf, vaddr + 8, relocs, relative)
        second = _pointer_site(elf, vaddr + 16, relocs, relative)
        out.append(Wrapper(vaddr, off, version, data, second if second.target else None))
    return out


def scan(elf: ElfFile) -> FatbinLayout:
    """Find every fatbin region in the library, and the wrappers of its fatbins."""
    layout = FatbinLayout()
    for sec in candidate_sections(elf):
        layout.regions.extend(scan_section(elf, sec))
    layout.regions.sort(key=lambda r: r.offset)
    _check_budget(elf, layout)
    layout.wrappers = scan_wrappers(elf)
    return layout


def decompression_budget(file_size: int) -> int:
    """The most payload bytes a library's elements may claim, decompressed, together."""
    return max(MIN_DECOMPRESSION_BUDGET, BUDGET_RATIO * file_size)


def _check_budget(elf: ElfFile, layout: FatbinLayout) -> None:
    """Every later decompression is checked against the size its header claims,
    so bounding the claims bounds all the work a library can cause."""
    claimed = sum(e.uncompressed_size or e.payload_size for _r, e in layout.elements)
    budget = decompression_budget(elf.size)
    if claimed > budget:
        raise FatbinError(
            f"its elements claim {claimed} bytes of device code, more than the "
            f"{budget} a file of its size may (corrupt or crafted)",
            path=elf.name,
        )


# -- payloads -------------------------------------------------------------


def _zstd_decompress(raw: bytes, want: int) -> bytearray:
    """Decompress ``raw`` (its first frame, as nvcc writes one): at most ``want`` bytes.

    Memory follows what the data really holds, not what a header claims: the
    output grows as it is read, in place (no second copy is made).
    """
    out = bytearray()
    reader = zstandard.ZstdDecompressor().stream_reader(io.BytesIO(raw))
    while len(out) < want:
        chunk = reader.read(min(want - len(out), 1 << 22))
        if not chunk:
            break
        out += chunk
    if reader.read(1):
        raise zstandard.ZstdError("decompresses to more than claimed")
    return out


def payload(
    buf: Buffer, el: Element, *, name: str, cap: int = MAX_UNCOMPRESSED
) -> bytes | bytearray:
    """The element's payload, decompressed, never larger than ``cap`` bytes."""
    where = f"fatbin element at {el.offset:#x} ({el.arch_name})"
    comp = el.compression
    if comp is Compression.NONE:
        if el.payload_size > cap:
            raise FatbinError(
                f"{where}: payload of {el.payload_size} bytes exceeds the cap", path=name
            )
        return bytes(buf[el.payload_offset : el.payload_offset + el.payload_size])
    want = el.uncompressed_size
    if want > cap:
        raise FatbinError(f"{where}: claims {want} uncompressed bytes, over the cap", path=name)
    if comp is Compression.LZ4 and want > LZ4_MAX_RATIO * el.compressed_size + 64:
        raise FatbinError(
            f"{where}: claims {want} bytes from {el.compressed_size} LZ4 bytes, "
            "beyond what LZ4 can encode",
            path=name,
        )
    if want > MAX_RATIO * el.compressed_size + (1 << 16):
        raise FatbinError(
            f"{where}: claims {want} bytes from {el.compressed_size} compressed bytes "
            "(corrupt or crafted)",
            path=name,
        )
    raw = bytes(buf[el.payload_offset : el.payload_offset + el.compressed_size])
    try:
        out: bytes | bytearray
        if comp is Compression.LZ4:
            out = bytes(lz4.block.decompress(raw, uncompressed_size=want))
        else:
            out = _zstd_decompress(raw, want)
    except FatbinError:
        raise
    except (lz4.block.LZ4BlockError, zstandard.ZstdError, ValueError, MemoryError) as exc:
        raise FatbinError(f"{where}: corrupt {comp.value} payload ({exc})", path=name) from None
    if len(out) != want:
        raise FatbinError(
            f"{where}: decompressed to {len(out)} bytes, header says {want}", path=name
        )
    return out
