"""Slim one library: scan, plan, edit, lay out, write atomically, verify.

The output is written to a temporary file beside the destination, verified
against the original (``verify.py``) while still temporary, and only then
renamed into place. A failed verification leaves nothing behind.
"""

from __future__ import annotations

import bisect
import mmap
import os
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass

from .cubin import read_element
from .elf import Buffer, ElfFile, map_file
from .errors import InputError, SlimwheelError
from .fatbin import FatbinLayout, scan
from .hostcode import MAX_HOST_HOLES, HostPlan, plan_host
from .layout import Hole, hole_granule, is_executable, plan_output
from .note import NOTE_SECTION, make_note, note_bytes
from .plan import Plan, Reason, apply_usage, plan_layout
from .policy import LibraryPolicy
from .rewrite import edits_for
from .verify import VerifyError, VerifyReport, verify
from .write import atomic_output, write_pieces


@dataclass(frozen=True, slots=True)
class SlimResult:
    name: str
    plan: Plan
    file_bytes_before: int
    file_bytes_after: int
    device_bytes_before: int
    device_bytes_after: int
    by_arch_before: dict[str, int]
    by_arch_after: dict[str, int]
    loads_before: int
    loads_after: int
    compacted: bool
    note: str
    holes: int
    hole_bytes: int
    report: VerifyReport
    stripped_bytes: int = 0  # sections --strip took out
    host: HostPlan | None = None  # --cpu: host code kept and removed

    @property
    def saved(self) -> int:
        return self.file_bytes_before - self.file_bytes_after

    @property
    def unused_bytes(self) -> int:
        """Removed because the profile never used them (beyond arch selection)."""
        return sum(d.element.size for d in self.plan.decisions if d.reason is Reason.NOT_USED)


def _by_arch(layout: FatbinLayout, keep: set[int] | None = None) -> dict[str, int]:
    c: Counter[str] = Counter()
    for _r, e in layout.elements:
        if keep is None or e.offset in keep:
            c[e.arch_name] += e.size
    return dict(sorted(c.items()))


def slim_library(
    src: str | os.PathLike[str],
    dest: str | os.PathLike[str],
    policy: LibraryPolicy,
    *,
    name: str | None = None,
) -> SlimResult:
    """Write ``dest``: ``src`` with only what ``policy`` keeps. ``dest`` may be ``src``."""
    label = name or os.fspath(src)
    if os.path.isdir(dest):
        raise InputError("output is a directory", path=os.fspath(dest))
    try:
        mode = os.stat(src).st_mode
        with map_file(src) as buf, open(src, "rb") as fsrc:
            elf = ElfFile(buf, label)
            layout = scan(elf)
            plan = make_plan(buf, label, layout, policy)
            edit = edits_for(elf, layout, plan)
            host = plan_host_code(elf, policy)
            note = None
            profiled = policy.cpu or policy.usage is not None
            if profiled and not is_executable(elf) and elf.sections:  # a section can be added
                # What a profile removed, for the guard: host ranges, kernel name hashes.
                note = make_note(host, plan.unused_kernels, policy.profile_digest)
            holes = [
                Hole(r.offset, r.offset + (r.end - r.start), r.section, unmapped=True)
                for r in (host.ranges if host else ())
            ]
            out = plan_output(
                elf,
                edit,
                compact=policy.compact,
                min_hole=policy.min_hole,
                strip=policy.strip,
                host=holes,
                extra_section=(NOTE_SECTION, note_bytes(note)) if note else None,
            )
            with atomic_output(dest, mode=mode) as f:
                written = write_pieces(fsrc, f, out.pieces)
                if written != out.size:
                    raise AssertionError(f"wrote {written} bytes, planned {out.size}")
                f.flush()
                with mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ) as sbuf:
                    slim_elf = ElfFile(sbuf, f"{label} (slimmed)")
                    report = verify(elf, slim_elf, plan, orig_layout=layout, host=host)
                    slim_loads = len(slim_elf.loads)
                if report.problems:
                    raise VerifyError(
                        "verification of the slimmed output failed: "
                        + "; ".join(report.problems[:3]),
                        path=label,
                    )
            kept = {d.element.offset for d in plan.decisions if d.keep}
            return SlimResult(
                name=label,
                plan=plan,
                file_bytes_before=elf.size,
                file_bytes_after=out.size,
                device_bytes_before=sum(r.total_size for r in layout.regions),
                device_bytes_after=sum(r.total_size for r in layout.regions) - plan.removed_bytes,
                by_arch_before=_by_arch(layout),
                by_arch_after=_by_arch(layout, kept),
                loads_before=len(elf.loads),
                loads_after=slim_loads,
                compacted=out.compacted,
                note=out.note,
                holes=len(out.holes),
                hole_bytes=sum(h.length for h in out.holes),
                report=report,
                stripped_bytes=sum(c.length for c in out.stripped),
                host=host,
            )
    except SlimwheelError as exc:
        raise exc.with_path(label) from None


def make_plan(buf: Buffer, label: str, layout: FatbinLayout, policy: LibraryPolicy) -> Plan:
    """The plan the policy gives for a scanned library: arch selection, sections left
    alone, then (with a profile's record of it) what the workload never used."""
    plan = plan_layout(
        layout,
        policy.targets,
        keep_ptx=policy.keep_ptx,
        leave=policy.leave_map,
        drop_lto=policy.drop_lto,
    )
    if policy.usage is None:
        return plan
    symbols = {
        d.element.offset: read_element(buf, d.element, name=label)
        for d in plan.decisions
        if d.reason in (Reason.LOADED, Reason.KEEP_PTX)
    }
    usage = policy.usage
    loaded = library_loaded(layout, usage.regions)
    return apply_usage(plan, usage.needed_kernels, frozenset(usage.variables), symbols, loaded)


def library_loaded(layout: FatbinLayout, recorded: Sequence[int]) -> frozenset[int]:
    """The regions (by address) the profile saw loaded that no fatbin wrapper
    registers with the CUDA runtime: the library's own code loaded them
    (cuLibraryLoadData, cuModuleLoadData: cuFFT's per-size images), and it
    fails when such a load finds no image for the GPU. A recorded address
    inside a region (an element's payload) counts for its region."""
    if not recorded:
        return frozenset()
    registered = {w.data.target for w in layout.wrappers}
    own = sorted(
        (r.vaddr, r.vaddr + r.total_size) for r in layout.regions if r.vaddr not in registered
    )
    starts = [s for s, _e in own]
    out = set()
    for v in recorded:
        i = bisect.bisect_right(starts, v) - 1
        if i >= 0 and v < own[i][1]:
            out.add(own[i][0])
    return frozenset(out)


def plan_host_code(
    elf: ElfFile, policy: LibraryPolicy, *, max_holes: int = MAX_HOST_HOLES
) -> HostPlan | None:
    """With ``--cpu`` and the profile's record of these bytes: the host code plan
    (``max_holes``: other than the default only in bench/bench_host_holes.py).

    Programs (their headers cannot move) and files without section headers keep
    their host code.
    """
    if policy.host is None or is_executable(elf) or not elf.sections:
        return None
    return plan_host(
        elf,
        policy.host,
        granule=hole_granule(elf),
        min_hole=policy.host_min_hole,
        profile_digest=policy.profile_digest,
        max_holes=max_holes,
    )


def verify_pair(
    original: str | os.PathLike[str],
    slimmed: str | os.PathLike[str],
    policy: LibraryPolicy,
) -> VerifyReport:
    """Check an existing pair (``slimwheel verify``)."""
    with map_file(original) as obuf, map_file(slimmed) as sbuf:
        label = os.fspath(original)
        orig = ElfFile(obuf, label)
        slim = ElfFile(sbuf, os.fspath(slimmed))
        layout = scan(orig)
        plan = make_plan(obuf, label, layout, policy)
        host = plan_host_code(orig, policy)
        return verify(orig, slim, plan, orig_layout=layout, host=host)
