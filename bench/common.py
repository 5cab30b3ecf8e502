"""Shared by the benchmarks: time a command in a child process, with its peak RSS."""

from __future__ import annotations

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
