"""Shared by the benchmarks: time a command in a child process, with its peak RSS."""

from __future__ import annotations

import subprocess
import sys

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
