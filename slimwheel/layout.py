"""The output file's layout: apply edits, and take zero runs out of the file.

One general mechanism (``shared/design/compaction.md``): a page-aligned run of
zeros inside a PT_LOAD leaves the file while every other byte keeps its
virtual address. The segment is split in two: the first part's ``p_memsz``
covers the run (the loader zero-fills it, read-only segments included), the
second starts after the run at a file offset shifted down by the run's
length. Lengths are multiples of the segments' alignment, so offsets stay
congruent to addresses. A section with a run inside is split into a
PROGBITS piece, a NOBITS piece (the run) and a PROGBITS piece, the new pieces
appended to the section header table so no section index changes. The new
program header table (one more PT_LOAD per run) and section header table go
to the end of the file; glibc copies a program header table that lies
outside every PT_LOAD. From 0xFF00 sections on (or when the input did so),
the new table uses the gABI's extended numbering: e_shnum 0 and the count in
section 0's sh_size; e_shstrndx (and section 0's sh_link) stay the input's.

The result is a list of output pieces (copy original bytes, literal bytes,
zeros) that ``write.py`` streams to disk.
"""

from __future__ import annotations

import bisect
import struct
from collections.abc import Sequence
from dataclasses import dataclass, field, replace

from .elf import PT, SHN_LORESERVE, SHT, ElfFile, EMachine, Section, Segment
from .rewrite import Edit, Piece, PieceKind, Replacement

#: Zero runs shorter than this stay in the file (each costs one PT_LOAD).
DEFAULT_MIN_HOLE = 64 << 10
#: The smallest run of removed host code taken out of the file (``--cpu``): functions
#: that ran are scattered through a library's code, and the runs between them are
#: small (bench/bench_host_holes.py).
DEFAULT_HOST_MIN_HOLE = 16 << 10

SHF_INFO_LINK = 0x40  # sh_info holds a section index
ET_EXEC = 2

_EHDR_TAIL = struct.Struct("<QQIHHHHHH")  # e_phoff .. e_shstrndx, at offset 32
_SHDR = struct.Struct("<IIQQQQIIQQ")
_PHDR = struct.Struct("<IIQQQQQQ")


@dataclass(frozen=True, slots=True)
class Hole:
    """Original file range [offset, end) that leaves the file."""

    offset: int
    end: int
    section: int
    strip: bool = False  # a stripped section's bytes (outside every PT_LOAD), not zeros
    unmapped: bool = False  # removed host code: no PT_LOAD maps it any more (not zero-filled)

    @property
    def length(self) -> int:
        return self.end - self.offset


@dataclass(slots=True)
class OutputLayout:
    pieces: list[Piece]
    size: int
    holes: list[Hole]
    segments: list[Segment]
    sections: list[Section]
    compacted: bool
    note: str = ""  # why compaction was not done, when it was asked for
    stripped: list[Hole] = field(default_factory=list)  # sections --strip took out

    @property
    def load_count(self) -> int:
        return sum(1 for s in self.segments if s.type == PT.LOAD)


class _OffsetMap:
    """Original file offset -> output offset, given the holes."""

    def __init__(self, holes: list[Hole]) -> None:
        self.starts = [h.offset for h in holes]
        self.removed = []  # removed bytes before and including hole i
        total = 0
        for h in holes:
            total += h.length
            self.removed.append(total)
        self.holes = holes

    def __call__(self, offset: int) -> int:
        i = bisect.bisect_right(self.starts, offset) - 1
        if i < 0:
            return offset
        h = self.holes[i]
        before = self.removed[i] - h.length
        if offset < h.end:  # inside a hole: where the hole would have started
            return h.offset - before
        return offset - self.removed[i]


#: Page sizes a hole must respect: x86_64 Linux uses 4 KiB pages; aarch64
#: kernels may use 64 KiB pages, so its holes keep 64 KiB granularity.
PAGE_GRANULE = {EMachine.X86_64: 4096, EMachine.AARCH64: 65536}


def hole_granule(elf: ElfFile) -> int:
    """Granularity of holes: the largest page size the library may be loaded with."""
    granule = PAGE_GRANULE.get(elf.header.machine)  # type: ignore[call-overload]
    if granule is None:
        return max([4096, *(p.align for p in elf.loads)])
    return int(granule)


def find_holes(elf: ElfFile, edit: Edit, *, min_hole: int) -> list[Hole]:
    """Zero runs of the edit, aligned inward, inside one PT_LOAD's file bytes."""
    align = hole_granule(elf)
    runs: list[tuple[int, int, int]] = []
    for z in edit.zero_runs:  # merge touching runs of one section
        if runs and runs[-1][1] == z.offset and runs[-1][2] == z.section:
            runs[-1] = (runs[-1][0], z.end, z.section)
        else:
            runs.append((z.offset, z.end, z.section))
    holes = []
    for start, end, section in runs:
        a = -(-start // align) * align
        b = end // align * align
        if b - a < max(min_hole, align):
            continue
        for p in elf.loads:
            if p.offset < a and b <= p.offset + p.filesz:
                holes.append(Hole(a, b, section))
                break
    return holes


def _lower_align(p: Segment, granule: int) -> Segment:
    """Keep offset == vaddr (mod p_align) true after a shift by a multiple of ``granule``.

    Linkers align segments to 2 MiB (max-page-size) for huge pages; the loader
    only needs page congruence. A segment shifted by a page multiple gets the
    page granule as its alignment, which the ELF rule then still holds for.
    """
    if p.align > granule and (p.offset - p.vaddr) % p.align:
        return replace(p, align=granule)
    return p


def _split_segments(elf: ElfFile, holes: list[Hole], omap: _OffsetMap) -> list[Segment]:
    granule = hole_granule(elf)
    return [_lower_align(p, granule) if p.type == PT.LOAD else p for p in _split(elf, holes, omap)]


def _split(elf: ElfFile, holes: list[Hole], omap: _OffsetMap) -> list[Segment]:
    out: list[Segment] = []
    for p in elf.segments:
        if p.type != PT.LOAD:
            out.append(replace(p, offset=omap(p.offset)))
            continue
        inside = [h for h in holes if p.offset < h.offset and h.end <= p.offset + p.filesz]
        start = p.offset  # original offset where the current piece begins
        for h in inside:
            vstart = p.vaddr + (start - p.offset)
            # A zero run stays mapped (memsz covers it, the loader zero-fills it);
            # removed host code is mapped by nothing (the loader leaves PROT_NONE).
            memsz = h.offset - start if h.unmapped else h.end - start
            if memsz:
                out.append(
                    replace(
                        p,
                        offset=omap(start),
                        vaddr=vstart,
                        paddr=p.paddr + (start - p.offset),
                        filesz=h.offset - start,
                        memsz=memsz,
                    )
                )
            start = h.end
        tail = start - p.offset
        out.append(
            replace(
                p,
                offset=omap(start),
                vaddr=p.vaddr + tail,
                paddr=p.paddr + tail,
                filesz=p.filesz - tail,
                memsz=p.memsz - tail,
            )
        )
    return out


def _split_sections(elf: ElfFile, edit: Edit, holes: list[Hole], omap: _OffsetMap) -> list[Section]:
    """Sections with holes inside become pieces: PROGBITS for what stays, NOBITS for
    each hole, alternating from a data piece (empty when a hole starts at the
    section's first byte, or ends at its last). The first piece keeps the
    section's index; the others are appended."""
    base: list[Section] = []
    extra: list[Section] = []
    for s in elf.sections:
        size = edit.section_sizes.get(s.index, s.size)
        s = replace(s, size=size)
        if s.type == SHT.NULL:
            base.append(s)
            continue
        inside = [
            h
            for h in holes
            if h.section == s.index and s.offset <= h.offset and h.end <= s.offset + size
        ]
        if not inside or s.type == SHT.NOBITS:
            base.append(replace(s, offset=omap(s.offset)))
            continue
        start = s.offset
        first = True
        for h in [*inside, None]:
            stop = h.offset if h is not None else s.offset + size
            piece = replace(
                s,
                offset=omap(start),
                addr=s.addr + (start - s.offset),
                size=stop - start,
            )
            if first:
                base.append(piece)
                first = False
            else:
                extra.append(replace(piece, index=len(elf.sections) + len(extra)))
            if h is not None:
                extra.append(
                    replace(
                        s,
                        index=len(elf.sections) + len(extra),
                        type=SHT.NOBITS,
                        offset=omap(h.offset),
                        addr=s.addr + (h.offset - s.offset),
                        size=h.length,
                    )
                )
                start = h.end
    return base + extra


def _body_pieces(size: int, replacements: list[Replacement]) -> list[tuple[int, Piece]]:
    """Cover [0, size) with (original offset, piece): replacements and copies."""
    out: list[tuple[int, Piece]] = []
    pos = 0
    for r in replacements:
        if r.offset > pos:
            out.append((pos, Piece.copy(pos, r.offset - pos)))
        at = r.offset
        for p in r.pieces:
            if p.length:
                out.append((at, p))
            at += p.length
        if at != r.end:
            raise AssertionError(f"replacement at {r.offset:#x} is not length-preserving")
        pos = r.end
    if pos < size:
        out.append((pos, Piece.copy(pos, size - pos)))
    return out


def _cut_holes(body: list[tuple[int, Piece]], holes: list[Hole]) -> list[Piece]:
    out: list[Piece] = []
    hi = 0
    for at, p in body:
        end = at + p.length
        cur = at
        while hi < len(holes) and holes[hi].end <= cur:
            hi += 1
        j = hi
        while cur < end:
            h = holes[j] if j < len(holes) else None
            if h is None or h.offset >= end:
                out.append(_slice(p, cur - at, end - cur))
                break
            if p.kind is not PieceKind.ZERO and not (h.strip or h.unmapped):
                raise AssertionError(f"hole at {h.offset:#x} covers non-zero output")
            if h.offset > cur:
                out.append(_slice(p, cur - at, h.offset - cur))
            cur = min(end, h.end)
            if h.end <= end:
                j += 1
    return out


def _slice(p: Piece, start: int, length: int) -> Piece:
    if p.kind is PieceKind.COPY:
        return Piece.copy(p.src + start, length)
    if p.kind is PieceKind.DATA:
        return Piece.literal(p.data[start : start + length])
    return Piece.zeros(length)


#: What ``--strip`` takes out: sections no process maps. Symbols of ``.dynsym``
#: (what the dynamic loader and dladdr use) and everything allocated stay.
STRIP_PREFIXES = (".debug_", ".zdebug_", ".rela.debug_", ".rel.debug_")


def is_executable(elf: ElfFile) -> bool:
    """A program rather than a library: ET_EXEC, or a PIE (it names an interpreter)."""
    return elf.header.type == ET_EXEC or any(p.type == PT.INTERP for p in elf.segments)


def strippable_sections(elf: ElfFile) -> list[Section]:
    """DWARF and the static symbol table (``.symtab`` and its ``.strtab``) of a
    library (not of an executable): not allocated, outside every segment's file
    bytes, and named by no section kept."""
    if is_executable(elf):
        return []
    shstrndx = elf.section_numbering[1] if elf.sections else 0
    loads = [(p.offset, p.offset + p.filesz) for p in elf.loads]
    picked = {
        s.index: s
        for s in elf.sections
        if not s.alloc
        and s.type not in (SHT.NULL, SHT.NOBITS)
        and s.size
        and (s.name.startswith(STRIP_PREFIXES) or s.type == SHT.SYMTAB)
    }
    for s in list(picked.values()):
        if s.type == SHT.SYMTAB and 0 < s.link < len(elf.sections):
            strtab = elf.sections[s.link]
            if strtab.type == SHT.STRTAB and not strtab.alloc and strtab.index != shstrndx:
                picked[strtab.index] = strtab
    changed = True
    while changed:  # what a kept section links to stays (and so on)
        changed = False
        for s in elf.sections:
            if s.index in picked:
                continue
            for ref in (s.link, s.info if s.flags & SHF_INFO_LINK else 0):
                if ref in picked:
                    del picked[ref]
                    changed = True
    spans = [*loads, *((p.offset, p.offset + p.filesz) for p in elf.segments if p.filesz)]
    return [
        s
        for s in sorted(picked.values(), key=lambda s: s.offset)
        if s.index != shstrndx
        and s.offset + s.size <= elf.size
        and not any(a < s.offset + s.size and s.offset < b for a, b in spans)
    ]


def strip_cuts(elf: ElfFile, sections: list[Section]) -> list[Hole]:
    """The file ranges ``--strip`` takes out, for these (strippable) sections.

    Sections next to each other form one run. A run behind which a segment
    still lies (patchelf appends segments after the symbol table) leaves
    only a whole number of pages, so every later segment moves by pages and
    keeps its offset congruent to its address; the few bytes left over stay
    in the file, named by no section. A run after every segment leaves whole.
    """
    granule = hole_granule(elf)
    kept = sorted(
        (x.offset, x.offset + x.file_size)
        for x in elf.sections
        if x.file_size and x.type != SHT.NULL and x.index not in {s.index for s in sections}
    )
    seg_starts = [p.offset for p in elf.segments if p.filesz]
    runs: list[tuple[int, int, int]] = []
    for s in sections:
        if runs:
            a, b, idx = runs[-1]
            between = any(b <= k0 < s.offset for k0, _k1 in kept)
            if not between and s.offset - b < granule:
                runs[-1] = (a, max(b, s.offset + s.size), idx)
                continue
        runs.append((s.offset, s.offset + s.size, s.index))
    cuts = []
    for a, b, idx in runs:
        if any(start >= b for start in seg_starts):
            b = a + (b - a) // granule * granule
        if b > a:
            cuts.append(Hole(a, b, idx, strip=True))
    return cuts


def plan_output(
    elf: ElfFile,
    edit: Edit,
    *,
    compact: bool = True,
    min_hole: int = DEFAULT_MIN_HOLE,
    strip: bool = False,
    host: Sequence[Hole] = (),
    extra_section: tuple[str, bytes] | None = None,
) -> OutputLayout:
    """Where every output byte comes from.

    ``host`` are ranges of removed host code (``unmapped`` holes, planned by
    ``hostcode.py``); ``extra_section`` a non-allocated section (name, bytes)
    added at the end of the file, its name appended to a copy of the section
    name table.
    """
    note = ""
    holes: list[Hole] = []
    executable = is_executable(elf)
    if host and (executable or not elf.sections):
        raise AssertionError("host code is removed from libraries with section headers only")
    if compact:
        if not elf.sections:
            note = "has no section headers; zeroed, not compacted"
        elif executable:
            # The kernel, not glibc, finds an executable's program headers (AT_PHDR);
            # older kernels take them at load address + e_phoff: they cannot move.
            note = "an executable: its program headers cannot move; zeroed, not compacted"
        else:
            holes = find_holes(elf, edit, min_hole=min_hole)
    compacted = compact and not note
    device_holes = holes
    holes = sorted([*holes, *host], key=lambda x: x.offset)
    stripped = strippable_sections(elf) if strip and not executable else []
    cuts = strip_cuts(elf, stripped)
    removed = sorted([*holes, *cuts], key=lambda x: x.offset)
    omap = _OffsetMap(removed)
    segments = _split_segments(elf, holes, omap)
    if (compacted and holes) or cuts or host or extra_section:
        sections = _split_sections(elf, edit, holes, omap)
        gone = {x.index for x in stripped}
        sections = [_null_section(s) if s.index in gone else s for s in sections]
    else:
        sections = list(elf.sections)
    replacements = list(edit.replacements)
    h = elf.header
    tables: list[Piece] = []
    phoff, shoff = h.phoff, h.shoff
    # Without a hole nothing moves: the tables stay where they are (a packed
    # section keeps its old size, zero tail included).
    rewrite_tables = (compacted and bool(holes)) or bool(cuts) or bool(host) or bool(extra_section)
    if rewrite_tables:
        # PT_PHDR names the loaded copy of the program headers, which stays as
        # it was (it is part of the first segment's bytes) and no longer
        # describes the file. Without PT_PHDR, and with the new table outside
        # every PT_LOAD, glibc copies the table from the file (dl-load.c:
        # "The program header is not contained in any of the segments").
        segments = [p for p in segments if p.type != PT.PHDR]
    body_end = elf.size
    if rewrite_tables and h.shoff and h.shoff + len(elf.sections) * h.shentsize == elf.size:
        body_end = h.shoff  # the old section header table was last: drop it
    body_size = body_end - sum(x.length for x in removed)
    if rewrite_tables:
        added: list[Piece] = []
        if extra_section is not None:
            added, sections, body_size = _add_section(elf, sections, body_size, *extra_section)
        # New tables at the end of the file, 8-byte aligned.
        pad = -body_size % 8
        phoff = body_size + pad
        shoff = phoff + len(segments) * _PHDR.size
        shnum, sections = _number_sections(elf, sections)
        tables = [
            *added,
            Piece.zeros(pad),
            Piece.literal(b"".join(_PHDR.pack(*_phdr_fields(p)) for p in segments)),
            Piece.literal(b"".join(_SHDR.pack(*_shdr_fields(s)) for s in sections)),
        ]
        header = _EHDR_TAIL.pack(
            phoff,
            shoff,
            h.flags,
            h.ehsize,
            h.phentsize,
            len(segments),
            h.shentsize,
            shnum,
            # Indices do not change (new pieces are appended), so the input's
            # e_shstrndx stays right: SHN_XINDEX with section 0's sh_link, or direct.
            h.shstrndx,
        )
        replacements.append(Replacement(32, len(header), (Piece.literal(header),)))
        replacements.sort(key=lambda r: r.offset)
    body = _body_pieces(body_end, replacements)
    pieces = [p for p in _cut_holes(body, removed) + tables if p.length]
    size = sum(p.length for p in pieces)
    return OutputLayout(pieces, size, device_holes, segments, sections, compacted, note, cuts)


def _add_section(
    elf: ElfFile, sections: list[Section], at: int, name: str, data: bytes
) -> tuple[list[Piece], list[Section], int]:
    """Append a non-allocated PROGBITS section at output offset ``at``; its name goes
    into a copy of the section name table (appended too; the old one is left unnamed).

    Returns the pieces to append, the sections, and the new end of the body.
    """
    shstrndx = elf.section_numbering[1]
    if not 0 < shstrndx < len(sections):
        raise AssertionError("no section name table to name the new section in")
    old = sections[shstrndx]
    original = elf.sections[shstrndx]  # ``old`` has output offsets; read the input's bytes
    names = elf.read(original.offset, original.size, "section name table")
    name_at = len(names)
    new_names = names + name.encode() + b"\0"
    pieces = [Piece.literal(new_names)]
    names_at = at
    at += len(new_names)
    pad = -at % 8
    pieces += [Piece.zeros(pad), Piece.literal(data)]
    data_at = at + pad
    sections = list(sections)
    sections[shstrndx] = replace(old, offset=names_at, size=len(new_names))
    sections.append(
        Section(
            index=len(sections),
            name=name,
            name_offset=name_at,
            type=SHT.PROGBITS,
            flags=0,
            addr=0,
            offset=data_at,
            size=len(data),
            link=0,
            info=0,
            addralign=8,
            entsize=0,
        )
    )
    return pieces, sections, data_at + len(data)


def _null_section(s: Section) -> Section:
    """A stripped section's header: SHT_NULL, nameless, empty (indices stay as they were)."""
    return replace(
        s,
        name="",
        name_offset=0,
        type=SHT.NULL,
        flags=0,
        addr=0,
        offset=0,
        size=0,
        link=0,
        info=0,
        addralign=0,
        entsize=0,
    )


def _number_sections(elf: ElfFile, sections: list[Section]) -> tuple[int, list[Section]]:
    """e_shnum for ``sections``, and the sections with section 0 holding the count if needed.

    Extended numbering (gABI): from SHN_LORESERVE sections on, e_shnum is 0
    and section 0's sh_size holds the count. Used when the count needs it,
    and kept when the input used it (its e_shnum was 0).
    """
    if len(sections) < SHN_LORESERVE and elf.header.shnum != 0:
        return len(sections), sections
    return 0, [replace(sections[0], size=len(sections)), *sections[1:]]


def _phdr_fields(p: Segment) -> tuple[int, ...]:
    return (p.type, p.flags, p.offset, p.vaddr, p.paddr, p.filesz, p.memsz, p.align)


def _shdr_fields(s: Section) -> tuple[int, ...]:
    return (
        s.name_offset,
        s.type,
        s.flags,
        s.addr,
        s.offset,
        s.size,
        s.link,
        s.info,
        s.addralign,
        s.entsize,
    )
