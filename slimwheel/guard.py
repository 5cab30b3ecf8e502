"""The guard: a one-line message, instead of a bare crash, when removed host code runs.

``shim/slimwheel_guard.c`` is preloaded (``LD_PRELOAD``) into a command by
``slimwheel doctor``, or into every Python process of an environment by the
``.pth`` file ``slim-env --guard`` installs. Its SIGSEGV / SIGBUS handler
looks the faulting address up in the library's ``.slimwheel.host`` note
(``note.py``) and names the library, the function and the profile, then
lets the program's own handler (Python's faulthandler, say) or the default
action run. Where CUPTI is found, the guard is also built as a CUPTI
injection library: doctor then sets ``CUDA_INJECTION64_PATH`` to it, and a
kernel that a profile removed is named when its lookup or launch fails.
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from .child import run_command
from .native import compile_c, find_cc, helper_key, source
from .profile import ProfileError, find_cupti

GUARD_NAME = "libslimwheel_guard.so"


@dataclass(frozen=True, slots=True)
class Guard:
    library: Path
    cuda: bool  # also a CUPTI injection library (names removed kernels)


def build_guard(root: Path, *, cuda: bool = True) -> Guard:
    """The guard library, compiled once per source, compiler (and CUPTI) under ``root``.

    ``cuda``: also the CUPTI injection part, where CUPTI is found.
    """
    cc = find_cc()
    src = source("slimwheel_guard.c")
    try:
        if not cuda:
            raise ProfileError("the host guard only")
        includes, libdir = find_cupti()
    except ProfileError:
        lib = compile_c(cc, src, root / helper_key(src, cc) / GUARD_NAME, ["-ldl"], "guard")
        return Guard(lib, cuda=False)
    cupti = sorted(Path(libdir).glob("libcupti.so*"), key=lambda p: len(p.name))[0]
    key = helper_key(src, cc, b"cuda", libdir.encode())
    flags = ["-DSLIMWHEEL_GUARD_CUDA", f"-L{libdir}", f"-l:{cupti.name}", "-ldl", "-lpthread",
             f"-Wl,-rpath,{libdir}"]  # fmt: skip
    pre = [f"-I{i}" for i in includes]
    return Guard(compile_c(cc, src, root / key / GUARD_NAME, flags, "guard", pre=pre), cuda=True)


def guarded_environment(guard: Guard, base: dict[str, str]) -> dict[str, str]:
    env = dict(base)
    lib = str(guard.library)
    env["LD_PRELOAD"] = f"{lib}:{base['LD_PRELOAD']}" if base.get("LD_PRELOAD") else lib
    if guard.cuda and not base.get("CUDA_INJECTION64_PATH"):
        env["CUDA_INJECTION64_PATH"] = lib  # one injection library only: a user's own wins
    return env


def run_guarded(command: Sequence[str], guard: Guard) -> int:
    """Run ``command`` with the guard; its exit status (128 + N for signal N)."""
    return run_command(command, guarded_environment(guard, dict(os.environ)))


# -- the guard of an environment ------------------------------------------------

ENV_PACKAGE = "_slimwheel_guard"
ENV_PTH = "_slimwheel_guard.pth"
_LOADER = """\"\"\"slimwheel's guard for this environment: names removed host code that runs.

Installed by ``slimwheel slim-env --guard``, removed by ``slimwheel restore``.
\"\"\"

import ctypes
import os

try:
    ctypes.CDLL(os.path.join(os.path.dirname(__file__), "libslimwheel_guard.so"))
except OSError:
    pass
"""


def install_env_guard(site: Path, guard: Guard) -> None:
    """Every Python process of the environment loads the (host) guard at start-up:
    a ``.pth`` file imports a small package holding a copy of the library."""
    from .write import atomic_output

    pkg = site / ENV_PACKAGE
    pkg.mkdir(exist_ok=True)
    with atomic_output(pkg / GUARD_NAME, mode=0o755) as f, open(guard.library, "rb") as src:
        shutil.copyfileobj(src, f)
    with atomic_output(pkg / "__init__.py", mode=0o644) as f:
        f.write(_LOADER.encode())
    with atomic_output(site / ENV_PTH, mode=0o644) as f:  # last: the package is complete
        f.write(f"import {ENV_PACKAGE}\n".encode())


def remove_env_guard(site: Path) -> bool:
    """Take the guard out of an environment; whether it was there."""
    pth, pkg = site / ENV_PTH, site / ENV_PACKAGE
    found = pth.exists() or pkg.exists()
    pth.unlink(missing_ok=True)  # first: no process loads a half-removed package
    for name in (GUARD_NAME, "__init__.py"):
        (pkg / name).unlink(missing_ok=True)
    if pkg.is_dir():
        shutil.rmtree(pkg)
    return found


def env_guard_installed(site: Path) -> bool:
    return (site / ENV_PTH).is_file()
