"""``slimwheel index DIR... -o SITE`` and ``slimwheel index serve SITE [--port N]``."""

from __future__ import annotations

import argparse
import contextlib
import sys
from pathlib import Path
from typing import Any

from ..conda_index import build_channel
from ..errors import UsageError
from ..index import build_index
from ..serve import make_server

HELP = (
    "publish wheels as a static package index, or conda packages as a local channel "
    "(--conda), one per target set (or serve an index)"
)


def configure_parser(sub: Any) -> argparse.ArgumentParser:
    p: argparse.ArgumentParser = sub.add_parser(
        "index",
        help=HELP,
        description=HELP + ". Usage: slimwheel index DIR... -o SITE; "
        "slimwheel index --conda DIR... -o CHANNEL; "
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
    p.add_argument(
        "--conda",
        action="store_true",
        help="conda packages (.conda, .tar.bz2) into one channel, CHANNEL/<subdir>/, "
        "holding the originals and every slim build (a solver picks the slim build by the "
        "host's __cuda_arch)",
    )
    p.add_argument(
        "--per-target",
        action="store_true",
        help="with --conda: a channel per target set instead, CHANNEL/<targets>/<subdir>/ "
        "(the slim builds and the packages they do not replace), the originals in "
        "CHANNEL/<subdir>/",
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
            raise UsageError(f"{s}: no such directory or file")
    if args.conda:
        if args.variants:
            raise UsageError("--variants is for wheels, not --conda")
        packages, stats = build_channel(sources, Path(args.output), per_target=args.per_target)
        sets = sorted({p.targets for p in packages if p.targets}) if args.per_target else []
        slim = sum(1 for p in packages if p.targets)
        print(
            f"{args.output}: {len(packages)} conda packages ({slim} slim builds); channels: ./"
            + "".join(f", {t}/" for t in sets)
            + f" ({stats['written']} files written, {stats['reused']} unchanged)"
        )
        return 0
    if args.per_target:
        raise UsageError("--per-target is for --conda channels")
    wheels, stats = build_index(sources, Path(args.output), variants=args.variants)
    targets = sorted({w.targets for w in wheels if w.targets})
    print(
        f"{args.output}: {len(wheels)} wheels; indexes: simple/"
        + "".join(f", {t}/simple/" for t in targets)
        + f" ({stats['written']} files written, {stats['reused']} unchanged)"
    )
    return 0
