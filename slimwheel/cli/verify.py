"""``slimwheel verify ORIGINAL SLIM --arch TARGET``: check a slim library against its original."""

from __future__ import annotations

import argparse
import sys
from typing import Any

from ..policy import sections_to_leave
from ..slim import verify_pair
from .inspect import human
from .options import add_target_options, targets_from

HELP = "check that a slimmed library keeps what the driver loads and changes nothing else"


def configure_parser(sub: Any) -> argparse.ArgumentParser:
    p: argparse.ArgumentParser = sub.add_parser("verify", help=HELP, description=HELP + ".")
    p.add_argument("original", metavar="ORIGINAL")
    p.add_argument("slim", metavar="SLIM")
    add_target_options(p, required=True)
    p.add_argument("--leave-section", action="append", default=[], metavar="NAME")
    return p


def execute(args: argparse.Namespace) -> int:
    report = verify_pair(
        args.original,
        args.slim,
        targets=targets_from(args),
        keep_ptx=args.keep_ptx,
        drop_lto=args.drop_lto,
        leave=sections_to_leave(args.original, args.leave_section),
    )
    if report.problems:
        for problem in report.problems:
            print(f"{args.slim}: {problem}", file=sys.stderr)
        return 1
    print(
        f"{args.slim}: ok ({report.regions} regions, {report.kept_elements} kept elements "
        f"byte-identical, {human(report.compared_bytes)} of the loaded image identical)"
    )
    return 0
