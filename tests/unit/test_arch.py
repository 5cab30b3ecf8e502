"""Targets and the driver's selection rule."""

from __future__ import annotations

from pathlib import Path

import pytest

from slimwheel.arch import Target, driver_choice, parse_targets
from slimwheel.elf import open_elf
from slimwheel.errors import ArchError
from slimwheel.fatbin import Element, ElementFlag, scan
from slimwheel.plan import Reason, plan_layout


def el(name: str, offset: int = 0) -> Element:
    """An element header as nvcc writes it for ``sm_90a`` / ``compute_120f``."""
    kind = 1 if name.startswith("compute_") else 2
    digits = name.split("_")[1]
    flags = ElementFlag.ADDR64 | ElementFlag.HOST_LINUX
    if digits.endswith("a"):
        flags |= ElementFlag.ARCH_SPECIFIC
    elif digits.endswith("f"):
        flags |= ElementFlag.FAMILY
    arch = int(digits.rstrip("af"))
    return Element(offset, kind, 0x101, 64, 64, 0, 0, (1, 8), arch, "", int(flags), 0)


def choose(names: list[str], target: str) -> list[str]:
    elements = [el(n, i) for i, n in enumerate(names)]
    (t,) = parse_targets([target])
    return [e.arch_name for e in driver_choice(elements, t)]


@pytest.mark.parametrize(
    ("spec", "expected"),
    [
        ("sm_90", [Target(9, 0)]),
        ("sm_90a", [Target(9, 0)]),
        ("9.0", [Target(9, 0)]),
        ("90", [Target(9, 0)]),
        ("sm_100,sm_80", [Target(8, 0), Target(10, 0)]),
        ("H100", [Target(9, 0)]),
        ("nvidia h200", [Target(9, 0)]),
        ("T4", [Target(7, 5)]),
        ("RTX 4090", [Target(8, 9)]),
        ("geforce-rtx-5090", [Target(12, 0)]),
        ("B300", [Target(10, 3)]),
        ("sm_121", [Target(12, 1)]),
    ],
)
def test_parse_targets(spec: str, expected: list[Target]) -> None:
    assert list(parse_targets([spec])) == expected


@pytest.mark.parametrize("spec", ["sm_9", "Z100", "", "sm_90b", "12.x"])
def test_unknown_targets_are_errors(spec: str) -> None:
    with pytest.raises(ArchError):
        parse_targets([spec])


@pytest.mark.parametrize(
    ("names", "target", "expected"),
    [
        (["sm_80", "sm_86", "sm_90"], "sm_86", ["sm_86"]),
        (["sm_80", "sm_86", "sm_90"], "sm_89", ["sm_86"]),
        (["sm_80", "sm_86", "sm_90"], "sm_80", ["sm_80"]),
        (["sm_90", "sm_90a"], "sm_90", ["sm_90a"]),
        (["sm_90a"], "sm_90", ["sm_90a"]),
        (["sm_90a", "compute_90"], "sm_100", ["compute_90"]),
        (["sm_100a", "sm_100"], "sm_103", ["sm_100"]),
        (["sm_100f"], "sm_103", ["sm_100f"]),
        (["sm_103f"], "sm_100", []),
        (["sm_100f", "sm_100"], "sm_100", ["sm_100f", "sm_100"]),
        (["sm_75", "compute_75"], "sm_90", ["compute_75"]),
        (["sm_75", "compute_75", "compute_86"], "sm_90", ["compute_86"]),
        (["sm_90", "compute_90"], "sm_90", ["sm_90"]),
        (["compute_120f"], "sm_121", ["compute_120f"]),
        (["compute_120f"], "sm_130", []),
        (["compute_90a"], "sm_100", []),
        (["sm_75"], "sm_80", []),
        (["sm_120"], "sm_90", []),
    ],
)
def test_driver_choice(names: list[str], target: str, expected: list[str]) -> None:
    assert choose(names, target) == expected


def test_plan_on_fixture(fixture_libs: dict[str, Path]) -> None:
    with open_elf(fixture_libs["many_size"]) as elf:
        layout = scan(elf)
    plan = plan_layout(layout, parse_targets(["sm_90"]))
    tu = max(plan.regions, key=lambda rp: len(rp.decisions))
    reasons = {d.element.arch_name: d.reason for d in tu.decisions}
    assert reasons == {
        "sm_75": Reason.WRONG_ARCH,
        "sm_80": Reason.WRONG_ARCH,
        "sm_86": Reason.WRONG_ARCH,
        "sm_90": Reason.SUPERSEDED,
        "sm_90a": Reason.LOADED,
        "sm_100f": Reason.WRONG_ARCH,
        "sm_120": Reason.WRONG_ARCH,
        "compute_75": Reason.PTX_NOT_NEEDED,
        "compute_120": Reason.WRONG_ARCH,
    }
    assert tu.removed_bytes == sum(d.element.size for d in tu.decisions if not d.keep)
    keep = plan_layout(layout, parse_targets(["sm_90"]), keep_ptx=True)
    tu = max(keep.regions, key=lambda rp: len(rp.decisions))
    kept = {d.element.arch_name for d in tu.decisions if d.keep}
    assert kept == {"sm_90a", "compute_120"}
    # Two targets keep the union; an sm_100 GPU loads the sm_100f cubin.
    both = plan_layout(layout, parse_targets(["sm_90,B200"]))
    tu = max(both.regions, key=lambda rp: len(rp.decisions))
    assert {d.element.arch_name for d in tu.decisions if d.keep} == {"sm_90a", "sm_100f"}


def test_native_asks_the_driver() -> None:
    import ctypes

    try:
        ctypes.CDLL("libcuda.so.1")
    except OSError:
        with pytest.raises(ArchError, match="no NVIDIA driver"):
            parse_targets(["native"])
    else:
        assert parse_targets(["native"])  # the GPUs of this machine
