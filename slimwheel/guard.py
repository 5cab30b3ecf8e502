"""The guard: a one-line message, instead of a bare crash, when removed host code runs.

``shim/slimwheel_guard.c`` is preloaded (``LD_PRELOAD``) into a command by
``slimwheel doctor``, or into every Python process of an environment by the
``.pth`` file ``slim-env --guard`` installs. Its SIGSEGV / SIGBUS handler
looks the faulting address up in the library's ``.slimwheel.host`` note
(``hostcode.py``) and names the library, the function and the profile, then
lets the program's own handler (Python's faulthandler, say) or the default
action run.
"""

from __future__ import annotations

import os
import signal
import subprocess
from collections.abc import Sequence
from pathlib import Path

from .errors import InputError
from .native import compile_c, find_cc, helper_key, source

GUARD_NAME = "libslimwheel_guard.so"


def build_guard(root: Path) -> Path:
    """The guard library, compiled once per source and compiler under ``root``."""
    cc = find_cc()
    src = source("slimwheel_guard.c")
    return compile_c(cc, src, root / helper_key(src, cc) / GUARD_NAME, ["-ldl"], "guard")


def guarded_environment(guard: Path, base: dict[str, str]) -> dict[str, str]:
    env = dict(base)
    env["LD_PRELOAD"] = f"{guard}:{base['LD_PRELOAD']}" if base.get("LD_PRELOAD") else str(guard)
    return env


def run_guarded(command: Sequence[str], guard: Path) -> int:
    """Run ``command`` with the guard; its exit status (128 + N for signal N)."""
    try:
        proc = subprocess.Popen(list(command), env=guarded_environment(guard, dict(os.environ)))
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
