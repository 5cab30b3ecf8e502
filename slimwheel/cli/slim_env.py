"""``slimwheel slim-env --arch TARGET [--python PATH]``: slim an installed environment in place."""

from __future__ import annotations

import argparse
from typing import Any

from ..env import slim_env
from ..errors import UsageError
from ..guard import build_guard, install_env_guard
from .options import (
    add_env_options,
    add_jobs_option,
    add_policy_options,
    human,
    policy_from,
    sites,
    store_from,
    warn,
)

HELP = "slim every CUDA library of an installed environment in place (undo: restore)"


def configure_parser(sub: Any) -> argparse.ArgumentParser:
    p: argparse.ArgumentParser = sub.add_parser("slim-env", help=HELP, description=HELP + ".")
    add_policy_options(p)
    add_env_options(p)
    add_jobs_option(p)
    p.add_argument("--dry-run", action="store_true", help="print the plan; change nothing")
    p.add_argument(
        "--no-backup",
        action="store_true",
        help="do not keep the originals (restore is then impossible)",
    )
    p.add_argument(
        "--guard",
        action="store_true",
        help="also install the host code guard for every Python process of the environment "
        "(a .pth file; restore removes it; see slimwheel doctor for the full guard)",
    )
    return p


def execute(args: argparse.Namespace) -> int:
    policy = policy_from(args)
    if args.guard and args.prefix:
        raise UsageError("--guard: for a Python environment (--python), not a conda prefix")
    store = store_from(args)
    total_before = total_after = 0
    for site, conda in sites(args):
        changes = slim_env(
            site,
            store,
            policy,
            conda=conda,
            only=args.only,
            dry_run=args.dry_run,
            backup=not args.no_backup,
            jobs=args.jobs,
        )
        for c in changes:
            if c.note:
                warn(c.note)
            note = f"  ({c.skipped})" if c.skipped else ""
            print(f"{c.path}: {human(c.before)} -> {human(c.after)}{note}")
            total_before += c.before
            total_after += c.after
        if args.guard and not args.dry_run:
            install_env_guard(site, build_guard(store.root / "recorder" / "guard", cuda=False))
            print(f"guard installed: every Python process of {site} loads it")
    verb = "would save" if args.dry_run else "saved"
    print(f"{verb} {human(total_before - total_after)} of {human(total_before)}")
    return 0
