"""Host code: which functions of a library a profile saw run, and which leave the file.

The unit of removal is the function. Functions come from ``.eh_frame``
(every function with unwind information, stripped libraries included) and
from the FUNC / IFUNC symbols of ``.symtab`` and ``.dynsym``; ranges that
overlap are one unit, and the code between units (functions without unwind
info or symbols, hand-written assembly, padding) is a unit of its own, so
no function is ever cut: a function lies inside one unit.

A unit is kept when any page of it ran (the profile's pages, see
``hostuse.py``), when it holds code that runs without a call the profile can
see (the entry point, DT_INIT / DT_FINI, the targets of the init, fini and
preinit arrays, IFUNC resolvers), or when it is the split cold part
(``f.cold``) of a kept function ``f``. Sections that are never touched:
``.init``, ``.fini`` and the PLTs. What is left of the executable sections
is removed where it covers whole pages: those ranges become holes that leave
the file and are mapped by no PT_LOAD (glibc leaves the gaps between
segments PROT_NONE), so a jump into removed code faults at once; the guard
(``guard.py``) turns that fault into a message naming the function, using
the note slimming writes into the library (``note.py``).
"""

from __future__ import annotations

import bisect
import re
import struct
from dataclasses import dataclass

from .ehframe import fdes
from .elf import DT, SHF, SHT, STT, ElfFile, EMachine, Section, Segment
from .errors import SlimwheelError
from .hostuse import HostUse

#: Sections of executable code that stay whole.
KEPT_SECTIONS = frozenset({".init", ".fini", ".plt", ".plt.got", ".plt.sec", ".iplt", ".plt.bnd"})

#: Each hole costs the loader one PT_LOAD, one mmap and two mappings (the segment
#: and the PROT_NONE gap before it; vm.max_map_count is 65530 per process by
#: default): the largest this many holes of a library are taken. A MobileNetV2
#: profile of torch's CUDA stack takes 3,830 holes of 16 KiB in 23 libraries, 1,024
#: of them in cuBLASLt (bench/bench_host_holes.py).
MAX_HOST_HOLES = 1024

#: Names longer than this are cut in the note.
MAX_NAME = 512

IRELATIVE = {EMachine.X86_64: 37, EMachine.AARCH64: 1032}

_COLD = re.compile(r"^(?P<parent>.+?)\.cold(?:\.\d+)?$")
_RELA = struct.Struct("<QQq")


@dataclass(frozen=True, slots=True)
class Unit:
    """Code at [start, end) (virtual addresses): one function, or code no function names."""

    start: int
    end: int
    name: str  # "" when no symbol names it
    function: bool  # False: code between functions


@dataclass(frozen=True, slots=True)
class HostRange:
    """A removed range [start, end) of virtual addresses, with its file range."""

    start: int
    end: int
    offset: int
    section: int


@dataclass(frozen=True, slots=True)
class HostPlan:
    """What ``--cpu`` does to one library."""

    code_bytes: int  # bytes of the executable sections that may lose code
    functions: int  # units that are functions
    kept_functions: int
    removed_functions: int  # functions wholly inside removed ranges
    ranges: tuple[HostRange, ...]
    removed: tuple[Unit, ...]  # units that lie (at least partly) in removed ranges
    profile_digest: str
    note: str = ""  # why nothing was removed

    @property
    def removed_bytes(self) -> int:
        return sum(r.end - r.start for r in self.ranges)


def candidate_sections(elf: ElfFile) -> list[Section]:
    """Executable sections that may lose code, each inside one PT_LOAD's file bytes."""
    out = []
    for s in elf.sections:
        if (
            s.type != SHT.PROGBITS
            or not s.flags & SHF.ALLOC
            or not s.flags & SHF.EXECINSTR
            or s.name in KEPT_SECTIONS
            or s.name.startswith(".plt")
            or not s.size
        ):
            continue
        if _load_of(elf, s.offset, s.size) is not None:
            out.append(s)
    return out


def _load_of(elf: ElfFile, offset: int, size: int) -> Segment | None:
    for p in elf.loads:
        if p.offset <= offset and offset + size <= p.offset + p.filesz:
            return p
    return None


def _function_ranges(elf: ElfFile) -> tuple[list[tuple[int, int]], dict[int, str], set[int]]:
    """Function ranges (FDEs and symbols), names by address, and IFUNC resolvers:
    one pass over each symbol table (libtorch_cpu's has 500,000 entries)."""
    ranges = [(f.start, f.end) for f in fdes(elf)]
    names: dict[int, str] = {}
    ifuncs: set[int] = set()
    for sec in elf.sections:
        if sec.type not in (SHT.SYMTAB, SHT.DYNSYM):
            continue
        for sym in elf.symbols(sec):
            if sym.type not in (STT.FUNC, STT.GNU_IFUNC) or not sym.value:
                continue
            if sym.type == STT.GNU_IFUNC:
                ifuncs.add(sym.value)
            if sym.size:
                ranges.append((sym.value, sym.value + sym.size))
            if sym.name and (sym.value not in names or sec.type == SHT.DYNSYM):
                names[sym.value] = sym.name[:MAX_NAME]
    return ranges, names, ifuncs


def units_of(section: Section, ranges: list[tuple[int, int]], names: dict[int, str]) -> list[Unit]:
    """The section cut into units: merged function ranges, and the code between them."""
    lo, hi = section.addr, section.addr + section.size
    inside = sorted((max(a, lo), min(b, hi)) for a, b in ranges if a < hi and b > lo and b > a)
    merged: list[list[int]] = []
    for a, b in inside:
        if merged and a < merged[-1][1]:
            merged[-1][1] = max(merged[-1][1], b)
        else:
            merged.append([a, b])
    starts = sorted(names)
    out: list[Unit] = []
    pos = lo
    for a, b in merged:
        if a > pos:
            out.append(Unit(pos, a, _name_in(starts, names, pos, a), False))
        out.append(Unit(a, b, _name_in(starts, names, a, b), True))
        pos = b
    if pos < hi:
        out.append(Unit(pos, hi, _name_in(starts, names, pos, hi), False))
    return out


def _name_in(starts: list[int], names: dict[int, str], a: int, b: int) -> str:
    i = bisect.bisect_left(starts, a)
    return names[starts[i]] if i < len(starts) and starts[i] < b else ""


def always_run(elf: ElfFile) -> set[int]:
    """Addresses of code that runs without a call a profile sees (IFUNC symbols aside:
    :func:`_function_ranges` finds those in its pass over the symbol tables)."""
    out: set[int] = set()
    if elf.header.entry:
        out.add(elf.header.entry)
    try:
        for tag in (DT.INIT, DT.FINI):
            value = elf.dynamic_value(tag)
            if value:
                out.add(value)
        for addr_tag, size_tag in (
            (DT.INIT_ARRAY, DT.INIT_ARRAYSZ),
            (DT.FINI_ARRAY, DT.FINI_ARRAYSZ),
            (DT.PREINIT_ARRAY, DT.PREINIT_ARRAYSZ),
        ):
            out.update(_array_targets(elf, addr_tag, size_tag))
        out.update(_irelative_targets(elf))
    except SlimwheelError:
        pass  # no dynamic section to read: the IFUNC symbols still count
    return out


def _array_targets(elf: ElfFile, addr_tag: int, size_tag: int) -> set[int]:
    addr, size = elf.dynamic_value(addr_tag), elf.dynamic_value(size_tag)
    if not addr or not size or size > 1 << 24:
        return set()
    relocs = elf.relocations_in(addr, addr + size)
    out = set()
    for at in range(addr, addr + size - 7, 8):
        r = relocs.get(at)
        if r is not None and r.addend is not None:
            out.add(r.addend)  # R_*_RELATIVE: base + addend
        else:
            out.add(elf.read_u64_at_vaddr(at))  # in place (RELR, or a fixed address)
    out.discard(0)
    out.discard(0xFFFFFFFFFFFFFFFF)
    return out


def _irelative_targets(elf: ElfFile) -> set[int]:
    kind = IRELATIVE.get(elf.header.machine)  # type: ignore[call-overload]
    if kind is None:
        return set()
    out = {r.addend for r in elf.rela_relocations() if r.type == kind and r.addend}
    jmprel, size = elf.dynamic_value(DT.JMPREL), elf.dynamic_value(DT.PLTRELSZ)
    if jmprel and size:
        off = elf.vaddr_to_offset(jmprel, size)
        view = memoryview(elf.buf)[off : off + size // _RELA.size * _RELA.size]
        try:
            out.update(a for _o, info, a in _RELA.iter_unpack(view) if info & 0xFFFFFFFF == kind)
        finally:
            view.release()
    return {a for a in out if a is not None and a > 0}


def _placed_units(
    elf: ElfFile, sections: list[Section], ranges: list[tuple[int, int]], names: dict[int, str]
) -> list[tuple[Section, Segment, Unit]]:
    """The units of ``sections``, each with its section and the PT_LOAD holding it."""
    units: list[tuple[Section, Segment, Unit]] = []
    for s in sections:
        seg = _load_of(elf, s.offset, s.size)
        assert seg is not None
        units.extend((s, seg, u) for u in units_of(s, ranges, names))
    return units


def _ran(use: HostUse, seg: Segment, u: Unit) -> bool:
    """Whether the record ``use`` ran a page of the unit ``u`` (of ``seg``)."""
    off = seg.offset + (u.start - seg.vaddr)
    return use.touches(off, off + (u.end - u.start))


def executed_functions(elf: ElfFile, uses: list[HostUse]) -> list[set[int]]:
    """For each host record in ``uses``, the start addresses of the functions of
    ``elf`` whose pages it ran (what the record keeps by its own runs, without the
    entry points every plan keeps); the library is read once for all of them."""
    ranges, names, _ifuncs = _function_ranges(elf)
    found: list[set[int]] = [set() for _ in uses]
    for _s, seg, u in _placed_units(elf, candidate_sections(elf), ranges, names):
        if u.function:
            for i, use in enumerate(uses):
                if _ran(use, seg, u):
                    found[i].add(u.start)
    return found


def largest_first(holes: list[HostRange]) -> list[HostRange]:
    """The order in which holes are taken when there are too many: largest first, then
    by address."""
    return sorted(holes, key=lambda h: (h.start - h.end, h.start))


def plan_host(
    elf: ElfFile,
    use: HostUse,
    *,
    granule: int,
    min_hole: int,
    profile_digest: str,
    max_holes: int = MAX_HOST_HOLES,
) -> HostPlan:
    """Which units of ``elf`` the profile ``use`` keeps, and the ranges that leave the file
    (the ``max_holes`` largest removable ones)."""
    if use.page_size > granule:
        granule = use.page_size
    sections = candidate_sections(elf)
    ranges, names, ifuncs = _function_ranges(elf)
    must = sorted(always_run(elf) | ifuncs)
    units = _placed_units(elf, sections, ranges, names)
    kept: list[bool] = []
    for _sec, seg, u in units:
        i = bisect.bisect_left(must, u.start)
        needed = i < len(must) and must[i] < u.end
        kept.append(needed or _ran(use, seg, u))
    kept_names = {u.name for (_s, _g, u), k in zip(units, kept, strict=True) if k and u.name}
    for i, (_s, _g, u) in enumerate(units):
        m = _COLD.match(u.name) if not kept[i] and u.name else None
        if m and m.group("parent") in kept_names:
            kept[i] = True  # the split part of a kept function
    runs: list[tuple[int, int, Section, Segment]] = []
    for (s, seg, u), k in zip(units, kept, strict=True):
        if k:
            continue
        if runs and runs[-1][1] == u.start and runs[-1][2].index == s.index:
            runs[-1] = (runs[-1][0], u.end, s, seg)
        else:
            runs.append((u.start, u.end, s, seg))
    holes: list[HostRange] = []
    for a, b, s, seg in runs:
        a = -(-a // granule) * granule
        b = b // granule * granule
        off = seg.offset + (a - seg.vaddr)
        if off <= seg.offset:  # a segment's first page stays: it starts the mapping
            a += granule
            off += granule
        if b - a >= max(min_hole, granule):
            holes.append(HostRange(a, b, off, s.index))
    note = ""
    if len(holes) > max_holes:
        note = f"{len(holes)} removable ranges: the {max_holes} largest are removed"
        holes = largest_first(holes)[:max_holes]
    holes.sort(key=lambda h: h.start)
    starts = [h.start for h in holes]
    removed, removed_fns = [], 0
    for _s, _g, u in units:
        i = bisect.bisect_right(starts, u.start) - 1
        j = bisect.bisect_left(starts, u.end)
        lo = max(i, 0)
        hit = any(holes[k].start < u.end and u.start < holes[k].end for k in range(lo, j))
        if not hit:
            continue
        removed.append(u)
        if u.function and i >= 0 and holes[i].start <= u.start and u.end <= holes[i].end:
            removed_fns += 1
    functions = sum(1 for _s, _g, u in units if u.function)
    kept_fns = sum(1 for (_s, _g, u), k in zip(units, kept, strict=True) if k and u.function)
    if not sections:
        note = "no executable section to take code from"
    elif not holes and not note:
        note = "no removable range of whole pages"
    return HostPlan(
        code_bytes=sum(s.size for s in sections),
        functions=functions,
        kept_functions=kept_fns,
        removed_functions=removed_fns,
        ranges=tuple(holes),
        removed=tuple(removed),
        profile_digest=profile_digest,
        note=note,
    )
