"""``slimwheel status``: what slim-env replaced in an environment, for which targets."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from ..elf import open_elf
from ..env import env_status
from ..errors import SlimwheelError
from ..guard import env_guard_installed
from ..identity import describe, installed_identities, prefix_identities
from ..note import read_note
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
            profile = f", profile {e.profile_digest[:12]}" if e.profile_digest else ""
            backup = "" if e.backup else ", no backup"
            print(
                f"{e.path}: slimmed for {','.join(e.targets)}{profile}{backup}: "
                f"{human(e.original_size)} -> {human(e.slim_size)}{_host(site / e.path)}"
            )
        if not conda and env_guard_installed(site):
            print(f"guard installed in {site} (slimwheel slim-env --guard)")
        builds = prefix_identities(site) if conda else installed_identities(site)
        for b in builds:  # slim builds installed as such (from slim wheels or packages)
            print(f"installed: {describe(b.to_json())}")
    print(f"saved {human(saved)}")
    return 0


def _host(path: Path) -> str:
    """The host code --cpu removed from an installed library (its note), for the line."""
    try:
        with open_elf(path) as elf:
            note = read_note(elf)
    except (OSError, SlimwheelError):
        return ""
    if note is None:
        return ""
    removed = sum(b - a for a, b in note.ranges)
    functions = sum(1 for u in note.units if u.function)
    return f", host code -{human(removed)} ({functions} functions, --cpu)"
