"""Opening what a user names: regular files only, without ever blocking.

A FIFO opened for reading blocks until a writer comes; a device may never
end. Every input is opened with ``O_NONBLOCK`` (which makes ``open`` of a
FIFO return at once), checked with ``fstat`` on the very descriptor that is
then read (no race between a check and the open), and refused with one line
unless it is a regular file. ``O_NONBLOCK`` is cleared before reading.
"""

from __future__ import annotations

import errno
import fcntl
import json
import os
import stat
import zipfile
import zlib
from collections.abc import Iterator
from contextlib import contextmanager
from typing import BinaryIO

from .errors import InputError

#: What reading a zip archive and its members raises on bad content: a damaged archive
#: or member (BadZipFile, zlib.error, EOFError), an encrypted member (RuntimeError), a
#: compression method Python does not have (NotImplementedError).
ZIP_FORMAT_ERRORS: tuple[type[BaseException], ...] = (
    zipfile.BadZipFile,
    zipfile.LargeZipFile,
    EOFError,
    zlib.error,
    RuntimeError,
    NotImplementedError,
)
#: The same, and the reading itself failing (OSError).
ZIP_ERRORS: tuple[type[BaseException], ...] = (*ZIP_FORMAT_ERRORS, OSError)

_KIND = {
    stat.S_IFDIR: "a directory",
    stat.S_IFIFO: "a FIFO",
    stat.S_IFCHR: "a character device",
    stat.S_IFBLK: "a block device",
    stat.S_IFSOCK: "a socket",
}

_ERRNO = {
    errno.ENOENT: "no such file",
    errno.EACCES: "permission denied",
    errno.EPERM: "permission denied",
    errno.ELOOP: "too many levels of symbolic links (a link loop?)",
    errno.ENOTDIR: "a path component is not a directory",
    errno.ENAMETOOLONG: "file name too long",
}


def describe_oserror(exc: OSError) -> str:
    """What went wrong, in words, for a one-line message."""
    return _ERRNO.get(exc.errno or 0) or exc.strerror or str(exc)


def kind_of(mode: int) -> str:
    return _KIND.get(stat.S_IFMT(mode), "not a regular file")


def open_regular(path: str | os.PathLike[str]) -> BinaryIO:
    """Open ``path`` for reading; InputError (naming it) unless it is a regular file."""
    where = os.fspath(path)
    try:
        fd = os.open(where, os.O_RDONLY | os.O_NONBLOCK | os.O_NOCTTY | os.O_CLOEXEC)
    except OSError as exc:
        raise InputError(describe_oserror(exc), path=where) from None
    try:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode):
            raise InputError(f"not a regular file ({kind_of(st.st_mode)})", path=where)
        flags = fcntl.fcntl(fd, fcntl.F_GETFL)
        fcntl.fcntl(fd, fcntl.F_SETFL, flags & ~os.O_NONBLOCK)
        return os.fdopen(fd, "rb")
    except BaseException:
        os.close(fd)
        raise


def check_regular(path: str | os.PathLike[str]) -> None:
    """Refuse, with one line, a path that is not a regular file (opens nothing blocking)."""
    open_regular(path).close()


def _no_constant(name: str) -> object:
    raise ValueError(f"{name} is not JSON")


def parse_json(data: bytes, where: str, *, limit: int) -> object:
    """Untrusted JSON: at most ``limit`` bytes, UTF-8, no NaN/Infinity, nesting bounded
    (by the parser's recursion limit); InputError naming ``where`` otherwise."""
    if len(data) > limit:
        raise InputError(f"larger than {limit} bytes", path=where)
    try:
        return json.loads(data.decode("utf-8"), parse_constant=_no_constant)
    except UnicodeDecodeError:
        raise InputError("not UTF-8 text", path=where) from None
    except RecursionError:
        raise InputError("JSON nested too deeply", path=where) from None
    except ValueError as exc:
        raise InputError(f"not JSON ({exc})", path=where) from None


def read_capped(path: str | os.PathLike[str], *, limit: int) -> bytes:
    """A regular file's bytes, at most ``limit`` of them; InputError naming it otherwise."""
    try:
        with open_regular(path) as f:
            data = f.read(limit + 1)
    except OSError as exc:
        raise InputError(describe_oserror(exc), path=os.fspath(path)) from None
    if len(data) > limit:
        raise InputError(f"larger than {limit} bytes", path=os.fspath(path))
    return data


def read_json(path: str | os.PathLike[str], *, limit: int) -> object:
    """A JSON file (a regular file, at most ``limit`` bytes), parsed as :func:`parse_json`."""
    return parse_json(read_capped(path, limit=limit), os.fspath(path), limit=limit)


# -- a mapped file that shrinks ---------------------------------------------------
#
# Reading a page of a memory-mapped file beyond its (new) end raises SIGBUS.
# A Python-level handler cannot help (the faulting read would run again as
# soon as it returned), so the guard is a C-level handler (through ctypes) that
# names the file being read, in one line, and ends the process with exit code 1.
# Temporary outputs of a run ended so are removed by the next run (write.py).

_mapped: list[str] = []  # files mapped now, the innermost last
_guard: list[object] = []  # keeps the C callback alive


def _on_sigbus(_signum: int) -> None:
    where = _mapped[-1] if _mapped else "an input file"
    os.write(
        2,
        f"slimwheel: error: {where}: the file changed (shrank) while it was being read\n".encode(
            "utf-8", "replace"
        ),
    )
    os._exit(1)


def install_sigbus_guard() -> None:
    """Report a mapped file truncated under us as one line, not a crash (once per process)."""
    if _guard:
        return
    import ctypes
    import signal

    handler_type = ctypes.CFUNCTYPE(None, ctypes.c_int)
    handler = handler_type(_on_sigbus)
    try:
        libc = ctypes.CDLL(None)
        libc.signal.restype = ctypes.c_void_p
        libc.signal.argtypes = [ctypes.c_int, handler_type]
        libc.signal(signal.SIGBUS, handler)
    except (OSError, AttributeError):
        return  # no libc signal(): the default behaviour stays
    _guard.append(handler)


@contextmanager
def reading_mapped(path: str) -> Iterator[None]:
    """Name ``path`` in the SIGBUS message while it is mapped."""
    _mapped.append(path)
    try:
        yield
    finally:
        _mapped.pop()
