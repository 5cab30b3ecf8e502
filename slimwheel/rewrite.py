"""From a plan to byte edits: which ranges of the library get new content.

Nothing is written here. :func:`edits_for` turns a :class:`~slimwheel.plan.Plan`
into an :class:`Edit`: same-length replacements of original file ranges, each
made of pieces (copy original bytes, literal bytes, zeros), plus the zero runs
that compaction may take out of the file. Applying it is ``layout.py``'s job.

* In ``.nv_fatbin`` / ``__nv_relfatbin`` every region a wrapper points at is
  packed towards the front of its section and the wrapper's pointer (its
  RELA addend, or the in-place value for DT_RELR) is patched. A region no
  wrapper points at keeps its address. The section ends after its last region.
* Elsewhere (``.cask_resource``, ``.ldata``, ...) a region's referrers are
  unknown: it keeps its address, its kept elements move to its front, its
  size field is lowered and the freed tail is zeroed.
"""

from __future__ import annotations

import enum
import struct
from collections.abc import Iterable
from dataclasses import dataclass, field

from .elf import SHT, ElfFile
from .fatbin import (
    DEDICATED_SECTIONS,
    REGION_HEADER_SIZE,
    REGION_MAGIC,
    FatbinLayout,
    Region,
    Wrapper,
)
from .plan import Plan, RegionPlan

_REGION_HEADER = struct.Struct("<IHHQ")
_I64 = struct.Struct("<q")
_U64 = struct.Struct("<Q")


class PieceKind(enum.Enum):
    COPY = "copy"
    DATA = "data"
    ZERO = "zero"


@dataclass(frozen=True, slots=True)
class Piece:
    kind: PieceKind
    length: int
    src: int = 0  # COPY: original file offset
    data: bytes = b""  # DATA

    @staticmethod
    def copy(src: int, length: int) -> Piece:
        return Piece(PieceKind.COPY, length, src=src)

    @staticmethod
    def literal(data: bytes) -> Piece:
        return Piece(PieceKind.DATA, len(data), data=data)

    @staticmethod
    def zeros(length: int) -> Piece:
        return Piece(PieceKind.ZERO, length)


@dataclass(frozen=True, slots=True)
class Replacement:
    """New content for the original file range [offset, offset + length)."""

    offset: int
    length: int
    pieces: tuple[Piece, ...]

    @property
    def end(self) -> int:
        return self.offset + self.length


@dataclass(frozen=True, slots=True)
class ZeroRun:
    """A range of the output (at original offsets) known to be zero."""

    offset: int
    end: int
    section: int  # index of the section it lies in


@dataclass(slots=True)
class Edit:
    replacements: list[Replacement] = field(default_factory=list)
    zero_runs: list[ZeroRun] = field(default_factory=list)
    section_sizes: dict[int, int] = field(default_factory=dict)  # index -> new sh_size
    moved: dict[int, int] = field(default_factory=dict)  # region vaddr: old -> new

    def sorted(self) -> Edit:
        self.replacements.sort(key=lambda r: r.offset)
        self.zero_runs.sort(key=lambda z: z.offset)
        for a, b in zip(self.replacements, self.replacements[1:], strict=False):
            if a.end > b.offset:
                raise AssertionError(f"overlapping edits at {b.offset:#x}")
        return self


#: Zero bytes between two regions that a removed region takes with it.
_MAX_PADDING = 64


def _region_pieces(rp: RegionPlan) -> list[Piece]:
    kept = rp.kept
    size = sum(e.size for e in kept)
    pieces = [Piece.literal(_REGION_HEADER.pack(REGION_MAGIC, 1, REGION_HEADER_SIZE, size))]
    pieces += _coalesce(Piece.copy(e.offset, e.size) for e in kept)
    return pieces


def _coalesce(pieces: Iterable[Piece]) -> list[Piece]:
    """Merge copies of adjacent original ranges into one."""
    out: list[Piece] = []
    for p in pieces:
        last = out[-1] if out else None
        if (
            last is not None
            and last.kind is PieceKind.COPY
            and p.kind is PieceKind.COPY
            and last.src + last.length == p.src
        ):
            out[-1] = Piece.copy(last.src, last.length + p.length)
        else:
            out.append(p)
    return out


def _changes(rp: RegionPlan) -> bool:
    return any(not d.keep for d in rp.decisions)


def repackable(region: Region) -> bool:
    """Elements can move only when each keeps 8-byte alignment (sizes multiple of 8)."""
    return all(e.size % 8 == 0 for e in region.elements)


def _pointer_patch(elf: ElfFile, w: Wrapper, new_target: int) -> Replacement:
    site = w.data
    if site.how == "rela":
        # Elf64_Rela: r_offset, r_info, r_addend (signed) at +16.
        return Replacement(site.entry_offset + 16, 8, (Piece.literal(_I64.pack(new_target)),))
    # DT_RELR and absolute pointers hold the value in place.
    off = elf.vaddr_to_offset(site.vaddr, 8)
    return Replacement(off, 8, (Piece.literal(_U64.pack(new_target)),))


_SYM = struct.Struct("<IBBHQQ")


def _symbol_patches(elf: ElfFile, moved: dict[int, int], sections: set[int]) -> list[Replacement]:
    """Keep ``.symtab`` truthful: symbols at a moved region's start (nvcc's
    local ``fatbinData``) follow it. Non-allocated, so the loaded image is
    unaffected; debuggers and symbolizers see the right address."""
    out = []
    for symtab in elf.sections:
        if symtab.type != SHT.SYMTAB or symtab.entsize != _SYM.size:
            continue
        elf.check_range(symtab.offset, symtab.size, f"{symtab.name} symbol table")
        view = memoryview(elf.buf)[symtab.offset : symtab.offset + symtab.size]
        try:
            for i, (_n, _info, _other, shndx, value, _size) in enumerate(_SYM.iter_unpack(view)):
                if shndx in sections and value in moved:
                    at = symtab.offset + i * _SYM.size + 8
                    out.append(Replacement(at, 8, (Piece.literal(_U64.pack(moved[value])),)))
        finally:
            view.release()
    return out


def edits_for(elf: ElfFile, layout: FatbinLayout, plan: Plan) -> Edit:
    """The byte edits that carry out ``plan`` on ``elf``."""
    edit = Edit()
    by_region = {rp.region.offset: rp for rp in plan.regions}
    referenced: dict[int, list[Wrapper]] = {}
    for w in layout.wrappers:
        referenced.setdefault(w.data.target, []).append(w)
    for sec in elf.sections:
        if sec.name not in DEDICATED_SECTIONS:
            continue
        regions = [r for r in layout.regions if r.section_index == sec.index]
        if not regions:
            continue
        if not any(_changes(by_region[r.offset]) for r in regions):
            continue
        cursor = sec.offset + (-sec.addr % 8)
        pieces = [Piece.copy(sec.offset, cursor - sec.offset)] if cursor > sec.offset else []
        for r in regions:
            rp = by_region[r.offset]
            movable = r.vaddr in referenced and repackable(r)
            # Pinned regions (no wrapper, or elements that cannot move) keep
            # their place; everything before them packs up to it.
            start = cursor if movable else r.offset
            if start > cursor:
                pieces.append(Piece.zeros(start - cursor))
                edit.zero_runs.append(ZeroRun(cursor, start, sec.index))
            if repackable(r):
                body = _region_pieces(rp)
                new_size = REGION_HEADER_SIZE + sum(e.size for e in rp.kept)
            else:
                body = [Piece.copy(r.offset, r.total_size)]
                new_size = r.total_size
            pieces += body
            new_vaddr = sec.addr + (start - sec.offset)
            if new_vaddr != r.vaddr:
                edit.moved[r.vaddr] = new_vaddr
                for w in referenced[r.vaddr]:
                    edit.replacements.append(_pointer_patch(elf, w, new_vaddr))
            cursor = start + new_size
        end = sec.offset + sec.size
        if cursor < end:
            pieces.append(Piece.zeros(end - cursor))
            edit.zero_runs.append(ZeroRun(cursor, end, sec.index))
        edit.replacements.append(Replacement(sec.offset, sec.size, tuple(_coalesce(pieces))))
        edit.section_sizes[sec.index] = cursor - sec.offset

    if edit.moved:
        dedicated = {s.index for s in elf.sections if s.name in DEDICATED_SECTIONS}
        edit.replacements += _symbol_patches(elf, edit.moved, dedicated)

    ordered = sorted(plan.regions, key=lambda rp: rp.region.offset)
    for i, rp in enumerate(ordered):
        r = rp.region
        if r.section in DEDICATED_SECTIONS or not _changes(rp):
            continue
        if rp.vanishes:
            # Nothing of it stays: the whole region, header included, becomes
            # zeros, with the zero padding up to the next region, so runs of
            # removed regions merge into holes that leave the file.
            end = r.end
            after = ordered[i + 1].region if i + 1 < len(ordered) else None
            if (
                after is not None
                and after.section_index == r.section_index
                and 0 < after.offset - r.end <= _MAX_PADDING
                and not any(elf.buf[r.end : after.offset])
            ):
                end = after.offset
            edit.replacements.append(
                Replacement(r.offset, end - r.offset, (Piece.zeros(end - r.offset),))
            )
            edit.zero_runs.append(ZeroRun(r.offset, end, r.section_index))
            continue
        if not repackable(r):
            continue
        body = _region_pieces(rp)
        used = sum(p.length for p in body)
        edit.replacements.append(
            Replacement(r.offset, r.total_size, (*body, Piece.zeros(r.total_size - used)))
        )
        edit.zero_runs.append(ZeroRun(r.offset + used, r.end, r.section_index))
    return edit.sorted()
