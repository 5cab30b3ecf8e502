"""``slimwheel slim-env --arch TARGET [--python PATH]``: slim an installed environment in place."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

from ..env import site_dirs, slim_env
from ..errors import UsageError
from .inspect import human
from .options import (
    add_profile_options,
    add_store_option,
    add_target_options,
    profile_from,
    store_from,
    targets_from,
)

HELP = "slim every CUDA library of an installed environment in place (undo: restore)"


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


def configure_parser(sub: Any) -> argparse.ArgumentParser:
    p: argparse.ArgumentParser = sub.add_parser("slim-env", help=HELP, description=HELP + ".")
    add_target_options(p, required=True)
    add_profile_options(p)
    add_env_options(p)
    p.add_argument("--dry-run", action="store_true", help="print the plan; change nothing")
    p.add_argument(
        "--no-backup",
        action="store_true",
        help="do not keep the originals (restore is then impossible)",
    )
    return p


def execute(args: argparse.Namespace) -> int:
    targets = targets_from(args)
    store = store_from(args)
    total_before = total_after = 0
    for site, conda in sites(args):
        changes = slim_env(
            site,
            store,
            conda=conda,
            targets=targets,
            keep_ptx=args.keep_ptx,
            drop_lto=args.drop_lto,
            profile=profile_from(args),
            only=args.only,
            dry_run=args.dry_run,
            backup=not args.no_backup,
        )
        for c in changes:
            note = f"  ({c.skipped})" if c.skipped else ""
            print(f"{c.path}: {human(c.before)} -> {human(c.after)}{note}")
            total_before += c.before
            total_after += c.after
    verb = "would save" if args.dry_run else "saved"
    print(f"{verb} {human(total_before - total_after)} of {human(total_before)}")
    return 0
