"""``slimwheel verify ORIGINAL SLIM --arch TARGET``: check a slim library against its original."""

from __future__ import annotations

import argparse
import os
import sys
from typing import Any

from ..files import check_regular
from ..slim import verify_pair
from ..store import file_sha256
from .options import add_policy_options, human, policy_from, warn

HELP = "check that a slimmed library keeps what the driver loads and changes nothing else"


def configure_parser(sub: Any) -> argparse.ArgumentParser:
    p: argparse.ArgumentParser = sub.add_parser("verify", help=HELP, description=HELP + ".")
    p.add_argument("original", metavar="ORIGINAL")
    p.add_argument("slim", metavar="SLIM")
    add_policy_options(p)
    return p


def execute(args: argparse.Namespace) -> int:
    for f in (args.original, args.slim):
        check_regular(f)
    policy = policy_from(args)
    sha = file_sha256(args.original) if policy.needs_hash else None
    lib = policy.for_library(os.path.basename(args.original), sha)
    if lib.note:
        warn(lib.note)
    report = verify_pair(args.original, args.slim, lib)
    if report.problems:
        for problem in report.problems:
            print(f"{args.slim}: {problem}", file=sys.stderr)
        return 1
    print(
        f"{args.slim}: ok ({report.regions} regions, {report.kept_elements} kept elements "
        f"byte-identical, {human(report.compared_bytes)} of the loaded image identical)"
    )
    return 0
