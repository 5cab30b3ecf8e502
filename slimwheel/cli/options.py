"""Flags shared by several subcommands, defined once."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from typing import TYPE_CHECKING

from ..arch import Target, parse_targets
from ..profile import LibraryUsage, Profile, load_profile, merge
from ..store import Store

if TYPE_CHECKING:
    from rich.console import Console


def add_target_options(parser: argparse.ArgumentParser, *, required: bool) -> None:
    parser.add_argument(
        "--arch",
        action="append",
        metavar="TARGET",
        required=required,
        help="GPU(s) to keep device code for: sm_90, 9.0, 90, a GPU name (H100, 'RTX 4090'), "
        "native, or a comma list; may be repeated",
    )
    parser.add_argument(
        "--keep-ptx",
        action="store_true",
        help="also keep, per region, the newest PTX (forward compatibility with newer GPUs)",
    )
    parser.add_argument(
        "--drop-lto",
        action="store_true",
        help="also remove LTO-IR: the driver never loads it, but cuFFT LTO callbacks and "
        "cuSPARSE's JIT-LTO routines (cusparseSpMMOp) link it at run time and then fail",
    )


def targets_from(args: argparse.Namespace) -> tuple[Target, ...]:
    specs: Sequence[str] | None = args.arch
    return parse_targets(specs) if specs else ()


_UNITS = {"": 1, "K": 1 << 10, "M": 1 << 20, "G": 1 << 30}


def parse_size(text: str) -> int:
    """``65536``, ``64K``, ``2M``, ``1G`` (binary units)."""
    t = text.strip().upper().removesuffix("IB").removesuffix("B")
    unit = t[-1:] if t[-1:] in _UNITS else ""
    try:
        value = int(t[: len(t) - len(unit)])
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a size: {text!r}") from None
    if value < 0:
        raise argparse.ArgumentTypeError(f"not a size: {text!r}")
    return value * _UNITS[unit]


def add_profile_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--profile",
        action="append",
        default=[],
        metavar="P.json",
        help="also drop what this usage profile never used (repeatable: merged)",
    )
    parser.add_argument(
        "--profile-match",
        choices=("hash", "name"),
        default="hash",
        help="apply a profile to a library recorded from another build of it, by file name",
    )


def profile_from(args: argparse.Namespace) -> Profile | None:
    return merge(load_profile(p) for p in args.profile) if args.profile else None


def usage_for(
    profile: Profile | None, sha256: str, name: str, *, by_name: bool
) -> LibraryUsage | None:
    """The profile's record of this library; warns when only another build was recorded."""
    if profile is None:
        return None
    usage = profile.for_library(sha256, name, by_name=by_name)
    if usage is None and profile.same_name(name) is not None:
        print(
            f"slimwheel: warning: {name}: the profile was recorded on another build of it "
            "(SHA-256 differs); arch slimming only (--profile-match name applies it anyway)",
            file=sys.stderr,
        )
    return usage


def add_store_option(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--store",
        metavar="DIR",
        help="the store of slimmed libraries (default: $SLIMWHEEL_STORE or the user cache)",
    )


def store_from(args: argparse.Namespace) -> Store:
    return Store(args.store) if args.store else Store()


def make_console() -> Console:
    """stdout console; wide lines when stdout is not a terminal (no wrapping in logs)."""
    from rich.console import Console  # imported when output is drawn: it is slow to load

    return Console(highlight=False, width=None if sys.stdout.isatty() else 200)


def add_output_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--json", action="store_true", help="print a JSON document (see schemas/)")
    parser.add_argument("-q", "--quiet", action="store_true", help="no progress bar")
