"""Writing files safely: a temporary file beside the target, fsync, rename.

A rename replaces the directory entry, never the inode it named, so a target
that is a hard link into a cache (uv, conda) leaves the cache untouched.
"""

from __future__ import annotations

import contextlib
import os
import stat
import tempfile
from collections.abc import Iterator, Sequence
from typing import BinaryIO

from .rewrite import Piece, PieceKind

_CHUNK = 8 << 20
_ZEROS = bytes(1 << 20)


@contextlib.contextmanager
def atomic_output(dest: str | os.PathLike[str], *, mode: int | None = None) -> Iterator[BinaryIO]:
    """Yield a file that replaces ``dest`` only when the block ends without error."""
    dest = os.fspath(dest)
    directory = os.path.dirname(os.path.abspath(dest))
    fd, tmp = tempfile.mkstemp(prefix=".slimwheel-", suffix=".tmp", dir=directory)
    try:
        with os.fdopen(fd, "w+b") as f:
            yield f
            f.flush()
            os.fsync(f.fileno())
        if mode is not None:
            os.chmod(tmp, stat.S_IMODE(mode))
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
