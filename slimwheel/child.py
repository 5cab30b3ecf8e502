"""Running a user's command: its environment, SIGINT and SIGTERM passed on, its status."""

from __future__ import annotations

import signal
import subprocess
from collections.abc import Sequence

from .errors import InputError


def run_command(command: Sequence[str], env: dict[str, str]) -> int:
    """Run ``command`` to its end; its exit status (128 + N when signal N ended it).

    SIGINT and SIGTERM sent to slimwheel go to the command, which decides.
    A command that cannot be started is one line (InputError).
    """
    try:
        proc = subprocess.Popen(list(command), env=env)
    except OSError as exc:
        raise InputError(f"cannot run {command[0]}: {exc.strerror}") from None
    previous = {}
    for sig in (signal.SIGINT, signal.SIGTERM):
        previous[sig] = signal.signal(sig, lambda s, _f: proc.send_signal(s))
    try:
        code = proc.wait()
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
    return 128 - code if code < 0 else code
