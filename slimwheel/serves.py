"""Which GPUs a slim build serves, by the driver's rule, and how installers are told.

A slim library *serves* a compute capability when, on a GPU of it, every
fatbin region the driver could load from in the original still has an
element the driver can load (``arch.can_run``), and at least one region has
one (a library with nothing for that GPU serves it no better than nothing).
Elements a profile removed count as kept here: a profile narrows what a
workload runs, not which GPUs the build is for. A package serves what all of
its slim libraries serve. This is exact for every capability ``3.0`` to
``15.9``: a build for ``sm_90`` serves ``9.x``; ``sm_80`` + ``sm_90`` serves
``8.x`` and ``9.x``; a region whose only kept cubin is arch-specific
(``sm_90a``) serves exactly ``9.0``; kept PTX (``--keep-ptx``) serves newer
GPUs as far as every region kept some.

conda learns it as a ``__cuda_arch`` dependency (the virtual package holds
the lowest compute capability of the host's devices, ``{major}.{minor}``):
``__cuda_arch >=8.0,<10``.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence

from .arch import Target, can_run
from .errors import InputError
from .fatbin import Element
from .plan import Plan, Reason

#: Every compute capability a build is judged on, in order.
CAPABILITIES: tuple[Target, ...] = tuple(
    Target(major, minor) for major in range(3, 16) for minor in range(10)
)


_Shape = tuple[tuple[int, str, bool, bool], ...]
_RUNNABLE: dict[_Shape, frozenset[Target]] = {}


def _runnable(elements: Sequence[Element]) -> frozenset[Target]:
    """The capabilities some element of ``elements`` can run on (by shape, cached:
    a library's regions come in a few arch layouts)."""
    shape = tuple(sorted({(e.arch, e.variant.value, e.is_cubin, e.is_ptx) for e in elements}))
    got = _RUNNABLE.get(shape)
    if got is None:
        got = frozenset(c for c in CAPABILITIES if any(can_run(e, c) for e in elements))
        _RUNNABLE[shape] = got
    return got


def _kept_for_arch(reason: Reason) -> bool:
    return reason.keeps or reason is Reason.NOT_USED


def plan_serves(plan: Plan) -> tuple[frozenset[Target], frozenset[Target]]:
    """(capabilities no region of the slim library fails on where the original ran,
    capabilities some region of the slim library runs on)."""
    ok = set(CAPABILITIES)
    covered: set[Target] = set()
    for rp in plan.regions:
        everything = [d.element for d in rp.decisions]
        kept = [d.element for d in rp.decisions if _kept_for_arch(d.reason)]
        slim = _runnable(kept)
        covered |= slim
        if len(kept) != len(everything):
            ok -= _runnable(everything) - slim
    return frozenset(ok), frozenset(covered)


def package_serves(
    libraries: Iterable[tuple[Iterable[Target], Iterable[Target]]],
) -> frozenset[Target] | None:
    """What a package of slim libraries serves, from each library's ``plan_serves``;
    None when none of them has device code (a build for every host)."""
    ok = set(CAPABILITIES)
    covered: set[Target] = set()
    coded = False
    for lib_ok, lib_covered in libraries:
        lib_ok, lib_covered = set(lib_ok), set(lib_covered)
        if not lib_covered and len(lib_ok) == len(CAPABILITIES):
            continue  # no device code (--strip alone changed it)
        coded = True
        ok &= lib_ok
        covered |= lib_covered
    return frozenset(ok & covered) if coded else None


def _version(t: Target) -> str:
    return f"{t.major}.{t.minor}"


def cuda_arch_spec(served: Iterable[Target]) -> str:
    """The version spec of ``__cuda_arch`` that matches exactly ``served``:
    ``>=8.0,<10``; ``>=9.0,<9.1``; runs joined with ``|``. Empty: nothing."""
    want = set(served)
    runs: list[str] = []
    i = 0
    while i < len(CAPABILITIES):
        if CAPABILITIES[i] not in want:
            i += 1
            continue
        j = i
        while j + 1 < len(CAPABILITIES) and CAPABILITIES[j + 1] in want:
            j += 1
        low = _version(CAPABILITIES[i])
        if j + 1 == len(CAPABILITIES):
            runs.append(f">={low}")
        else:
            nxt = CAPABILITIES[j + 1]
            high = str(nxt.major) if nxt.minor == 0 else _version(nxt)
            runs.append(f">={low},<{high}")
        i = j + 1
    return "|".join(runs)


def to_json(targets: Iterable[Target]) -> list[str]:
    return sorted((_version(t) for t in targets), key=lambda v: tuple(map(int, v.split("."))))


def from_json(versions: Iterable[object], where: str) -> frozenset[Target]:
    """Capabilities written by ``to_json`` (store entries); anything else is refused."""
    out = set()
    for v in versions:
        parts = v.split(".") if isinstance(v, str) else []
        if len(parts) != 2 or not all(p.isdigit() and len(p) <= 2 for p in parts):
            raise InputError(f"not a compute capability: {v!r}", path=where)
        out.add(Target(int(parts[0]), int(parts[1])))
    return frozenset(out)
