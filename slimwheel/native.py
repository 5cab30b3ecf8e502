"""slimwheel's C helpers (``shim/``): compiled on first use, once per source and compiler.

The sources ship in the package (``data/*.c``, links into ``shim/`` in the
source tree). A compiled helper lives under the store's ``recorder/`` (or a
directory the caller names) at a path keyed by the SHA-256 of what it was
built from, and appears there atomically: a half-built library is never used.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import subprocess
import tempfile
from collections.abc import Sequence
from importlib import resources
from pathlib import Path

from .errors import InputError


class BuildError(InputError):
    """A C helper cannot be built here."""


def source(name: str) -> bytes:
    return resources.files("slimwheel").joinpath(f"data/{name}").read_bytes()


def find_cc() -> str:
    cc = shutil.which(os.environ.get("CC", "cc")) or shutil.which("gcc")
    if cc is None:
        raise BuildError("no C compiler to build slimwheel's helpers (set CC)")
    return cc


def helper_key(src: bytes, cc: str, *extra: bytes) -> str:
    return hashlib.sha256(b"\0".join([src, cc.encode(), *extra])).hexdigest()


def compile_c(
    cc: str, src: bytes, dest: Path, flags: Sequence[str], what: str, *, pre: Sequence[str] = ()
) -> Path:
    """Compile ``src`` into the shared library ``dest`` (atomically; kept when present).

    ``pre`` flags come before the source (include paths), ``flags`` after it
    (libraries, definitions).
    """
    if dest.is_file():
        return dest
    dest.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=dest.parent) as tmp:
        c = Path(tmp) / "src.c"
        c.write_bytes(src)
        out = Path(tmp) / dest.name
        cmd = [cc, "-shared", "-fPIC", "-O2", *pre, "-o", str(out), str(c), *flags]
        proc = subprocess.run(cmd, capture_output=True, text=True)
        if proc.returncode != 0:
            first = (proc.stderr.strip().splitlines() or ["?"])[0]
            raise BuildError(f"cannot build the {what}: {first}")
        os.replace(out, dest)
    return dest
