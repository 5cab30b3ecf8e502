"""``slimwheel restore [--only DIST]``: put back the originals slim-env replaced."""

from __future__ import annotations

import argparse
from typing import Any

from ..env import restore_env
from ..guard import remove_env_guard
from .options import add_env_options, human, sites, store_from

HELP = "restore the original libraries of an environment slimmed with slim-env"


def configure_parser(sub: Any) -> argparse.ArgumentParser:
    p: argparse.ArgumentParser = sub.add_parser("restore", help=HELP, description=HELP + ".")
    add_env_options(p)
    return p


def execute(args: argparse.Namespace) -> int:
    store = store_from(args)
    for site, conda in sites(args):
        for c in restore_env(site, store, only=args.only, conda=conda):
            print(f"{c.path}: restored ({human(c.after)})")
        if not conda and not args.only and remove_env_guard(site):
            print("guard removed")
    return 0
