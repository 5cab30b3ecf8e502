"""Which GPUs a slim build serves (serves.py), against fixture libraries built with nvcc."""

from __future__ import annotations

from pathlib import Path

import pytest

from slimwheel.arch import Target, parse_targets
from slimwheel.elf import ElfFile, map_file
from slimwheel.errors import InputError
from slimwheel.fatbin import scan
from slimwheel.policy import LibraryPolicy
from slimwheel.serves import (
    CAPABILITIES,
    cuda_arch_spec,
    from_json,
    package_serves,
    plan_serves,
    to_json,
)
from slimwheel.slim import make_plan


def _spec(lib: Path, arch: str, *, keep_ptx: bool = False) -> str:
    with map_file(lib) as buf:
        plan = make_plan(
            buf,
            str(lib),
            scan(ElfFile(buf, str(lib))),
            LibraryPolicy(targets=parse_targets([arch]), keep_ptx=keep_ptx),
        )
    served = package_serves([plan_serves(plan)])
    assert served is not None
    return cuda_arch_spec(served)


def test_spec_text() -> None:
    caps = {Target(8, m) for m in range(10)} | {Target(9, m) for m in range(10)}
    assert cuda_arch_spec(caps) == ">=8.0,<10"
    assert cuda_arch_spec({Target(9, 0)}) == ">=9.0,<9.1"
    assert cuda_arch_spec({Target(8, 6), Target(8, 7), Target(12, 0)}) == (
        ">=8.6,<8.8|>=12.0,<12.1"
    )
    assert cuda_arch_spec({c for c in CAPABILITIES if c >= Target(12, 0)}) == ">=12.0"
    assert cuda_arch_spec(()) == ""
    assert from_json(to_json(caps), "x") == caps
    with pytest.raises(InputError, match="not a compute capability"):
        from_json(["9.0", "sm_90"], "entry")


def test_the_drivers_rule(fixture_libs: dict[str, Path]) -> None:
    """many_none: sm_75, sm_80, sm_86, sm_90, sm_90a, sm_100f, sm_120 cubins,
    compute_75 and compute_120 PTX."""
    lib = fixture_libs["many_none"]
    assert _spec(lib, "sm_86") == ">=8.6,<9"  # sm_86: not on 8.0, where sm_80 ran
    assert _spec(lib, "sm_80,sm_86") == ">=8.0,<9"
    # On 9.0 the driver takes sm_90a, which runs on 9.0 only; 9.1+ would need sm_90.
    assert _spec(lib, "sm_90") == ">=9.0,<9.1"
    assert _spec(lib, "sm_100") == ">=10.0,<11"  # the family cubin: 10.x
    # PTX compute_120 kept: the original JIT-compiles it on 13.0 and up, so may the slim build.
    assert _spec(lib, "sm_120", keep_ptx=True) == ">=12.0"
    assert _spec(lib, "sm_120") == ">=12.0,<13"


def test_a_package_serves_what_all_its_libraries_serve() -> None:
    eight = {Target(8, m) for m in range(10)}
    nine = {Target(9, m) for m in range(10)}
    everything = set(CAPABILITIES)
    # Library A serves 8.x and 9.x, library B 9.x; B has no code for 8.x at all.
    a = (everything, eight | nine)
    b = (everything, nine)
    assert package_serves([a, b]) == frozenset(eight | nine)
    # Where one library lost what the original ran there, the package does not serve it.
    c = (everything - eight, nine)
    assert package_serves([a, c]) == frozenset(nine)
    # No device code at all (--strip alone changed the package): every host.
    assert package_serves([(everything, set())]) is None
