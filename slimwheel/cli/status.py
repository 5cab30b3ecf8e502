"""``slimwheel status``: what slim-env replaced in an environment, for which targets."""

from __future__ import annotations

import argparse
from typing import Any

from ..env import env_status
from .options import add_env_options, human, sites, store_from

HELP = "show which libraries of an environment are slimmed, and the space saved"


def configure_parser(sub: Any) -> argparse.ArgumentParser:
    p: argparse.ArgumentParser = sub.add_parser("status", help=HELP, description=HELP + ".")
    add_env_options(p)
    return p


def execute(args: argparse.Namespace) -> int:
    store = store_from(args)
    saved = 0
    for site, conda in sites(args):
        for e in env_status(site, store, conda=conda):
            saved += e.original_size - e.slim_size
            profile = f", profile {e.profile_digest[:8]}" if e.profile_digest else ""
            backup = "" if e.backup else ", no backup"
            print(
                f"{e.path}: slimmed for {','.join(e.targets)}{profile}{backup}: "
                f"{human(e.original_size)} -> {human(e.slim_size)}"
            )
    print(f"saved {human(saved)}")
    return 0
