"""Where libraries come from: a file, a wheel, a conda package, a directory, an installed
distribution.

:func:`find_libraries` turns what a user typed into a list of
:class:`LibrarySource`; each gives a path on disk only while it is open (wheel
members are streamed to a temporary file, one at a time).
"""

from __future__ import annotations

import os
import shutil
import stat
import tempfile
import weakref
import zipfile
from collections.abc import Iterator
from contextlib import AbstractContextManager, contextmanager, nullcontext
from dataclasses import dataclass
from importlib import metadata
from pathlib import Path

from .condapkg import iter_files, package_format
from .elf import ELF_MAGIC, is_elf
from .errors import InputError
from .files import ZIP_ERRORS, check_regular
from .write import HeldDir, clean_debris, scratch_dir

# Members of these kinds are never ELF libraries; skip opening them.
_TEXT_SUFFIXES = (".py", ".pyi", ".pyc", ".txt", ".md", ".json", ".h", ".hpp", ".cuh", ".typed")


@dataclass(frozen=True, slots=True)
class LibrarySource:
    name: str  # relative to the input: "torch/lib/libtorch_cuda.so"
    origin: str  # the input it came from: a wheel, a directory, a distribution, a file
    size: int
    _path: str | None = None
    _wheel: str | None = None
    _member: str | None = None
    _unpacked: UnpackedLibraries | None = None  # for a conda package's member

    @property
    def where(self) -> str:
        """How errors name this library: its path, or ``archive:member``."""
        if self._member is not None:
            archive = self._wheel if self._unpacked is None else self._unpacked.package
            return f"{archive}:{self._member}"
        assert self._path is not None
        return self._path

    def open(self) -> AbstractContextManager[str]:
        """A filesystem path holding the library, valid inside the ``with``."""
        if self._unpacked is not None:
            assert self._member is not None
            return nullcontext(self._unpacked.path(self._member))
        if self._wheel is None:
            assert self._path is not None
            return nullcontext(self._path)
        assert self._member is not None
        return extract_member(self._wheel, self._member)


class UnpackedLibraries:
    """The libraries of one conda package, unpacked together on first use.

    A tar stream has no index (reaching one member means reading the archive
    up to it), so all of a package's libraries come out in one pass, into a
    temporary directory removed when this object goes, or at exit.
    """

    def __init__(self, package: str, members: list[str]) -> None:
        self.package = package
        self.index = {m: i for i, m in enumerate(members)}
        self.dir: str | None = None

    def path(self, member: str) -> str:
        if self.dir is None:
            clean_debris(tempfile.gettempdir())  # what killed runs left
            held = HeldDir(tempfile.gettempdir(), "unpacked-")
            weakref.finalize(self, held.release)
            tmp = str(held.path)
            for name, _size, f in iter_files(self.package):
                if name in self.index:
                    with open(os.path.join(tmp, str(self.index[name])), "wb") as out:
                        shutil.copyfileobj(f, out, 1 << 20)
            self.dir = tmp
        return os.path.join(self.dir, str(self.index[member]))


def _conda_libraries(package: str) -> list[LibrarySource]:
    found = [
        (name, size)
        for name, size, f in iter_files(package)
        if size >= 64 and not name.endswith(_TEXT_SUFFIXES) and f.read(4) == ELF_MAGIC
    ]
    unpacked = UnpackedLibraries(package, [name for name, _ in found])
    return [
        LibrarySource(name, package, size, _member=name, _unpacked=unpacked) for name, size in found
    ]


@contextmanager
def extract_member(wheel: str, member: str, tmpdir: str | None = None) -> Iterator[str]:
    """A wheel member streamed to a temporary file (in ``tmpdir``), removed after the ``with``."""
    with scratch_dir("member-", tmpdir) as tmp:
        dest = os.path.join(tmp, "lib.so")
        try:
            with zipfile.ZipFile(wheel) as zf, zf.open(member) as src, open(dest, "wb") as out:
                shutil.copyfileobj(src, out, 1 << 20)
        except ZIP_ERRORS as exc:
            raise InputError(f"member {member}: unreadable ({exc})", path=wheel) from None
        yield dest


def _wheel_libraries(wheel: str) -> list[LibrarySource]:
    try:
        with zipfile.ZipFile(wheel) as zf:
            out = []
            for info in zf.infolist():
                if info.is_dir() or info.file_size < 64 or info.filename.endswith(_TEXT_SUFFIXES):
                    continue
                with zf.open(info) as f:
                    if f.read(4) != ELF_MAGIC:
                        continue
                out.append(
                    LibrarySource(
                        info.filename, wheel, info.file_size, _wheel=wheel, _member=info.filename
                    )
                )
            return out
    except ZIP_ERRORS as exc:
        raise InputError(f"not a readable wheel ({exc})", path=wheel) from None


def _is_library_file(path: str) -> bool:
    try:
        st = os.lstat(path)
    except OSError:
        return False
    # Symbolic links are followed to their target, which is listed on its own.
    return stat.S_ISREG(st.st_mode) and st.st_size >= 64 and is_elf(path)


def _directory_libraries(root: str) -> list[LibrarySource]:
    out: list[LibrarySource] = []
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames.sort()
        for fn in sorted(filenames):
            full = os.path.join(dirpath, fn)
            rel = os.path.relpath(full, root)
            archive = os.path.isfile(full) and not os.path.islink(full)
            if archive and (fn.endswith(".whl") or package_format(fn)):
                found = _wheel_libraries(full) if fn.endswith(".whl") else _conda_libraries(full)
                out.extend(
                    LibrarySource(
                        f"{rel}!{s.name}",
                        s.origin,
                        s.size,
                        _wheel=s._wheel,
                        _member=s._member,
                        _unpacked=s._unpacked,
                    )
                    for s in found
                )
            elif _is_library_file(full):
                out.append(LibrarySource(rel, root, os.path.getsize(full), _path=full))
    return out


def _distribution_libraries(name: str) -> list[LibrarySource] | None:
    try:
        dist = metadata.distribution(name)
    except metadata.PackageNotFoundError:
        return None
    out: list[LibrarySource] = []
    seen: set[str] = set()
    for f in dist.files or ():
        full = str(Path(str(dist.locate_file(f))).resolve())
        if full in seen or str(f).endswith(_TEXT_SUFFIXES):
            continue
        seen.add(full)
        if _is_library_file(full):
            out.append(LibrarySource(str(f), name, os.path.getsize(full), _path=full))
    return sorted(out, key=lambda s: s.name)


def find_libraries(target: str) -> list[LibrarySource]:
    """Every ELF library in ``target`` (a path, or an installed distribution's name)."""
    if os.path.isdir(target):
        return _directory_libraries(target)
    if os.path.lexists(target):
        check_regular(target)  # a FIFO, a link loop, an unreadable file: named for what it is
        if package_format(target):
            return _conda_libraries(target)
        if zipfile.is_zipfile(target):
            return _wheel_libraries(target)
        if not is_elf(target):
            raise InputError("not an ELF library, a wheel or a directory", path=target)
        name = os.path.basename(target)
        return [LibrarySource(name, target, os.path.getsize(target), _path=target)]
    found = _distribution_libraries(target)
    if found is None:
        raise InputError("no such file, directory or installed distribution", path=target)
    return found
