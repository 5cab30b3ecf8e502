"""Flags shared by several subcommands, defined once."""

from __future__ import annotations

import argparse
from collections.abc import Sequence

from ..arch import Target, parse_targets


def add_target_options(parser: argparse.ArgumentParser, *, required: bool) -> None:
    parser.add_argument(
        "--arch",
        action="append",
        metavar="TARGET",
        required=required,
        help="GPU(s) to keep device code for: sm_90, 9.0, 90, a GPU name (H100, 'RTX 4090'), "
        "native, or a comma list; may be repeated",
    )
    parser.add_argument(
        "--keep-ptx",
        action="store_true",
        help="also keep, per region, the newest PTX (forward compatibility with newer GPUs)",
    )


def targets_from(args: argparse.Namespace) -> tuple[Target, ...]:
    specs: Sequence[str] | None = args.arch
    return parse_targets(specs) if specs else ()


def add_output_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--json", action="store_true", help="print a JSON document (see schemas/)")
    parser.add_argument("-q", "--quiet", action="store_true", help="no progress bar")
