"""``slimwheel cache info | list | verify | prune --max-size SIZE | clear``: the store."""

from __future__ import annotations

import argparse
from typing import Any

from .options import add_store_option, human, parse_size, store_from

HELP = "show, check or trim the store of slimmed libraries"


def configure_parser(sub: Any) -> argparse.ArgumentParser:
    p: argparse.ArgumentParser = sub.add_parser("cache", help=HELP, description=HELP + ".")
    add_store_option(p)
    actions = p.add_subparsers(dest="action", metavar="ACTION")
    actions.required = True
    actions.add_parser("info", help="where the store is and how big")
    actions.add_parser("list", help="every entry")
    actions.add_parser(
        "verify", help="re-hash every entry; report and remove those whose bytes changed"
    )
    prune = actions.add_parser("prune", help="remove least recently used entries")
    prune.add_argument("--max-size", type=parse_size, required=True, metavar="SIZE")
    actions.add_parser("clear", help="remove every entry")
    return p


def execute(args: argparse.Namespace) -> int:
    store = store_from(args)
    if args.action == "info":
        entries = store.entries()
        print(f"store: {store.root}")
        print(f"entries: {len(entries)}, {human(sum(e.disk_bytes for e in entries))}")
    elif args.action == "list":
        for e in store.entries():
            print(f"{e.key}  {human(e.size):>10}  sha256 {e.meta['sha256'][:16]}")
    elif args.action == "verify":
        checked, bad = store.verify()
        for key, problem in bad:
            print(f"removed {key}: {problem}")
        print(f"checked {checked} entries: {checked - len(bad)} intact, {len(bad)} removed")
        return 1 if bad else 0
    elif args.action == "prune":
        removed = store.prune(args.max_size)
        print(f"removed {len(removed)} entries ({human(sum(e.disk_bytes for e in removed))})")
    else:
        print(f"removed {store.clear()} entries")
    return 0
