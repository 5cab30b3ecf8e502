"""``slimwheel index DIR... -o SITE`` and ``slimwheel index serve SITE [--port N]``."""

from __future__ import annotations

import argparse
import contextlib
import sys
from pathlib import Path
from typing import Any

from ..errors import UsageError
from ..index import build_index
from ..serve import make_server

HELP = "publish wheels as a static package index, one per target set (or serve one)"


def configure_parser(sub: Any) -> argparse.ArgumentParser:
    p: argparse.ArgumentParser = sub.add_parser(
        "index",
        help=HELP,
        description=HELP + ". Usage: slimwheel index DIR... -o SITE; "
        "slimwheel index serve SITE [--port N] [--log FILE]",
    )
    p.add_argument("-o", "--output", metavar="SITE", help="the site directory to write")
    p.add_argument("--port", type=int, default=8000, help="serve: the port on 127.0.0.1")
    p.add_argument("--log", metavar="FILE", help="serve: write the request log here")
    p.add_argument(
        "--variants",
        action="store_true",
        help="EXPERIMENTAL: also publish the target builds as wheel variants "
        "(PEP 817/825 drafts) in SITE/variants/simple/",
    )
    p.add_argument("words", nargs="+", metavar="DIR | serve SITE")
    return p


def execute(args: argparse.Namespace) -> int:
    if args.words[0] == "serve":
        if len(args.words) != 2:
            raise UsageError("usage: slimwheel index serve SITE [--port N]")
        site = Path(args.words[1])
        if not (site / "simple").is_dir():
            raise UsageError(f"{site}: not a slimwheel index (no simple/)")
        log = open(args.log, "a") if args.log else sys.stderr  # noqa: SIM115
        server = make_server(site, args.port, log)
        print(f"serving {site} on http://127.0.0.1:{server.server_address[1]}/", file=sys.stderr)
        with contextlib.suppress(KeyboardInterrupt):
            server.serve_forever()
        return 0
    if not args.output:
        raise UsageError("index: -o SITE is required")
    sources = [Path(w) for w in args.words]
    for s in sources:
        if not s.exists():
            raise UsageError(f"{s}: no such directory or wheel")
    wheels, stats = build_index(sources, Path(args.output), variants=args.variants)
    targets = sorted({w.targets for w in wheels if w.targets})
    print(
        f"{args.output}: {len(wheels)} wheels; indexes: simple/"
        + "".join(f", {t}/simple/" for t in targets)
        + f" ({stats['written']} files written, {stats['reused']} unchanged)"
    )
    return 0
