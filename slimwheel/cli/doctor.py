"""``slimwheel doctor -- COMMAND...``: run a command with the guard.

When the command runs host code that ``--cpu`` removed, the guard prints one
line naming the library, the function and the profile, and what to do.
"""

from __future__ import annotations

import argparse
from typing import Any

from ..errors import UsageError
from ..guard import build_guard, run_guarded
from .options import add_store_option, store_from

HELP = "run a command with the guard that names removed host code it runs"


def configure_parser(sub: Any) -> argparse.ArgumentParser:
    p: argparse.ArgumentParser = sub.add_parser(
        "doctor", help=HELP, description=HELP + ". Usage: slimwheel doctor -- COMMAND..."
    )
    add_store_option(p)
    p.add_argument("words", nargs=argparse.REMAINDER, metavar="-- COMMAND")
    return p


def execute(args: argparse.Namespace) -> int:
    words = list(args.words)
    if words and words[0] == "--":
        words = words[1:]
    if not words:
        raise UsageError("usage: slimwheel doctor -- COMMAND...")
    store = store_from(args)
    return run_guarded(words, build_guard(store.root / "recorder" / "guard"))
