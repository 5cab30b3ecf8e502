"""What to keep of a library's device code, and why: a plan, decided once.

The plan holds one :class:`Decision` per fatbin element. It is computed from
the regions a reader found and the targets, never from the bytes being
written, so ``inspect --arch``, ``slim --explain`` and a dry run all print
the same plan that a rewrite applies.
"""

from __future__ import annotations

import enum
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass

from .arch import Target, can_run, driver_choice, split_arch
from .cubin import ModuleSymbols
from .fatbin import DEDICATED_SECTIONS, Element, ElementKind, FatbinLayout, Region, Variant


class Reason(enum.Enum):
    LOADED = "loaded"  # the driver loads it on at least one target
    KEEP_PTX = "keep-ptx"  # the best PTX, kept for forward compatibility
    NOT_DRIVER_CODE = "not-driver-code"  # LTO-IR and unknown kinds: kept, consumer unknown
    WRONG_ARCH = "wrong-arch"  # no target can run it
    SUPERSEDED = "superseded"  # a target could run it, but the driver loads another element
    PTX_NOT_NEEDED = "ptx-not-needed"  # PTX where every target gets a cubin
    SECTION_LEFT_ALONE = "section-left-alone"  # its section is not slimmed in this library
    NOT_USED = "not-used"  # the profile never launched its kernels nor touched its variables
    LTO_DROPPED = "lto-dropped"  # LTO-IR, removed on request (--drop-lto)

    @property
    def keeps(self) -> bool:
        return self in (
            Reason.LOADED,
            Reason.KEEP_PTX,
            Reason.NOT_DRIVER_CODE,
            Reason.SECTION_LEFT_ALONE,
        )

    @property
    def text(self) -> str:
        return _REASON_TEXT[self]


_REASON_TEXT = {
    Reason.LOADED: "loaded by the driver on",
    Reason.KEEP_PTX: "best PTX, kept for newer GPUs (--keep-ptx)",
    Reason.NOT_DRIVER_CODE: "not loaded by the driver (LTO-IR or unknown kind); kept",
    Reason.WRONG_ARCH: "wrong arch: no target can run it",
    Reason.SUPERSEDED: "superseded: the driver loads another element instead",
    Reason.PTX_NOT_NEEDED: "PTX not needed: a cubin is loaded instead",
    Reason.SECTION_LEFT_ALONE: "kept: its section is left alone in this library",
    Reason.NOT_USED: "not used by the profile: none of its kernels or variables",
    Reason.LTO_DROPPED: "LTO-IR, dropped on request (--drop-lto)",
}


@dataclass(frozen=True, slots=True)
class Decision:
    element: Element
    reason: Reason
    targets: tuple[Target, ...] = ()  # where the element is loaded

    @property
    def keep(self) -> bool:
        return self.reason.keeps


@dataclass(frozen=True, slots=True)
class RegionPlan:
    region: Region
    decisions: tuple[Decision, ...]

    @property
    def kept(self) -> list[Element]:
        return [d.element for d in self.decisions if d.keep]

    @property
    def removed_bytes(self) -> int:
        return sum(d.element.size for d in self.decisions if not d.keep)

    @property
    def vanishes(self) -> bool:
        """A pinned region none of whose elements stays is zeroed whole, header included.

        Its library passes it to the driver only on a GPU the output does not
        serve (where it would fail anyway); zeroed whole, runs of such regions
        merge into holes that leave the file.
        """
        return (
            bool(self.decisions) and self.region.section not in DEDICATED_SECTIONS and not self.kept
        )

    @property
    def serves(self) -> tuple[Target, ...]:
        """Targets this region can serve once slimmed."""
        return tuple(sorted({t for d in self.decisions if d.keep for t in d.targets}))


@dataclass(frozen=True, slots=True)
class Plan:
    targets: tuple[Target, ...]
    keep_ptx: bool
    regions: tuple[RegionPlan, ...]
    left_alone: tuple[tuple[str, str], ...] = ()  # (section, why)
    drop_lto: bool = False
    #: Kernels whose code a profile removed (in no kept element): the guard names them.
    unused_kernels: tuple[str, ...] = ()

    @property
    def decisions(self) -> Iterator[Decision]:
        for rp in self.regions:
            yield from rp.decisions

    @property
    def removed_bytes(self) -> int:
        return sum(rp.removed_bytes for rp in self.regions)

    @property
    def removed_elements(self) -> int:
        return sum(1 for d in self.decisions if not d.keep)

    @property
    def kept_elements(self) -> int:
        return sum(1 for d in self.decisions if d.keep)


def _best_forward_ptx(elements: Sequence[Element]) -> Element | None:
    plain = [e for e in elements if e.is_ptx and e.variant is Variant.PLAIN]
    return max(plain, key=lambda e: split_arch(e.arch), default=None)


def plan_region(
    region: Region,
    targets: Sequence[Target],
    *,
    keep_ptx: bool = False,
    left_alone: bool = False,
    drop_lto: bool = False,
) -> RegionPlan:
    loaded: dict[int, list[Target]] = {}
    for t in targets:
        for e in driver_choice(region.elements, t):
            loaded.setdefault(e.offset, []).append(t)
    forward = _best_forward_ptx(region.elements) if keep_ptx else None
    decisions = []
    for e in region.elements:
        where = tuple(loaded.get(e.offset, ()))
        if left_alone:
            reason = Reason.SECTION_LEFT_ALONE
        elif where:
            reason = Reason.LOADED
        elif forward is not None and e.offset == forward.offset:
            reason = Reason.KEEP_PTX
        elif drop_lto and e.kind == ElementKind.NVVM:
            reason = Reason.LTO_DROPPED
        elif not (e.is_cubin or e.is_ptx):
            reason = Reason.NOT_DRIVER_CODE
        elif not any(can_run(e, t) for t in targets):
            reason = Reason.WRONG_ARCH
        elif e.is_ptx and all(
            any(c.is_cubin for c in driver_choice(region.elements, t))
            for t in targets
            if can_run(e, t)
        ):
            reason = Reason.PTX_NOT_NEEDED
        else:
            reason = Reason.SUPERSEDED
        decisions.append(Decision(e, reason, where))
    return RegionPlan(region, tuple(decisions))


def plan_layout(
    layout: FatbinLayout,
    targets: Sequence[Target],
    *,
    keep_ptx: bool = False,
    leave: Mapping[str, str] | None = None,
    drop_lto: bool = False,
) -> Plan:
    """Decide, for every element of every region, whether it stays.

    ``leave`` maps section names to the reason their regions stay untouched.
    """
    leave = leave or {}
    present = {r.section for r in layout.regions}
    return Plan(
        tuple(targets),
        keep_ptx,
        tuple(
            plan_region(
                r, targets, keep_ptx=keep_ptx, left_alone=r.section in leave, drop_lto=drop_lto
            )
            for r in layout.regions
        ),
        tuple(sorted((s, why) for s, why in leave.items() if s in present)),
        drop_lto,
    )


def apply_usage(
    plan: Plan,
    kernels: frozenset[str],
    variables: frozenset[str],
    symbols: Mapping[int, ModuleSymbols | None],
    loaded: frozenset[int] = frozenset(),
) -> Plan:
    """Among the elements the arch selection keeps, drop those the profile never used.

    An element stays when one of its kernels was launched or one of its
    variables touched, or when it has managed variables (its module loads
    eagerly), or when its region's address is in ``loaded`` (a region the
    library's own code loaded: it checks that the load succeeds, whatever it
    launches afterwards). LTO-IR and sections left alone are not judged by usage.
    """
    regions = []
    dropped: set[str] = set()
    kept: set[str] = set()
    for rp in plan.regions:
        decisions = []
        whole = rp.region.vaddr in loaded
        for d in rp.decisions:
            if d.reason in (Reason.LOADED, Reason.KEEP_PTX):
                syms = symbols.get(d.element.offset)
                # Nothing to judge by (unknown kind; or no kernels and no
                # variables, like nvcc's device-link stub): kept.
                used = (
                    whole
                    or syms is None
                    or not (syms.kernels or syms.variables)
                    or syms.has_managed
                    or bool(kernels.intersection(syms.kernels))
                    or any(v.name in variables for v in syms.variables)
                )
                if not used:
                    d = Decision(d.element, Reason.NOT_USED, d.targets)
                if syms is not None:
                    (kept if used else dropped).update(syms.kernels)
            decisions.append(d)
        regions.append(RegionPlan(rp.region, tuple(decisions)))
    return Plan(
        plan.targets,
        plan.keep_ptx,
        tuple(regions),
        plan.left_alone,
        plan.drop_lto,
        tuple(sorted(dropped - kept)),
    )
