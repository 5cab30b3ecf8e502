"""Shared by the benchmarks: time a command in a child process, with its peak RSS."""

from __future__ import annotations

import argparse
import subprocess
import sys
from collections.abc import Callable
from typing import NoReturn

_PROBE = (
    "import resource, subprocess, sys, time;"
    "t = time.monotonic();"
    "rc = subprocess.run(sys.argv[1:], stdout=subprocess.DEVNULL).returncode;"
    "print(rc, time.monotonic() - t, resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024)"
)


def timed(cmd: list[str], cwd: str | None = None) -> tuple[float, float]:
    """Wall seconds and peak RSS (MB) of the largest process ``cmd`` ran."""
    out = subprocess.run(
        [sys.executable, "-c", _PROBE, *cmd], cwd=cwd, capture_output=True, text=True, check=True
    ).stdout.split()
    if out[0] != "0":
        raise SystemExit(f"{cmd[0]} exited with {out[0]}")
    return float(out[1]), float(out[2])


def run_main(name: str, main: Callable[[], int]) -> NoReturn:
    """Exit with ``main()``'s status; a user's mistake (bad input, an unreadable file)
    is one line naming the bench, never a traceback."""
    from slimwheel.errors import SlimwheelError

    try:
        sys.exit(main())
    except SlimwheelError as e:
        sys.exit(f"{name}: {e}")
    except OSError as e:
        sys.exit(f"{name}: {e.filename or ''}: {e.strerror or e}")


def sizes_arg(text: str) -> list[int]:
    """``4K,16K``: sizes in whole KiB (a rule's name says its size in KiB)."""
    from slimwheel.cli.options import parse_size

    try:
        out = sorted({parse_size(x) for x in text.split(",")})
    except argparse.ArgumentTypeError as e:
        raise argparse.ArgumentTypeError(f"{text!r}: {e}") from None
    if any(n <= 0 or n % 1024 for n in out):
        raise argparse.ArgumentTypeError(f"{text!r}: sizes are whole KiB, at least 1K")
    return out
