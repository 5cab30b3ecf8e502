"""Writing files safely: a temporary file beside the target, fsync, rename.

A rename replaces the directory entry, never the inode it named, so a target
that is a hard link into a cache (uv, conda) leaves the cache untouched.

Debris: a temporary file (``.slimwheel-*.tmp``) or directory
(``.slimwheel-*.dir``) is locked (``flock``) by the process writing it for as
long as it lives; the kernel drops the lock when that process dies, however
it dies. :func:`clean_debris` removes what no live process holds, so the next
run cleans what a killed one left, and never what a live one is writing.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import shutil
import signal
import stat
import tempfile
import time
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import BinaryIO

from .rewrite import Piece, PieceKind

_CHUNK = 8 << 20
_ZEROS = bytes(1 << 20)


@contextlib.contextmanager
def atomic_output(dest: str | os.PathLike[str], *, mode: int | None = None) -> Iterator[BinaryIO]:
    """Yield a file that replaces ``dest`` only when the block ends without error."""
    dest = os.fspath(dest)
    directory = os.path.dirname(os.path.abspath(dest))
    fd, tmp = tempfile.mkstemp(prefix=PREFIX, suffix=".tmp", dir=directory)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)  # held until the file is closed: "a live writer"
        with os.fdopen(fd, "w+b") as f:
            yield f
            crash_point("writing")  # the temporary file is written, not yet renamed
            f.flush()
            os.fsync(f.fileno())
            if mode is not None:
                # Never setuid, setgid or sticky: an output is data, not a privilege.
                os.fchmod(f.fileno(), stat.S_IMODE(mode) & 0o777)
            os.replace(tmp, dest)
        tmp = ""
        with contextlib.suppress(OSError):
            dfd = os.open(directory, os.O_RDONLY)
            try:
                os.fsync(dfd)
            finally:
                os.close(dfd)
    finally:
        if tmp:
            with contextlib.suppress(OSError):
                os.unlink(tmp)


def crash_point(name: str) -> None:
    """Fault injection for the kill tests: SIGKILL this process at a named point
    (``SLIMWHEEL_TEST_KILL_AT=name``), at its N-th passage with
    ``SLIMWHEEL_TEST_KILL_AFTER=N``."""
    if os.environ.get("SLIMWHEEL_TEST_KILL_AT") != name:
        return
    _passages[name] = _passages.get(name, 0) + 1
    if _passages[name] >= int(os.environ.get("SLIMWHEEL_TEST_KILL_AFTER", "1")):
        os.kill(os.getpid(), signal.SIGKILL)


_passages: dict[str, int] = {}

PREFIX = ".slimwheel-"
#: A debris candidate younger than this is left alone (its writer may be taking its lock).
DEBRIS_MIN_AGE = 1.0


class HeldDir:
    """A temporary directory in ``parent``, held (its ``.lock`` locked) until
    ``release()``, which removes it. One a killed process held is no longer
    locked: ``clean_debris`` of its parent removes it."""

    def __init__(self, parent: str | os.PathLike[str], prefix: str = "") -> None:
        self.path = Path(tempfile.mkdtemp(prefix=f"{PREFIX}{prefix}", suffix=".dir", dir=parent))
        self._fd: int | None = None
        try:
            self._fd = os.open(self.path / ".lock", os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
            fcntl.flock(self._fd, fcntl.LOCK_EX)
        except BaseException:
            self.release()
            raise

    def release(self) -> None:
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None
        shutil.rmtree(self.path, ignore_errors=True)


@contextlib.contextmanager
def locked_tempdir(parent: str | os.PathLike[str], prefix: str = "") -> Iterator[Path]:
    """A temporary directory in ``parent``, held (locked) while in use, removed after."""
    held = HeldDir(parent, prefix)
    try:
        yield held.path
    finally:
        held.release()


@contextlib.contextmanager
def scratch_dir(prefix: str, parent: str | None = None) -> Iterator[Path]:
    """A locked temporary directory in ``parent`` (the system temp directory by
    default), removed after; what killed runs left there (their directories, no
    longer locked) is removed first."""
    parent = parent or tempfile.gettempdir()
    clean_debris(parent)
    with locked_tempdir(parent, prefix) as path:
        yield path


@contextlib.contextmanager
def staged(outdir: str | os.PathLike[str]) -> Iterator[Path]:
    """A staging directory inside ``outdir``: what is written there appears in
    ``outdir`` only when the whole block succeeds (then each file by rename).
    What dead runs left in ``outdir`` is removed first."""
    created = not os.path.isdir(outdir)
    os.makedirs(outdir, exist_ok=True)
    clean_debris(outdir)
    try:
        with locked_tempdir(outdir, "staging-") as staging:
            yield staging
            for name in sorted(os.listdir(staging)):
                if name != ".lock":
                    os.replace(staging / name, os.path.join(outdir, name))
    except BaseException:
        if created:  # a failed run leaves no output directory it made itself
            with contextlib.suppress(OSError):
                os.rmdir(outdir)
        raise


def _held(path: str) -> bool | None:
    """Whether a live process holds ``path``'s lock; None if it cannot be opened."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK)
    except OSError:
        return None
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        return True
    finally:
        os.close(fd)
    return False


def clean_debris(directory: str | os.PathLike[str]) -> int:
    """Remove the temporary files and directories dead slimwheel runs left in
    ``directory`` (not below it); returns how many."""
    removed = 0
    try:
        entries = list(os.scandir(directory))
    except OSError:
        return 0
    now = time.time()
    for e in entries:
        if not e.name.startswith(PREFIX):
            continue
        try:
            st = e.stat(follow_symlinks=False)
        except OSError:
            continue
        if now - st.st_mtime < DEBRIS_MIN_AGE:
            continue
        if e.name.endswith(".tmp") and stat.S_ISREG(st.st_mode):
            dead = _held(e.path) is False
        elif e.name.endswith(".dir") and stat.S_ISDIR(st.st_mode):
            dead = _held(os.path.join(e.path, ".lock")) is not True
        else:
            continue
        if dead:
            with contextlib.suppress(OSError):
                if stat.S_ISDIR(st.st_mode):
                    shutil.rmtree(e.path)
                else:
                    os.unlink(e.path)
                removed += 1
    return removed


def write_pieces(src: BinaryIO, out: BinaryIO, pieces: Sequence[Piece]) -> int:
    """Stream ``pieces`` to ``out``: copies from ``src`` in bounded chunks."""
    written = 0
    src_fd, out_fd = src.fileno(), out.fileno()
    out.flush()
    for p in pieces:
        if p.kind is PieceKind.COPY:
            _copy_range(src_fd, out_fd, p.src, p.length)
        elif p.kind is PieceKind.DATA:
            _write_all(out_fd, p.data)
        else:
            left = p.length
            while left:
                n = min(left, len(_ZEROS))
                _write_all(out_fd, _ZEROS[:n])
                left -= n
        written += p.length
    return written


def _write_all(fd: int, data: bytes) -> None:
    view = memoryview(data)
    while view:
        n = os.write(fd, view)
        view = view[n:]


def _copy_range(src_fd: int, out_fd: int, offset: int, length: int) -> None:
    end = offset + length
    pos = offset
    while pos < end:
        want = min(_CHUNK, end - pos)
        try:
            n = os.copy_file_range(src_fd, out_fd, want, pos)
        except OSError:
            n = 0
        if n <= 0:
            data = os.pread(src_fd, want, pos)
            if not data:
                raise OSError(f"unexpected end of input at {pos:#x}")
            _write_all(out_fd, data)
            n = len(data)
        pos += n
