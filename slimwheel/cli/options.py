"""Flags shared by several subcommands, defined once."""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING

from ..arch import Target, parse_targets
from ..env import site_dirs
from ..errors import UsageError
from ..policy import SlimPolicy
from ..profile import load_profile, merge
from ..store import Store

if TYPE_CHECKING:
    from rich.console import Console


def add_policy_options(
    parser: argparse.ArgumentParser, *, required: bool = True, layout: bool = True
) -> None:
    """Every slimming option (the fields of :class:`SlimPolicy`), defined once.

    ``layout``: also the file layout options (commands that write libraries).
    """
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
    parser.add_argument(
        "--cpu",
        action="store_true",
        help="also remove host code the profile never ran, whole functions, from the "
        "libraries the profile saw loaded (needs a profile recorded with host code use; "
        "removed code faults: see slimwheel doctor)",
    )
    parser.add_argument(
        "--min-hole",
        type=parse_size,
        default=None,
        metavar="SIZE",
        help="smallest run of removed bytes taken out of the file (default 64K of zeroed "
        "device code, 16K of host code with --cpu; each costs a PT_LOAD)",
    )
    parser.add_argument(
        "--leave-section",
        action="append",
        default=[],
        metavar="NAME",
        help="do not slim the regions of this section (may be repeated)",
    )
    if layout:
        parser.add_argument(
            "--no-compact",
            action="store_true",
            help="zero removed bytes but keep the file layout (same size on disk)",
        )
        parser.add_argument(
            "--strip",
            action="store_true",
            help="also remove what no process maps: DWARF (.debug_*) and the static symbol "
            "table (.symtab/.strtab), from every ELF library, with device code or not",
        )


def targets_from(args: argparse.Namespace) -> tuple[Target, ...]:
    specs: Sequence[str] | None = args.arch
    return parse_targets(specs) if specs else ()


def policy_from(args: argparse.Namespace) -> SlimPolicy:
    """The one policy of a run, from the flags :func:`add_policy_options` defined."""
    if args.profile_match != "hash" and not args.profile:
        raise UsageError("--profile-match needs --profile")
    profile = merge(load_profile(p) for p in args.profile) if args.profile else None
    return SlimPolicy(
        targets=targets_from(args),
        keep_ptx=args.keep_ptx,
        drop_lto=args.drop_lto,
        leave_sections=tuple(args.leave_section),
        profile=profile,
        profile_by_name=args.profile_match == "name",
        compact=not getattr(args, "no_compact", False),
        min_hole=getattr(args, "min_hole", None),
        strip=getattr(args, "strip", False),
        cpu=args.cpu,
    )


def warn(note: str) -> None:
    """A warning for the user, on stderr."""
    print(f"slimwheel: warning: {note}", file=sys.stderr)


def human(n: int | float) -> str:
    value = float(n)
    for unit in ("B", "KB", "MB", "GB"):
        if abs(value) < 1000 or unit == "GB":
            return f"{value:.0f} {unit}" if unit == "B" else f"{value:.1f} {unit}"
        value /= 1000
    raise AssertionError("unreachable")


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


def add_store_option(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--store",
        metavar="DIR",
        help="the store of slimmed libraries (default: $SLIMWHEEL_STORE or the user cache)",
    )


def positive_int(text: str) -> int:
    """An option's value that counts something: a whole number, at least 1."""
    try:
        n = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a number: {text!r}") from None
    if n < 1:
        raise argparse.ArgumentTypeError("at least 1")
    return n


def _cores() -> int:
    """The CPUs this process may run on (its affinity), not the machine's count."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except (AttributeError, OSError):
        return os.cpu_count() or 1


def add_jobs_option(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--jobs",
        "-j",
        type=positive_int,
        default=_cores(),
        metavar="N",
        help="libraries slimmed in parallel (default: the cores this process may use)",
    )


def store_from(args: argparse.Namespace) -> Store:
    """The store a command uses; what dead runs left in it is removed first."""
    store = Store(args.store) if args.store else Store()
    store.clean()
    return store


def add_env_options(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--python",
        default=sys.executable,
        metavar="PATH",
        help="the environment's interpreter (default: the one running slimwheel)",
    )
    p.add_argument(
        "--prefix", metavar="DIR", help="a conda prefix (its conda-meta records are kept in step)"
    )
    p.add_argument(
        "--only",
        action="append",
        default=[],
        metavar="DIST",
        help="only these distributions (repeatable)",
    )
    add_store_option(p)


def sites(args: argparse.Namespace) -> list[tuple[Path, bool]]:
    """(root, is a conda prefix) of each place to work on."""
    if args.prefix:
        prefix = Path(args.prefix).resolve()
        if not (prefix / "conda-meta").is_dir():
            raise UsageError(f"{args.prefix}: not a conda prefix (no conda-meta/)")
        return [(prefix, True)]
    return [(site, False) for site in site_dirs(args.python)]


def make_console() -> Console:
    """stdout console; wide lines when stdout is not a terminal (no wrapping in logs)."""
    from rich.console import Console  # imported when output is drawn: it is slow to load

    return Console(highlight=False, width=None if sys.stdout.isatty() else 200)


def add_output_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--json", action="store_true", help="print a JSON document (see schemas/)")
    parser.add_argument("-q", "--quiet", action="store_true", help="no progress bar")
