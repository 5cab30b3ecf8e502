"""Check a slimmed library against its original.

* The slim file is a well-formed ELF: sections inside the file, every
  allocated section at the file offset its address maps to, PT_LOADs sorted,
  non-overlapping and congruent to their alignment.
* Every region keeps exactly the elements the plan keeps, byte for byte, and
  serves every target the original served with the very same element.
* The loaded image is the same: outside fatbin regions, wrapper pointers and
  the ELF header's table fields, every byte at every mapped address equals
  the original's; inside, whatever is not a kept region is zero; and the
  slim file maps exactly the addresses the original mapped, less the host
  code ``--cpu`` removed (those ranges must be mapped by no PT_LOAD, and the
  library's note must name exactly them).
"""

from __future__ import annotations

import bisect
import itertools
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field

from .arch import Target, driver_choice
from .elf import PT, SHT, ElfFile, Segment, release
from .errors import SlimwheelError
from .fatbin import DEDICATED_SECTIONS, Element, FatbinLayout, Region, scan
from .hostcode import HostPlan
from .note import DEVICE_REMOVED, read_note
from .plan import Plan, Reason

_CHUNK = 8 << 20
_ZERO = bytes(_CHUNK)


class VerifyError(SlimwheelError):
    """A slimmed library does not match its original."""


@dataclass(slots=True)
class VerifyReport:
    problems: list[str] = field(default_factory=list)
    regions: int = 0
    kept_elements: int = 0
    compared_bytes: int = 0

    def fail(self, message: str) -> None:
        if len(self.problems) < 50:
            self.problems.append(message)


def _intervals_minus(
    base: list[tuple[int, int]], cut: list[tuple[int, int]]
) -> list[tuple[int, int]]:
    """``base`` minus the union of ``cut`` (both lists of [lo, hi) intervals)."""
    out = []
    merged: list[tuple[int, int]] = []
    for a, b in sorted(cut):
        if merged and a <= merged[-1][1]:
            merged[-1] = (merged[-1][0], max(merged[-1][1], b))
        else:
            merged.append((a, b))
    cut = merged
    starts = [a for a, _ in cut]
    for lo, hi in sorted(base):
        pos = lo
        i = bisect.bisect_left(starts, lo)
        if i > 0 and cut[i - 1][1] > lo:
            i -= 1  # the one disjoint cut that starts before lo may reach into it
        while i < len(cut) and cut[i][0] < hi:
            a, b = cut[i]
            if a > pos:
                out.append((pos, a))
            pos = max(pos, b)
            i += 1
        if pos < hi:
            out.append((pos, hi))
    return out


class _Image:
    """The memory image a loader builds from an ELF's PT_LOADs."""

    def __init__(self, elf: ElfFile) -> None:
        self.elf = elf
        self.loads = sorted(elf.loads, key=lambda p: p.vaddr)

    def release(self, start: int, end: int) -> None:
        """Drop the file pages behind [start, end) from the resident set."""
        for p in self.loads:
            lo, hi = max(start, p.vaddr), min(end, p.vaddr + p.filesz)
            if lo < hi:
                release(self.elf.buf, p.offset + (lo - p.vaddr), p.offset + (hi - p.vaddr))

    def read(self, start: int, end: int) -> bytes:
        parts = []
        pos = start
        for p in self.loads:
            if p.vaddr + p.memsz <= pos or p.vaddr >= end:
                continue
            if p.vaddr > pos:
                raise VerifyError(f"address {pos:#x} is not mapped", path=self.elf.name)
            file_end = p.vaddr + p.filesz
            stop = min(end, p.vaddr + p.memsz)
            if pos < file_end:
                n = min(stop, file_end) - pos
                off = p.offset + (pos - p.vaddr)
                parts.append(bytes(self.elf.buf[off : off + n]))
                pos += n
            if pos < stop:
                parts.append(bytes(stop - pos))
                pos = stop
            if pos >= end:
                break
        if pos < end:
            raise VerifyError(f"address {pos:#x} is not mapped", path=self.elf.name)
        return b"".join(parts)


def _mapped(
    loads: Sequence[Segment], less: Sequence[tuple[int, int]] = ()
) -> list[tuple[int, int, int]]:
    """Page-rounded mapped ranges with their flags, adjacent equal ones merged,
    without the (page-aligned) ranges ``less``."""
    out: list[tuple[int, int, int]] = []
    for p in sorted(loads, key=lambda p: p.vaddr):
        lo = p.vaddr & ~0xFFF
        hi = (p.vaddr + p.memsz + 0xFFF) & ~0xFFF
        for a, b in _intervals_minus([(lo, hi)], list(less)):
            if out and out[-1][1] >= a and out[-1][2] == p.flags:
                out[-1] = (out[-1][0], max(out[-1][1], b), p.flags)
            else:
                out.append((a, b, p.flags))
    return out


def check_structure(elf: ElfFile, report: VerifyReport) -> None:
    loads = elf.loads
    for a, b in itertools.pairwise(loads):
        if b.vaddr < a.vaddr + a.memsz:
            report.fail(f"PT_LOADs overlap or are unsorted at {b.vaddr:#x}")
    for p in elf.segments:
        if p.offset + p.filesz > elf.size:
            report.fail(f"segment {p.index} runs past the end of the file")
        if p.type == PT.LOAD:
            if p.filesz > p.memsz:
                report.fail(f"PT_LOAD {p.index} has filesz > memsz")
            if p.align > 1 and (p.offset - p.vaddr) % p.align:
                report.fail(f"PT_LOAD {p.index}: offset not congruent to vaddr mod {p.align}")
    h = elf.header
    for p in elf.segments:
        if p.type != PT.PHDR:
            continue
        # The loader takes PT_PHDR's memory as the program headers: it must be them.
        try:
            loaded = elf.read(elf.vaddr_to_offset(p.vaddr, p.filesz), p.filesz)
        except SlimwheelError:
            report.fail("PT_PHDR is not backed by a PT_LOAD")
            continue
        if loaded != elf.read(h.phoff, h.phnum * h.phentsize, "program header table"):
            report.fail("PT_PHDR's memory is not the file's program header table")
    for s in elf.sections:
        if s.type in (SHT.NULL, SHT.NOBITS):
            continue
        if s.offset + s.size > elf.size:
            report.fail(f"section {s.name} [{s.index}] runs past the end of the file")
        elif s.alloc and s.size:
            try:
                if elf.vaddr_to_offset(s.addr, s.size) != s.offset:
                    report.fail(f"section {s.name} [{s.index}]: offset does not match its address")
            except SlimwheelError:
                report.fail(f"section {s.name} [{s.index}] is not backed by one PT_LOAD")


def _element_bytes(elf: ElfFile, e: Element) -> bytes:
    return bytes(elf.buf[e.offset : e.end])


def _match_regions(
    olay: FatbinLayout, slay: FatbinLayout, plan: Plan, report: VerifyReport
) -> dict[int, Region]:
    """Original region offset -> slim region."""
    by_vaddr = {r.vaddr: r for r in slay.regions}
    slim_wrappers = {w.vaddr: w for w in slay.wrappers}
    moved = {}
    for w in olay.wrappers:
        sw = slim_wrappers.get(w.vaddr)
        if sw is None:
            report.fail(f"wrapper at {w.vaddr:#x} is gone")
            continue
        moved[w.data.target] = sw.data.target
    out = {}
    gone = 0
    plans = {rp.region.offset: rp for rp in plan.regions}
    for r in olay.regions:
        target = moved.get(r.vaddr, r.vaddr)
        sr = by_vaddr.get(target)
        if sr is None:
            if plans[r.offset].vanishes:
                gone += 1  # zeroed whole: the zero check below covers it
                continue
            report.fail(f"region at {r.vaddr:#x} ({r.section}) has no counterpart at {target:#x}")
            continue
        out[r.offset] = sr
    if len(slay.regions) != len(olay.regions) - gone:
        report.fail(
            f"{len(olay.regions)} regions became {len(slay.regions)} ({gone} removed whole)"
        )
    return out


def _check_regions(
    orig: ElfFile,
    slim: ElfFile,
    plan: Plan,
    matched: dict[int, Region],
    targets: Sequence[Target],
    report: VerifyReport,
) -> None:
    swept = 0
    for rp in plan.regions:
        r = rp.region
        sr = matched.get(r.offset)
        if sr is None:
            continue
        report.regions += 1
        swept += r.total_size
        if swept > _CHUNK * 8:  # bound the resident set of both mappings
            release(orig.buf, 0, orig.size)
            release(slim.buf, 0, slim.size)
            swept = 0
        kept = rp.kept
        if len(sr.elements) != len(kept):
            report.fail(
                f"region at {r.vaddr:#x}: {len(sr.elements)} elements, the plan keeps {len(kept)}"
            )
            continue
        for e, se in zip(kept, sr.elements, strict=True):
            if _element_bytes(orig, e) != _element_bytes(slim, se):
                report.fail(f"region at {r.vaddr:#x}: element {e.arch_name} changed")
            report.kept_elements += 1
        reasons = {d.element.offset: d.reason for d in rp.decisions}
        for t in targets:
            # What the driver loads here must stay, unless the profile says it is unused.
            for e in driver_choice(r.elements, t):
                if not reasons[e.offset].keeps and reasons[e.offset] is not Reason.NOT_USED:
                    report.fail(f"region at {r.vaddr:#x}: the plan drops what {t} loads")
            before = [_element_bytes(orig, e) for e in driver_choice(kept, t)]
            after = [_element_bytes(slim, e) for e in driver_choice(sr.elements, t)]
            if before != after:
                report.fail(f"region at {r.vaddr:#x}: {t} would load another element")


def _pointer_sites(elf: ElfFile, layout: FatbinLayout) -> Iterator[tuple[int, int]]:
    """Vaddr ranges that hold wrapper pointers (RELA addends or in-place values)."""
    for w in layout.wrappers:
        site = w.data
        if site.how == "rela":
            vaddr = elf.offset_to_vaddr(site.entry_offset + 16)
            if vaddr is not None:
                yield (vaddr, vaddr + 8)
        else:
            yield (site.vaddr, site.vaddr + 8)


def _check_note(slim: ElfFile, removed: list[tuple[int, int]], report: VerifyReport) -> None:
    """The note names exactly the removed host ranges (a library that cannot take a
    section has none), and its device part is well-formed."""
    try:
        note = read_note(slim, body=False)
    except SlimwheelError as exc:
        report.fail(exc.message)
        return
    if note is None:
        if removed:
            report.fail("removed host code is not named in a note")
        return
    if list(note.ranges) != removed:
        report.fail("the note names other host ranges than were removed")
    if bool(note.flags & DEVICE_REMOVED) != bool(note.kernel_hashes):
        report.fail("the note's device flag does not match its kernel list")


def verify(
    orig: ElfFile,
    slim: ElfFile,
    plan: Plan,
    *,
    orig_layout: FatbinLayout | None = None,
    host: HostPlan | None = None,
) -> VerifyReport:
    """Every check above; problems are collected, not raised."""
    report = VerifyReport()
    check_structure(slim, report)
    olay = orig_layout if orig_layout is not None else scan(orig)
    try:
        slay = scan(slim)
    except SlimwheelError as exc:
        report.fail(f"slim library does not scan: {exc.message}")
        return report
    matched = _match_regions(olay, slay, plan, report)
    _check_regions(orig, slim, plan, matched, plan.targets, report)

    removed = [(r.start, r.end) for r in host.ranges] if host else []
    if _mapped(orig.loads, removed) != _mapped(slim.loads):
        report.fail("the slim library maps other addresses than the original")
    _check_note(slim, removed, report)

    # Ranges allowed to differ, and what must be zero inside them.
    rewritten: list[tuple[int, int]] = [
        (s.addr, s.addr + s.size)
        for s in orig.sections
        if s.name in DEDICATED_SECTIONS and s.alloc and s.type != SHT.NOBITS
    ]
    rewritten += [
        (r.vaddr, r.vaddr + r.total_size)
        for r in olay.regions
        if r.section not in DEDICATED_SECTIONS
    ]
    slim_spans = [(r.vaddr, r.vaddr + r.total_size) for r in slay.regions]
    must_be_zero = _intervals_minus(rewritten, slim_spans)
    header = orig.offset_to_vaddr(32)  # e_phoff..e_shstrndx, where the ELF header is loaded
    allowed = [*rewritten, *_pointer_sites(orig, olay), *removed]
    if header is not None:
        allowed.append((header, header + 32))

    oimg, simg = _Image(orig), _Image(slim)
    load_ranges = [(p.vaddr, p.vaddr + p.memsz) for p in oimg.loads]
    for lo, hi in _intervals_minus(load_ranges, allowed):
        for a in range(lo, hi, _CHUNK):
            b = min(hi, a + _CHUNK)
            try:
                same = oimg.read(a, b) == simg.read(a, b)
            except VerifyError as exc:
                report.fail(exc.message)
                break
            report.compared_bytes += b - a
            if not same:
                report.fail(f"loaded bytes differ in [{a:#x}, {b:#x})")
            oimg.release(a, b)
            simg.release(a, b)
    for lo, hi in must_be_zero:
        for a in range(lo, hi, _CHUNK):
            b = min(hi, a + _CHUNK)
            try:
                if simg.read(a, b) != _ZERO[: b - a]:
                    report.fail(f"removed bytes in [{a:#x}, {b:#x}) are not zero")
            except VerifyError as exc:
                report.fail(exc.message)
                break
    return report
