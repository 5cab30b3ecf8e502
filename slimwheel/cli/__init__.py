"""The ``slimwheel`` command line. Core logic lives outside this package.

``main(argv)`` is the entry point (tests call it directly). Every
:class:`SlimwheelError` is caught here once and printed as one line.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

from .. import __version__
from ..errors import SlimwheelError, UsageError
from ..files import install_sigbus_guard
from . import build as build_cmd
from . import cache as cache_cmd
from . import doctor as doctor_cmd
from . import index as index_cmd
from . import inspect as inspect_cmd
from . import install as install_cmd
from . import profile as profile_cmd
from . import restore as restore_cmd
from . import slim as slim_cmd
from . import slim_env as slim_env_cmd
from . import status as status_cmd
from . import verify as verify_cmd

SUBCOMMANDS = (
    inspect_cmd,
    slim_cmd,
    verify_cmd,
    build_cmd,
    cache_cmd,
    profile_cmd,
    slim_env_cmd,
    restore_cmd,
    status_cmd,
    install_cmd,
    index_cmd,
    doctor_cmd,
)


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> None:  # type: ignore[override]
        raise UsageError(message)


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(
        prog="slimwheel",
        description="Remove the CUDA device code a GPU never loads from libraries and wheels.",
    )
    parser.add_argument("--version", action="version", version=f"slimwheel {__version__}")
    parser.add_argument(
        "--traceback", action="store_true", help="show the full traceback on errors"
    )
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", parser_class=_Parser)
    sub.required = True
    for mod in SUBCOMMANDS:
        p = mod.configure_parser(sub)
        p.set_defaults(execute=mod.execute)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args_list = list(sys.argv[1:] if argv is None else argv)
    # --traceback is accepted anywhere on the line, before or after the subcommand.
    traceback = "--traceback" in args_list
    args_list = [a for a in args_list if a != "--traceback"]
    install_sigbus_guard()
    try:
        args = build_parser().parse_args(args_list)
        result: int = args.execute(args)
        return result
    except SlimwheelError as exc:
        if traceback:
            raise
        print(f"slimwheel: error: {exc}", file=sys.stderr)
        return 2 if isinstance(exc, UsageError) else 1
    except OSError as exc:
        if traceback:
            raise
        where = f"{exc.filename}: " if exc.filename else ""
        print(f"slimwheel: error: {where}{exc.strerror or exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("slimwheel: interrupted", file=sys.stderr)
        return 130
