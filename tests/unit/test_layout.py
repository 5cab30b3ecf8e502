"""The layout helpers against brute-force models (hypothesis), and extended section numbering.

Each model works byte by byte (or page by page) on small inputs, where the
helper works with interval arithmetic; the ELF files are real headers built
with struct (tests/elf_bytes.py).
"""

from __future__ import annotations

import io
import itertools
import subprocess
from dataclasses import replace
from pathlib import Path

import pytest
from elftools.elf.elffile import ELFFile
from hypothesis import example, given, settings
from hypothesis import strategies as st

from slimwheel.elf import PT, SHT, ElfFile, Section, Segment
from slimwheel.layout import (
    Hole,
    _body_pieces,
    _cut_holes,
    _OffsetMap,
    _split,
    _split_sections,
    _split_segments,
    find_holes,
    plan_output,
)
from slimwheel.rewrite import Edit, Piece, PieceKind, Replacement, ZeroRun
from slimwheel.verify import VerifyReport, check_structure
from tests.elf_bytes import EM_AARCH64, EM_X86_64, SHN_XINDEX, Sec, Seg, elf_bytes, phdrs_end

BUDGET = settings(max_examples=200, deadline=None)

PAGE = 4096


# -- models and strategies ----------------------------------------------


def removed_before(holes: list[Hole], offset: int) -> int:
    """Bytes of the holes that lie before ``offset``, counted one by one."""
    return sum(1 for h in holes for b in range(h.offset, h.end) if b < offset)


def model_map(holes: list[Hole], offset: int) -> int:
    """Where an original offset lands: after the bytes kept before it (a byte
    inside a hole lands where the hole starts)."""
    return offset - removed_before(holes, offset)


def in_hole(holes: list[Hole], offset: int) -> bool:
    return any(h.offset <= offset < h.end for h in holes)


@st.composite
def spans(draw: st.DrawFn, lo: int, hi: int, *, most: int = 6) -> list[tuple[int, int]]:
    """Disjoint non-empty ranges [a, b) within [lo, hi), sorted; neighbours may touch."""
    if hi <= lo:
        return []
    points = sorted(draw(st.lists(st.integers(lo, hi), max_size=2 * most)))
    return [(a, b) for a, b in zip(points[::2], points[1::2], strict=False) if b > a]


@st.composite
def sorted_holes(draw: st.DrawFn, *, lo: int = 0, hi: int = 400, section: int = 1) -> list[Hole]:
    return [Hole(a, b, section) for a, b in draw(spans(lo, hi))]


def materialize(pieces: list[Piece], original: bytes) -> bytes:
    out = bytearray()
    for p in pieces:
        if p.kind is PieceKind.COPY:
            chunk = original[p.src : p.src + p.length]
            assert len(chunk) == p.length, "copy beyond the original"
            out += chunk
        elif p.kind is PieceKind.DATA:
            assert len(p.data) == p.length
            out += p.data
        else:
            out += bytes(p.length)
    return bytes(out)


@st.composite
def piece(draw: st.DrawFn, n: int, size: int) -> Piece:
    """A piece of ``n`` bytes of any kind (copies read [0, size))."""
    kind = draw(st.sampled_from(list(PieceKind)))
    if kind is PieceKind.COPY and n <= size:
        return Piece.copy(draw(st.integers(0, size - n)), n)
    if kind is PieceKind.DATA:
        return Piece.literal(draw(st.binary(min_size=n, max_size=n)))
    return Piece.zeros(n)


@st.composite
def pieces_of(draw: st.DrawFn, length: int, size: int) -> list[Piece]:
    """Pieces totalling ``length`` bytes, zero-length ones included."""
    cuts = sorted(draw(st.lists(st.integers(0, length), max_size=5)))
    bounds = [0, *cuts, length]
    return [draw(piece(b - a, size)) for a, b in itertools.pairwise(bounds)]


# -- _OffsetMap ---------------------------------------------------------


@BUDGET
@given(holes=sorted_holes(), probes=st.lists(st.integers(0, 450), max_size=40))
def test_offset_map_counts_removed_bytes(holes: list[Hole], probes: list[int]) -> None:
    omap = _OffsetMap(holes)
    edges = [x for h in holes for x in (h.offset - 1, h.offset, h.end - 1, h.end)]
    for offset in sorted({*probes, *(e for e in edges if e >= 0)}):
        assert omap(offset) == model_map(holes, offset), offset
        if in_hole(holes, offset):
            hole = next(h for h in holes if h.offset <= offset < h.end)
            assert omap(offset) == omap(hole.offset)


@BUDGET
@given(holes=sorted_holes())
def test_offset_map_keeps_order_of_kept_bytes(holes: list[Hole]) -> None:
    """Kept bytes land on distinct, increasing, contiguous output offsets."""
    omap = _OffsetMap(holes)
    kept = [o for o in range(0, 420) if not in_hole(holes, o)]
    assert [omap(o) for o in kept] == list(range(len(kept)))


# -- find_holes ---------------------------------------------------------

_GRANULE = {EM_X86_64: PAGE, EM_AARCH64: 0x10000}
_OTHER_MACHINE = 0x28  # EM_ARM: no known page size, the largest p_align (at least 4 KiB) rules


@st.composite
def hole_inputs(draw: st.DrawFn) -> tuple[int, list[Seg], list[ZeroRun], int]:
    """PT_LOADs and zero runs in and around them on a grid of eighth pages, give
    or take a byte: runs start and end on pages, inside them and a byte off."""
    machine = draw(st.sampled_from([EM_X86_64, EM_AARCH64, _OTHER_MACHINE]))
    if machine == _OTHER_MACHINE:  # the largest p_align (at least 4 KiB) is the page
        top = draw(st.sampled_from([1, PAGE, 0x4000, 0x10000]))
        aligns = [a for a in (1, PAGE, 0x4000, 0x10000) if a <= top]
        page = max(PAGE, top)
    else:
        aligns = [PAGE, 0x10000, 0x200000]  # p_align never changes the granule here
        page = _GRANULE[machine]
    unit = page // 8

    def jitter() -> int:
        return draw(st.sampled_from([0, 0, 0, 1, -1]))

    segs = []
    pos = draw(st.integers(1, 16)) * unit
    for i in range(draw(st.integers(1, 3))):
        if draw(st.booleans()):
            pos += -pos % page  # a PT_LOAD that starts a page: no hole at its first byte
        at = max(1, pos + jitter())
        size = draw(st.integers(1, 48)) * unit + jitter()
        align = aligns[-1] if i == 0 else draw(st.sampled_from(aligns))
        segs.append(Seg(PT.LOAD, at, at + 0x10000, size, size, align))
        pos = at + size + draw(st.integers(0, 16)) * unit
    if draw(st.booleans()):  # other segment types never host holes
        segs.append(Seg(PT.NOTE, 0, 0, pos, pos, 8))
    runs: list[ZeroRun] = []
    for p in [q for q in segs if q.type == PT.LOAD]:
        at = p.offset // unit - 2
        for _ in range(draw(st.integers(0, 3))):
            a = at + draw(st.sampled_from([0, 0, 1, 2, 3, 8]))
            b = a + draw(st.integers(1, 40))
            start = max(a * unit + jitter(), runs[-1].end if runs else 0)
            if runs and a == at:
                start = runs[-1].end  # touching runs: of one section, they are one run
            end = max(start + 1, b * unit + jitter())
            runs.append(ZeroRun(start, end, draw(st.integers(1, 2))))
            at = b
    min_hole = draw(st.sampled_from([0, PAGE, page, 2 * page + 1, 3 * page]))
    return machine, segs, runs, min_hole


def model_holes(machine: int, segs: list[Seg], runs: list[ZeroRun], min_hole: int) -> list[Hole]:
    """Page by page: a hole is a maximal row of whole pages inside one zero run
    (touching runs of one section are one run), inside one PT_LOAD's file bytes
    and not at its first byte, at least ``max(min_hole, page)`` long."""
    loads = [s for s in segs if s.type == PT.LOAD]
    page = _GRANULE.get(machine) or max([PAGE, *(s.align for s in loads)])
    groups: list[list[int]] = []  # [start, end, section]
    for z in runs:
        if groups and groups[-1][1] == z.offset and groups[-1][2] == z.section:
            groups[-1][1] = z.end
        else:
            groups.append([z.offset, z.end, z.section])
    end = max([g[1] for g in groups], default=0)
    holes: list[Hole] = []
    for start, stop, section in groups:
        pages = [p for p in range(0, end, page) if start <= p and p + page <= stop]
        if not pages:
            continue
        a, b = pages[0], pages[-1] + page
        if b - a < max(min_hole, page):
            continue
        if any(s.offset < a and b <= s.offset + s.filesz for s in loads):
            holes.append(Hole(a, b, section))
    return holes


_LOAD = Seg(PT.LOAD, 0x1000, 0x11000, 0xF000, 0xF000)


@BUDGET
@given(hole_inputs())
# Touching runs across a page boundary: one run when of one section, two otherwise.
@example((EM_X86_64, [_LOAD], [ZeroRun(0x1800, 0x2800, 1), ZeroRun(0x2800, 0x4000, 1)], 0))
@example((EM_X86_64, [_LOAD], [ZeroRun(0x1800, 0x2800, 1), ZeroRun(0x2800, 0x4000, 2)], 0))
def test_find_holes_matches_page_model(case: tuple[int, list[Seg], list[ZeroRun], int]) -> None:
    machine, segs, runs, min_hole = case
    elf = ElfFile(elf_bytes(segs, machine=machine))
    got = find_holes(elf, Edit(zero_runs=runs), min_hole=min_hole)
    assert got == model_holes(machine, segs, runs, min_hole)


# -- _body_pieces -------------------------------------------------------


@st.composite
def body_inputs(draw: st.DrawFn) -> tuple[bytes, list[Replacement]]:
    size = draw(st.integers(0, 300))
    original = draw(st.binary(min_size=size, max_size=size))
    reps = [
        Replacement(a, b - a, tuple(draw(pieces_of(b - a, size)))) for a, b in draw(spans(0, size))
    ]
    return original, reps


def apply_replacements(original: bytes, reps: list[Replacement]) -> bytes:
    out = bytearray(original)
    for r in reps:
        out[r.offset : r.end] = materialize(list(r.pieces), original)
    return bytes(out)


@BUDGET
@given(body_inputs())
def test_body_pieces_cover_and_apply(case: tuple[bytes, list[Replacement]]) -> None:
    original, reps = case
    body = _body_pieces(len(original), reps)
    pos = 0
    for at, p in body:
        assert at == pos and p.length > 0
        pos += p.length
    assert pos == len(original)
    starts = {at for at, _ in body}
    assert all(r.offset in starts for r in reps if r.length)
    assert materialize([p for _, p in body], original) == apply_replacements(original, reps)


def test_body_pieces_refuse_a_length_change() -> None:
    with pytest.raises(AssertionError, match="not length-preserving"):
        _body_pieces(10, [Replacement(2, 4, (Piece.zeros(3),))])


# -- _cut_holes ---------------------------------------------------------


@st.composite
def cut_inputs(draw: st.DrawFn) -> tuple[bytes, list[tuple[int, Piece]], list[Hole]]:
    size = draw(st.integers(2, 300))
    original = draw(st.binary(min_size=size, max_size=size))
    cuts = [0, *sorted(draw(st.sets(st.integers(1, size - 1), max_size=12))), size]
    body: list[tuple[int, Piece]] = []
    zero_spans: list[tuple[int, int]] = []
    for a, b in itertools.pairwise(cuts):
        p = draw(piece(b - a, size))
        body.append((a, p))
        if p.kind is PieceKind.ZERO:
            if zero_spans and zero_spans[-1][1] == a:
                zero_spans[-1] = (zero_spans[-1][0], b)  # holes may span zero pieces
            else:
                zero_spans.append((a, b))
    holes: list[Hole] = []
    for lo, hi in zero_spans:
        holes += draw(sorted_holes(lo=lo, hi=hi))
    return original, body, holes


@BUDGET
@given(cut_inputs())
def test_cut_holes_deletes_exactly_the_holes(
    case: tuple[bytes, list[tuple[int, Piece]], list[Hole]],
) -> None:
    original, body, holes = case
    full = materialize([p for _, p in body], original)
    expected = bytes(b for i, b in enumerate(full) if not in_hole(holes, i))
    assert materialize(_cut_holes(body, holes), original) == expected


@BUDGET
@given(cut_inputs(), st.data())
def test_cut_holes_refuses_a_hole_over_data(
    case: tuple[bytes, list[tuple[int, Piece]], list[Hole]], data: st.DataObject
) -> None:
    _, body, _ = case
    nonzero = [(at, p) for at, p in body if p.kind is not PieceKind.ZERO]
    if not nonzero:
        return
    at, p = data.draw(st.sampled_from(nonzero))
    start = data.draw(st.integers(at, at + p.length - 1))
    hole = Hole(start, data.draw(st.integers(start + 1, at + p.length)), 1)
    with pytest.raises(AssertionError, match="covers non-zero output"):
        _cut_holes(body, [hole])


# -- segment splitting --------------------------------------------------


@st.composite
def split_inputs(draw: st.DrawFn) -> tuple[list[Seg], list[Hole]]:
    """Byte-sized PT_LOADs (file offsets sorted, vaddrs above them) with holes
    where find_holes may put them: strictly after a segment's first byte,
    within its file bytes."""
    segs: list[Seg] = []
    holes: list[Hole] = []
    pos = phdrs_end(8)
    for _ in range(draw(st.integers(1, 3))):
        pos += draw(st.integers(0, 20))
        filesz = draw(st.integers(1, 120))
        memsz = filesz + draw(st.sampled_from([0, 0, 7, 50]))
        vaddr = pos + draw(st.integers(0, 3)) * 0x1000
        segs.append(Seg(PT.LOAD, pos, vaddr, filesz, memsz, flags=draw(st.sampled_from([4, 5]))))
        holes += draw(sorted_holes(lo=pos + 1, hi=pos + filesz))
        pos += filesz
    for kind in draw(st.lists(st.sampled_from([PT.DYNAMIC, PT.NOTE, PT.GNU_STACK]), max_size=3)):
        at = draw(st.integers(phdrs_end(8), pos))
        size = draw(st.integers(0, pos - at))
        segs.insert(draw(st.integers(0, len(segs))), Seg(kind, at, at + 0x1000, size, size, 8))
    return segs, holes


def _check_load_pieces(p: Segment, pieces: list[Segment], holes: list[Hole]) -> None:
    assert all(
        (q.type, q.flags, q.align, q.paddr - q.vaddr) == (p.type, p.flags, p.align, 0)
        for q in pieces
    )
    assert all(q.filesz <= q.memsz for q in pieces)
    # The pieces tile the segment's memory, in order.
    assert pieces[0].vaddr == p.vaddr
    for a, b in itertools.pairwise(pieces):
        assert a.vaddr + a.memsz == b.vaddr
    assert pieces[-1].vaddr + pieces[-1].memsz == p.vaddr + p.memsz

    def piece_at(v: int) -> Segment:
        (q,) = [q for q in pieces if q.vaddr <= v < q.vaddr + q.memsz]
        return q

    for o in range(p.offset, p.offset + p.filesz):
        v = p.vaddr + (o - p.offset)
        q = piece_at(v)
        if in_hole(holes, o):  # zero-filled memory past the piece's file bytes
            assert v >= q.vaddr + q.filesz, hex(o)
        else:  # same address, file offset moved by the removed bytes before it
            assert v < q.vaddr + q.filesz, hex(o)
            assert q.offset + (v - q.vaddr) == model_map(holes, o), hex(o)
    for v in range(p.vaddr + p.filesz, p.vaddr + p.memsz):  # .bss stays zero-filled
        q = piece_at(v)
        assert v >= q.vaddr + q.filesz


@BUDGET
@given(split_inputs())
def test_split_keeps_every_vaddr(case: tuple[list[Seg], list[Hole]]) -> None:
    segs, holes = case
    elf = ElfFile(elf_bytes(segs))
    out = _split(elf, holes, _OffsetMap(holes))
    i = 0
    for p in elf.segments:
        if p.type != PT.LOAD:
            assert out[i] == replace(p, offset=model_map(holes, p.offset))
            i += 1
            continue
        n = 1 + sum(1 for h in holes if p.offset < h.offset and h.end <= p.offset + p.filesz)
        _check_load_pieces(p, out[i : i + n], holes)
        i += n
    assert i == len(out)


@st.composite
def page_split_inputs(draw: st.DrawFn) -> tuple[int, list[Seg], list[ZeroRun]]:
    """PT_LOADs congruent modulo p_align (up to 2 MiB), and zero runs in them."""
    machine = draw(st.sampled_from([EM_X86_64, EM_AARCH64]))
    granule = _GRANULE[machine]
    segs: list[Seg] = []
    runs: list[ZeroRun] = []
    pos = granule
    for i in range(draw(st.integers(1, 3))):
        align = draw(st.sampled_from([granule, 0x200000]))
        pages = draw(st.integers(2, 12))
        vaddr = pos + (i + 1) * 0x200000  # congruent to pos modulo any align up to 2 MiB
        segs.append(Seg(PT.LOAD, pos, vaddr, pages * granule, pages * granule + 99, align))
        a = draw(st.integers(1, pages - 1))
        b = draw(st.integers(a, pages))
        runs.append(ZeroRun(pos + a * granule - 5, pos + b * granule, 1))
        pos += pages * granule
    return machine, segs, runs


@BUDGET
@given(page_split_inputs())
def test_split_segments_stay_congruent(case: tuple[int, list[Seg], list[ZeroRun]]) -> None:
    machine, segs, runs = case
    elf = ElfFile(elf_bytes(segs, machine=machine))
    holes = find_holes(elf, Edit(zero_runs=runs), min_hole=0)
    out = _split_segments(elf, holes, _OffsetMap(holes))
    assert len(out) == len(segs) + len(holes)
    for q in out:
        (p,) = [p for p in segs if p.vaddr <= q.vaddr < p.vaddr + p.memsz]
        assert (q.offset - q.vaddr) % q.align == 0
        # p_align is lowered to the page granule only where the shift broke it
        moved = (q.offset - q.vaddr) % p.align != 0
        assert q.align == (_GRANULE[machine] if moved else p.align)
    assert [(q.vaddr, q.memsz) for q in out] == [
        (q.vaddr, q.memsz) for q in _split(elf, holes, _OffsetMap(holes))
    ]


# -- section splitting --------------------------------------------------


@st.composite
def section_inputs(draw: st.DrawFn) -> tuple[list[Sec], dict[int, int], list[Hole]]:
    """Sections one after another in the file (index i + 1), some shrunk by the
    edit, and holes attributed to them (inside their new size or past it)."""
    secs: list[Sec] = []
    sizes: dict[int, int] = {}
    holes: list[Hole] = []
    pos = 0x200
    for i in range(draw(st.integers(1, 5))):
        index = i + 1
        size = draw(st.integers(1, 100))
        kind = draw(st.sampled_from([SHT.PROGBITS, SHT.PROGBITS, SHT.NOBITS, SHT.NOTE]))
        addr = pos + 0x1000 if draw(st.booleans()) else 0
        secs.append(Sec(f"s{i}", kind, 2 if addr else 0, addr, pos, size, 0, i, 4, i % 3))
        new = size
        if draw(st.booleans()):
            new = sizes[index] = draw(st.integers(0, size))
        # Holes start after a section's first byte (see the xfail below), and lie
        # inside its new size or past it (a packed section's freed tail). A NOBITS
        # section gets a file range of its own too: holes there must not split it.
        holes += draw(sorted_holes(lo=pos + 1, hi=pos + new, section=index))
        holes += draw(sorted_holes(lo=max(pos + 1, pos + new), hi=pos + size, section=index))
        pos += size + draw(st.integers(0, 9))
    return secs, sizes, holes


@BUDGET
@given(section_inputs())
def test_split_sections_tile_each_section(
    case: tuple[list[Sec], dict[int, int], list[Hole]],
) -> None:
    secs, sizes, holes = case
    elf = ElfFile(elf_bytes([], secs))
    orig = elf.sections
    out = _split_sections(elf, Edit(section_sizes=sizes), holes, _OffsetMap(holes))
    assert [s.index for s in out] == list(range(len(out)))
    assert out[0] == orig[0]
    extra = iter(out[len(orig) :])
    for s in orig[1:]:
        size = sizes.get(s.index, s.size)
        inside = [
            h
            for h in holes
            if h.section == s.index and s.offset <= h.offset and h.end <= s.offset + size
        ]
        base = out[s.index]
        if not inside or s.type == SHT.NOBITS:
            assert base == replace(s, size=size, offset=model_map(holes, s.offset))
            continue
        pieces = [base] + [next(extra) for _ in range(2 * len(inside))]
        _check_section_pieces(replace(s, size=size), pieces, holes)
    assert next(extra, None) is None


def _check_section_pieces(s: Section, pieces: list[Section], holes: list[Hole]) -> None:
    same = ("name", "name_offset", "flags", "link", "info", "addralign", "entsize")
    for q in pieces:
        assert all(getattr(q, f) == getattr(s, f) for f in same)
    # Data and holes alternate, first data: data, hole, data, ..., hole, data.
    assert [q.type for q in pieces[::2]] == [s.type] * (len(pieces) // 2 + 1)
    assert all(q.type == SHT.NOBITS and q.size > 0 for q in pieces[1::2])
    # The first piece starts the section (empty when a hole does); the pieces tile
    # the section's address range (empty data pieces, between touching holes or
    # at either end, take no room).
    assert pieces[0].addr == s.addr
    ordered = sorted((q for q in pieces if q.size), key=lambda q: q.addr)
    assert ordered[0].addr == s.addr
    for a, b in itertools.pairwise(ordered):
        assert a.addr + a.size == b.addr
    assert ordered[-1].addr + ordered[-1].size == s.addr + s.size
    for o in range(s.offset, s.offset + s.size):
        v = s.addr + (o - s.offset)
        (q,) = [q for q in pieces if q.addr <= v < q.addr + q.size]
        if in_hole(holes, o):
            assert q.type == SHT.NOBITS
            assert q.offset == model_map(holes, o)  # where the hole was: its start
        else:
            assert q.type == s.type
            assert q.offset + (v - q.addr) == model_map(holes, o)


def test_hole_at_a_section_start_splits_the_section() -> None:
    data = bytearray(0x7000)
    data[0x5800:0x6000] = b"\x22" * 0x800
    rodata = Sec(".rodata", SHT.PROGBITS, 2, 0x1000, 0x1000, 0x5000, addralign=64)
    image = elf_bytes([Seg(PT.LOAD, 0, 0, 0x6000, 0x6000)], [rodata], data=bytes(data))
    edit = Edit(
        replacements=[Replacement(0x1000, 0x4000, (Piece.zeros(0x4000),))],
        zero_runs=[ZeroRun(0x1000, 0x5000, 1)],
    )
    out = plan_output(ElfFile(image), edit, min_hole=PAGE)
    assert [(h.offset, h.end) for h in out.holes] == [(0x1000, 0x5000)]
    report = VerifyReport()
    check_structure(ElfFile(materialize(out.pieces, image)), report)
    assert report.problems == []


# -- plan_output and extended section numbering -------------------------


def _library(count: int, **kw: bool) -> tuple[bytes, Edit]:
    """A library of ``count`` section headers (including section 0 and
    .shstrtab) whose .rodata holds a 3-page zero run, and the edit that
    declares it: compaction takes two pages out and splits .rodata in three."""
    rodata_off, rodata_size = 0x1000, 0x5000
    data = bytearray(rodata_off + rodata_size + 0x1000)
    data[rodata_off : rodata_off + 0x100] = b"\x11" * 0x100
    data[rodata_off + 0x4800 : rodata_off + rodata_size] = b"\x22" * 0x800
    end = rodata_off + rodata_size
    load = Seg(PT.LOAD, 0, 0, end, end, 0x1000)
    rodata = Sec(".rodata", SHT.PROGBITS, 2, rodata_off, rodata_off, rodata_size, addralign=64)
    fillers = [Sec(f".f{i % 3}", SHT.PROGBITS, 0, 0, end, 0) for i in range(count - 3)]
    image = elf_bytes([load], [rodata, *fillers], data=bytes(data), **kw)
    run = (rodata_off + 0x800, rodata_off + 0x4000)
    edit = Edit(
        replacements=[Replacement(run[0], run[1] - run[0], (Piece.zeros(run[1] - run[0]),))],
        zero_runs=[ZeroRun(*run, 1)],
    )
    return image, edit


def _lay_out(image: bytes, edit: Edit) -> bytes:
    elf = ElfFile(image, "lib.so")
    out = plan_output(elf, edit, min_hole=PAGE)
    assert out.compacted and [(h.offset, h.end) for h in out.holes] == [(0x2000, 0x5000)]
    data = materialize(out.pieces, image)
    assert len(data) == out.size
    return data


def _readelf_warnings(data: bytes, tmp_path: Path) -> str:
    path = tmp_path / "out.so"
    path.write_bytes(data)
    proc = subprocess.run(["readelf", "-W", "-S", str(path)], capture_output=True, text=True)
    assert proc.returncode == 0
    return proc.stderr


def _check_output(image: bytes, data: bytes, tmp_path: Path) -> ElfFile:
    """The output reads back the same with our reader and pyelftools (names of
    the first and last sections: every name is the integration test's job,
    pyelftools takes seconds for 65,000); the loaded bytes did not change."""
    orig, out = ElfFile(image), ElfFile(data)
    assert len(out.sections) == len(orig.sections) + 2
    # The old section header table was last: it leaves; the new tables end the file.
    body = orig.header.shoff - 0x3000
    tables = len(out.segments) * 56 + len(out.sections) * 64
    assert len(data) == body + (-body % 8) + tables == out.header.shoff + len(out.sections) * 64
    ref = ELFFile(io.BytesIO(data))
    assert ref.num_sections() == len(out.sections)
    probe = sorted(
        {*range(min(8, len(out.sections))), *range(len(out.sections) - 8, len(out.sections))}
    )
    assert [ref.get_section(i).name for i in probe] == [out.sections[i].name for i in probe]
    assert [s.name for s in out.sections[: len(orig.sections)]] == [s.name for s in orig.sections]
    assert [s.name for s in out.sections[len(orig.sections) :]] == [".rodata", ".rodata"]
    assert _readelf_warnings(data, tmp_path) == ""
    (first, second) = out.loads
    assert (first.filesz, first.memsz, second.vaddr, second.filesz) == (
        0x2000,
        0x5000,
        0x5000,
        0x1000,
    )
    assert data[:32] == image[:32] and data[64:0x2000] == image[64:0x2000]  # 32..64: new tables
    assert data[second.offset : second.offset + second.filesz] == image[0x5000:0x6000]
    return out


def test_output_crossing_0xff00_sections_switches_to_extended_numbering(tmp_path: Path) -> None:
    image, edit = _library(0xFF00 - 2)  # .shstrtab last: index 0xFEFD
    assert ElfFile(image).header.shnum == 0xFF00 - 2
    out = _check_output(image, _lay_out(image, edit), tmp_path)  # exactly SHN_LORESERVE
    assert (out.header.shnum, out.header.shstrndx) == (0, 0xFEFD)
    assert (out.sections[0].size, out.sections[0].link) == (0xFF00, 0)
    assert out.section_numbering == (0xFF00, 0xFEFD)


def test_extended_input_keeps_extended_numbering(tmp_path: Path) -> None:
    image, edit = _library(0xFF00 + 5)  # .shstrtab last: index 0xFF04, so SHN_XINDEX
    assert ElfFile(image).header.shnum == 0
    out = _check_output(image, _lay_out(image, edit), tmp_path)
    assert (out.header.shnum, out.header.shstrndx) == (0, SHN_XINDEX)
    assert (out.sections[0].size, out.sections[0].link) == (0xFF07, 0xFF04)


@pytest.mark.parametrize(("extended_count", "xindex"), [(True, True), (True, False)])
def test_input_convention_is_kept_below_0xff00(
    tmp_path: Path, extended_count: bool, xindex: bool
) -> None:
    image, edit = _library(7, extended_count=extended_count, xindex=xindex)
    out = _check_output(image, _lay_out(image, edit), tmp_path)
    assert out.header.shnum == 0 and out.sections[0].size == 9
    assert out.header.shstrndx == (SHN_XINDEX if xindex else 6)
    assert out.sections[0].link == (6 if xindex else 0)


def test_plain_numbering_stays_plain(tmp_path: Path) -> None:
    image, edit = _library(7)
    out = _check_output(image, _lay_out(image, edit), tmp_path)
    assert (out.header.shnum, out.header.shstrndx) == (9, 6)
    zero = out.sections[0]
    assert (zero.type, zero.size, zero.link, zero.offset) == (0, 0, 0, 0)


def test_strip_cuts_keep_later_segments_congruent() -> None:
    """A run of stripped sections behind which a segment still lies leaves whole pages
    only (the segment moves by pages); a run after every segment leaves whole;
    .symtab and its .strtab go unless a kept section names them."""
    from slimwheel.layout import strip_cuts, strippable_sections
    from tests.elf_bytes import Sec, Seg, elf_bytes

    data = bytearray(0x8000)
    segs = [Seg(1, 0, 0, 0x1000, 0x1000), Seg(1, 0x6000, 0x9000, 0x800, 0x800)]
    secs = [
        Sec(".text", 1, 0x6, 0x200, 0x200, 0x100),
        Sec(".debug_info", 1, 0, 0, 0x1000, 0x2800),  # before the second segment
        Sec(".debug_abbrev", 1, 0, 0, 0x3800, 0x10),  # same run
        Sec(".comment", 1, 0, 0, 0x4000, 0x10),  # kept: ends the run
        Sec(".debug_str", 1, 0, 0, 0x4010, 0x800),  # a run shorter than a page: stays
        Sec(".data", 1, 0x3, 0x9000, 0x6000, 0x800),
        Sec(".debug_line", 1, 0, 0, 0x6800, 0x100),  # after every segment
        Sec(".strtab", 3, 0, 0, 0x6900, 0x40),
        Sec(".symtab", 2, 0, 0, 0x6940, 0x30, link=8, entsize=24),
    ]
    elf = ElfFile(elf_bytes(segs, secs, data=bytes(data)))
    picked = strippable_sections(elf)
    assert [s.name for s in picked] == [
        ".debug_info",
        ".debug_abbrev",
        ".debug_str",
        ".debug_line",
        ".strtab",
        ".symtab",
    ]
    cuts = [(c.offset, c.end) for c in strip_cuts(elf, picked)]
    assert cuts == [(0x1000, 0x3000), (0x6800, 0x6970)]
    # a kept section that links to .symtab keeps it (and its .strtab)
    secs.append(Sec(".rela.note", 4, 0, 0, 0x6980, 0x18, link=9, entsize=24))
    elf = ElfFile(elf_bytes(segs, secs, data=bytes(data)))
    assert ".symtab" not in {s.name for s in strippable_sections(elf)}
