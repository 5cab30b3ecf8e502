"""The smallest holes of the two kinds: zero runs of device code and removed host code."""

from __future__ import annotations

import pytest

from slimwheel.arch import parse_targets
from slimwheel.hostcode import MAX_HOST_HOLES
from slimwheel.hostuse import HostUse
from slimwheel.layout import DEFAULT_HOST_MIN_HOLE, DEFAULT_MIN_HOLE
from slimwheel.policy import LibraryPolicy, SlimPolicy
from slimwheel.profile import Profile

SM90 = parse_targets(["sm_90"])


def test_each_kind_has_its_default_and_min_hole_sets_both() -> None:
    lib = SlimPolicy(targets=SM90).for_library("libx.so")
    assert (lib.min_hole, lib.host_min_hole) == (DEFAULT_MIN_HOLE, DEFAULT_HOST_MIN_HOLE)
    assert DEFAULT_HOST_MIN_HOLE < DEFAULT_MIN_HOLE
    lib = SlimPolicy(targets=SM90, min_hole=4096).for_library("libx.so")
    assert (lib.min_hole, lib.host_min_hole) == (4096, 4096)
    lib = SlimPolicy(targets=SM90, min_hole=0).for_library("libx.so")
    assert (lib.min_hole, lib.host_min_hole) == (0, 0), "0 is a size, not the default"


HOST = Profile(host_recorded=True)


def _cpu(**kw: object) -> SlimPolicy:
    return SlimPolicy(targets=SM90, profile=HOST, cpu=True, **kw)  # type: ignore[arg-type]


def test_labels_and_provenance_name_the_host_rules() -> None:
    assert SlimPolicy(targets=SM90).layout_options() == {}
    assert SlimPolicy(targets=SM90, min_hole=DEFAULT_MIN_HOLE).layout_options() == {}
    assert SlimPolicy(targets=SM90).provenance().get("host_holes") is None
    labels = {
        _cpu().label,
        _cpu(min_hole=DEFAULT_MIN_HOLE).label,  # 64K of host code: not the default
        _cpu(compact=False).label,
        _cpu(compact=False, min_hole=4096).label,  # --no-compact still takes host holes
        SlimPolicy(targets=SM90, profile=HOST).label,
    }
    assert len(labels) == 5
    assert _cpu().provenance()["host_holes"] == [DEFAULT_HOST_MIN_HOLE, MAX_HOST_HOLES]
    assert _cpu(min_hole=4096).provenance()["host_holes"] == [4096, MAX_HOST_HOLES]


def test_host_hole_rules_are_in_the_store_key() -> None:
    use = HostUse(4096, ((0, 1),))
    base = LibraryPolicy(targets=SM90, cpu=True, host=use)
    assert base.store_key("0" * 64) != LibraryPolicy(targets=SM90, cpu=True).store_key("0" * 64)
    keys = {
        base.store_key("0" * 64),
        LibraryPolicy(targets=SM90, cpu=True, host=use, host_min_hole=4096).store_key("0" * 64),
        LibraryPolicy(targets=SM90).store_key("0" * 64),
    }
    assert len(keys) == 3
    # the device-only key does not change with the host rules
    assert LibraryPolicy(targets=SM90, host_min_hole=4096).store_key("0" * 64) == LibraryPolicy(
        targets=SM90
    ).store_key("0" * 64)


def test_the_command_line_leaves_each_default_alone() -> None:
    import argparse

    from slimwheel.cli.options import add_policy_options, policy_from

    parser = argparse.ArgumentParser()
    add_policy_options(parser)
    lib = policy_from(parser.parse_args(["--arch", "sm_90"])).for_library("libx.so")
    assert (lib.min_hole, lib.host_min_hole) == (DEFAULT_MIN_HOLE, DEFAULT_HOST_MIN_HOLE)
    args = parser.parse_args(["--arch", "sm_90", "--min-hole", "8K"])
    lib = policy_from(args).for_library("libx.so")
    assert (lib.min_hole, lib.host_min_hole) == (8192, 8192)


def test_outputs_of_the_earlier_rules_keep_their_keys_and_labels_apart(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The key and label a --cpu output had under 64 KiB / 256 (no host rules named, as
    options at their defaults are absent) are not those of today's defaults; nor is the
    key of another cap."""
    from slimwheel import policy as policy_mod

    use = HostUse(4096, ((0, 1),))
    sha = "0" * 64
    earlier_key = policy_mod._digest({
        "library": sha, "targets": ["sm_90"], "keep_ptx": False, "profile": None,
        "format": policy_mod.FORMAT_VERSION, "options": {"cpu": use.digest()},
    })  # fmt: skip
    now = LibraryPolicy(targets=SM90, cpu=True, host=use).store_key(sha)
    assert now != earlier_key
    earlier_label = f"sm90.cpu.p{HOST.digest()[:8]}"
    assert _cpu().label != earlier_label and _cpu().label.startswith(earlier_label + ".x")
    monkeypatch.setattr(policy_mod, "MAX_HOST_HOLES", MAX_HOST_HOLES * 2)
    assert LibraryPolicy(targets=SM90, cpu=True, host=use).store_key(sha) != now
