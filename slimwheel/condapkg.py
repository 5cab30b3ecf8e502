"""conda packages (``.conda`` and ``.tar.bz2``): unpacked safely, packed deterministically.

A ``.conda`` file (format v2) is an uncompressed zip of ``metadata.json``,
``pkg-<stem>.tar.zst`` (the package's files) and ``info-<stem>.tar.zst``
(``info/``), where ``<stem>`` is ``name-version-build``; a ``.tar.bz2`` is
one bzip2-compressed tar of both. ``info/index.json`` names the package and
``info/paths.json`` lists every file with its type, sha256 and size.

:func:`unpack` streams a package into a directory (never into memory) and
refuses a hostile one: paths that are absolute, climb out with ``..`` or
repeat; members other than files, directories and links; symbolic links that
point outside the package; hard links to nothing; a ``paths.json`` that
lists files the package lacks, leaves files out, or lies about a hash or
size; a stem that does not match ``index.json``. :func:`pack` writes a
directory back as a package: members in a fixed order, owners anonymous,
times and modes taken from the input, fixed compression settings, so the
same input gives the same bytes.
"""

from __future__ import annotations

import bz2
import contextlib
import hashlib
import json
import os
import posixpath
import stat
import tarfile
import zipfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any

import zstandard

from .errors import InputError
from .files import ZIP_FORMAT_ERRORS, open_regular, parse_json, read_json
from .write import atomic_output

CONDA = ".conda"
TAR_BZ2 = ".tar.bz2"
FORMATS = (CONDA, TAR_BZ2)
#: zstd level of written ``.conda`` components. Device code inside CUDA
#: libraries is already compressed; levels above 12 cost 10x the time for
#: no measurable gain on them (measured on cuRAND: 38 MB at 3..19).
ZSTD_LEVEL = 12
BZ2_LEVEL = 9
_CHUNK = 1 << 20
#: What a malformed archive raises while it is read (not OSError: writing members out
#: raises that, and is reported apart).
_ARCHIVE_ERRORS: tuple[type[BaseException], ...] = (
    tarfile.TarError,
    zstandard.ZstdError,
    *ZIP_FORMAT_ERRORS,
)
_READ_ERRORS: tuple[type[BaseException], ...] = (*_ARCHIVE_ERRORS, OSError)


class CondaPackageError(InputError):
    """A conda package is malformed or hostile."""


@dataclass(frozen=True, slots=True)
class Member:
    """One member of a package, as unpacked."""

    path: str  # posix, relative: "lib/libx.so", "info/index.json"
    kind: str  # "file", "dir", "symlink" or "hardlink"
    mode: int  # permission bits
    mtime: int
    size: int = 0
    target: str = ""  # symlink target, or the member a hard link repeats
    sha256: str = ""  # of a file's content


@dataclass(frozen=True, slots=True)
class Package:
    path: Path
    format: str  # CONDA or TAR_BZ2
    members: tuple[Member, ...]
    index: dict[str, Any]
    paths: dict[str, Any]

    @property
    def name(self) -> str:
        return str(self.index["name"])

    @property
    def version(self) -> str:
        return str(self.index["version"])

    @property
    def build(self) -> str:
        return str(self.index["build"])

    @property
    def stem(self) -> str:
        return f"{self.name}-{self.version}-{self.build}"

    @property
    def filename(self) -> str:
        return self.path.name


def package_format(path: str | os.PathLike[str]) -> str | None:
    """CONDA, TAR_BZ2, or None for a file that is not a conda package."""
    name = os.fspath(path)
    return next((f for f in FORMATS if name.endswith(f)), None)


def stem_of(path: str | os.PathLike[str]) -> str:
    name = os.path.basename(os.fspath(path))
    fmt = package_format(name)
    return name[: -len(fmt)] if fmt else name


# -- reading ------------------------------------------------------------------


#: What a package may unpack to: far above real packages (a few times their
#: archive), far below what a small crafted one could claim.
MAX_MEMBERS = 1_000_000
MIN_UNPACKED_CAP = 1 << 30
MAX_UNPACK_RATIO = 100


def unpacked_cap(archive_bytes: int) -> int:
    """The most bytes a package of this size may unpack to (tar headers included)."""
    return max(MIN_UNPACKED_CAP, MAX_UNPACK_RATIO * archive_bytes)


def _tar_streams(path: Path, fmt: str) -> Iterator[tuple[str, tarfile.TarFile]]:
    """(component, tar stream) of each part: "pkg" and "info" (.conda) or "all"."""
    with open_regular(path) as archive:
        yield from _tar_streams_of(archive, path, fmt)


def _tar_streams_of(
    archive: IO[bytes], path: Path, fmt: str
) -> Iterator[tuple[str, tarfile.TarFile]]:
    where = str(path)
    if fmt == TAR_BZ2:
        with tarfile.open(fileobj=archive, mode="r|bz2") as tf:
            yield "all", tf
        return
    stem = stem_of(path)
    with zipfile.ZipFile(archive) as zf:
        names = [i.filename for i in zf.infolist()]
        expected = {"metadata.json", f"pkg-{stem}.tar.zst", f"info-{stem}.tar.zst"}
        if len(names) != len(set(names)) or set(names) != expected:
            raise CondaPackageError(
                f"members {sorted(names)} are not {sorted(expected)}", path=where
            )
        with zf.open("metadata.json") as f:
            meta = parse_json(
                f.read(MAX_INFO_BYTES + 1), f"{where}:metadata.json", limit=MAX_INFO_BYTES
            )
        if not isinstance(meta, dict) or meta.get("conda_pkg_format_version") != 2:
            raise CondaPackageError("metadata.json: not conda package format 2", path=where)
        for component in ("pkg", "info"):
            with zf.open(f"{component}-{stem}.tar.zst") as raw:
                reader = zstandard.ZstdDecompressor().stream_reader(raw)
                with tarfile.open(fileobj=reader, mode="r|") as tf:
                    yield component, tf


@contextlib.contextmanager
def _reading(where: str) -> Iterator[None]:
    """A malformed archive, met while reading it, as one CondaPackageError."""
    try:
        yield
    except _READ_ERRORS as exc:
        raise CondaPackageError(f"unreadable archive ({exc})", path=where) from None


def _walk(
    src: Path, *, info_only: bool = False
) -> Iterator[tuple[str, str, tarfile.TarInfo, tarfile.TarFile]]:
    """(part, safe member path, tar header, its tar) of every member, streamed.

    ``part`` is "pkg" or "info" for .conda, "all" for .tar.bz2; with
    ``info_only`` the pkg part of a .conda is not read at all. Reading member
    contents is the caller's: wrap it in ``_reading``.
    """
    where = str(src)
    fmt = package_format(src)
    if fmt is None:
        raise CondaPackageError("not a .conda or .tar.bz2 file", path=where)
    with _reading(where):
        cap = unpacked_cap(os.stat(src).st_size)
        count = 0
        for part, tf in _tar_streams(src, fmt):
            if info_only and part == "pkg":
                continue
            for ti in tf:
                count += 1
                if count > MAX_MEMBERS:
                    raise CondaPackageError(f"more than {MAX_MEMBERS} members", path=where)
                if ti.offset_data + ti.size > cap:
                    raise CondaPackageError(
                        f"unpacks to more than {cap} bytes (the cap for a package of its size)",
                        path=where,
                    )
                yield part, _check_name(ti.name, where), ti, tf


def _check_name(name: str, where: str) -> str:
    if not name or name.startswith("/") or "\\" in name or "\0" in name:
        raise CondaPackageError(f"member {name!r}: unsafe path", path=where)
    norm = posixpath.normpath(name)
    if norm in (".", "..") or norm.startswith("../") or norm != name.rstrip("/").removeprefix("./"):
        raise CondaPackageError(f"member {name!r}: unsafe path", path=where)
    return norm


def _inside(base: str, target: str) -> bool:
    """Whether a link in directory ``base`` to ``target`` stays in the package."""
    if target.startswith("/") or "\0" in target or not target:
        return False
    joined = posixpath.normpath(posixpath.join(base, target))
    return joined != ".." and not joined.startswith("../")


def unpack(path: str | os.PathLike[str], dest: Path) -> Package:
    """Validate the package at ``path`` while streaming it into ``dest`` (an empty directory)."""
    src = Path(path)
    where = str(src)
    members: dict[str, Member] = {}
    try:
        for component, name, ti, tf in _walk(src):
            is_info = name == "info" or name.startswith("info/")
            if (component == "pkg" and is_info) or (component == "info" and not is_info):
                raise CondaPackageError(
                    f"member {name}: in the {component} part of the package", path=where
                )
            if name in members:
                raise CondaPackageError(f"member {name}: appears twice", path=where)
            parent = posixpath.dirname(name)
            while parent:
                up = members.get(parent)
                if up is not None and up.kind != "dir":
                    raise CondaPackageError(
                        f"member {name}: lies under {parent}, which is not a directory",
                        path=where,
                    )
                parent = posixpath.dirname(parent)
            members[name] = _extract(tf, ti, name, dest, members, where)
    except _ARCHIVE_ERRORS as exc:  # reading a member's content
        raise CondaPackageError(f"unreadable archive ({exc})", path=where) from None
    except OSError as exc:  # writing the member out (a name clash, a full disk)
        raise CondaPackageError(
            f"cannot unpack {exc.filename}: {exc.strerror or exc}", path=where
        ) from None
    fmt = package_format(src)
    assert fmt is not None
    index = _json_member(dest, members, "info/index.json", where)
    paths = _json_member(dest, members, "info/paths.json", where)
    pkg = Package(src, fmt, tuple(members.values()), index, paths)
    for key in ("name", "version", "build"):
        if not isinstance(index.get(key), str) or not index[key]:
            raise CondaPackageError(f"info/index.json has no {key}", path=where)
    if pkg.stem != stem_of(src):
        raise CondaPackageError(
            f"info/index.json names {pkg.stem}, the file name {stem_of(src)}", path=where
        )
    _check_paths(pkg, where)
    return pkg


def _extract(
    tf: tarfile.TarFile,
    ti: tarfile.TarInfo,
    name: str,
    dest: Path,
    seen: dict[str, Member],
    where: str,
) -> Member:
    out = dest / name
    out.parent.mkdir(parents=True, exist_ok=True)
    mode = ti.mode & 0o7777
    mtime = int(ti.mtime)
    if ti.isdir():
        out.mkdir(exist_ok=True)
        return Member(name, "dir", mode, mtime)
    if ti.issym():
        if not _inside(posixpath.dirname(name), ti.linkname):
            raise CondaPackageError(
                f"member {name}: symbolic link to {ti.linkname} points outside the package",
                path=where,
            )
        os.symlink(ti.linkname, out)
        return Member(name, "symlink", mode, mtime, target=ti.linkname)
    if ti.islnk():
        target = _check_name(ti.linkname, where)
        first = seen.get(target)
        if first is None or first.kind != "file":
            raise CondaPackageError(
                f"member {name}: hard link to {ti.linkname}, not a file before it", path=where
            )
        os.link(dest / target, out)
        return Member(name, "hardlink", first.mode, mtime, first.size, target, first.sha256)
    if not ti.isreg():
        raise CondaPackageError(
            f"member {name}: neither a file, a directory nor a link", path=where
        )
    f = _content(tf, ti)
    h = hashlib.sha256()
    size = 0
    fd = os.open(out, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o600)
    with os.fdopen(fd, "wb") as w:
        while chunk := f.read(_CHUNK):
            h.update(chunk)
            w.write(chunk)
            size += len(chunk)
    if size != ti.size:
        raise CondaPackageError(f"member {name}: truncated", path=where)
    return Member(name, "file", mode, mtime, size, sha256=h.hexdigest())


def _json_member(dest: Path, members: dict[str, Member], name: str, where: str) -> dict[str, Any]:
    m = members.get(name)
    if m is None or m.kind != "file":
        raise CondaPackageError(f"no {name}", path=where)
    try:
        doc = read_json(dest / name, limit=MAX_INFO_BYTES)
    except InputError as exc:
        raise CondaPackageError(f"{name}: {exc.message}", path=where) from None
    if not isinstance(doc, dict):
        raise CondaPackageError(f"{name}: not a JSON object", path=where)
    return doc


_PATH_TYPES = {"hardlink": ("file", "hardlink"), "softlink": ("symlink",), "directory": ("dir",)}


def _check_paths(pkg: Package, where: str) -> None:
    """info/paths.json must describe exactly the package's files, truthfully."""
    entries = pkg.paths.get("paths")
    if not isinstance(entries, list):
        raise CondaPackageError("info/paths.json has no paths list", path=where)
    by_path = {m.path: m for m in pkg.members}
    listed = set()
    for e in entries:
        if not isinstance(e, dict) or not isinstance(e.get("_path"), str):
            raise CondaPackageError("info/paths.json: an entry without _path", path=where)
        p = e["_path"]
        m = by_path.get(p)
        kinds = _PATH_TYPES.get(str(e.get("path_type")))
        if m is None or kinds is None or m.kind not in kinds:
            raise CondaPackageError(
                f"info/paths.json lists {p} as {e.get('path_type')}: no such member",
                path=where,
            )
        if m.kind in ("file", "hardlink"):
            if "sha256" in e and e["sha256"] != m.sha256:
                raise CondaPackageError(f"info/paths.json: wrong sha256 for {p}", path=where)
            if "size_in_bytes" in e and e["size_in_bytes"] != m.size:
                raise CondaPackageError(f"info/paths.json: wrong size for {p}", path=where)
        listed.add(p)
    for m in pkg.members:
        if m.kind != "dir" and not m.path.startswith("info/") and m.path not in listed:
            raise CondaPackageError(f"member {m.path}: not listed in info/paths.json", path=where)


#: Largest info/ file read into memory (index.json, slimwheel.json).
MAX_INFO_BYTES = 16 << 20


def read_info(path: str | os.PathLike[str], names: tuple[str, ...]) -> dict[str, bytes]:
    """Some ``info/`` files of a package, without unpacking the rest."""
    src = Path(path)
    found: dict[str, bytes] = {}
    for _part, name, ti, tf in _walk(src, info_only=True):
        if name in names and ti.isreg():
            if ti.size > MAX_INFO_BYTES:
                raise CondaPackageError(f"member {name}: too large", path=str(src))
            with _reading(str(src)):
                found[name] = _content(tf, ti).read()
            if len(found) == len(names):
                break
    return found


def _content(tf: tarfile.TarFile, ti: tarfile.TarInfo) -> IO[bytes]:
    f = tf.extractfile(ti)
    assert f is not None  # a regular file
    return f


class _Reader:
    """A member's content; a malformed archive met while reading it is a CondaPackageError."""

    def __init__(self, f: IO[bytes], where: str) -> None:
        self.f = f
        self.where = where

    def read(self, n: int = -1) -> bytes:
        with _reading(self.where):
            return self.f.read(n)


def iter_files(path: str | os.PathLike[str]) -> Iterator[tuple[str, int, _Reader]]:
    """(path, size, reader) of each regular file of a package, streamed in
    archive order; a reader is valid until the next item."""
    src = Path(path)
    for _part, name, ti, tf in _walk(src):
        if ti.isreg():
            yield name, ti.size, _Reader(_content(tf, ti), str(src))


# -- writing ------------------------------------------------------------------


def _tarinfo(root: Path, m: Member) -> tuple[tarfile.TarInfo, Path | None]:
    ti = tarfile.TarInfo(m.path)
    ti.mtime = m.mtime
    ti.mode = m.mode
    ti.uid = ti.gid = 0
    ti.uname = ti.gname = ""
    if m.kind == "dir":
        ti.type = tarfile.DIRTYPE
        return ti, None
    if m.kind == "symlink":
        ti.type = tarfile.SYMTYPE
        ti.linkname = m.target
        return ti, None
    if m.kind == "hardlink":
        ti.type = tarfile.LNKTYPE
        ti.linkname = m.target
        return ti, None
    f = root / m.path
    st = os.lstat(f)
    if not stat.S_ISREG(st.st_mode):
        raise CondaPackageError(f"member {m.path}: not a file in the work tree", path=str(root))
    ti.size = st.st_size
    return ti, f


class _Zeros:
    """Reads as ``size`` zero bytes: file content for a pass that only counts."""

    def __init__(self, size: int) -> None:
        self.left = size

    def read(self, n: int = -1) -> bytes:
        n = self.left if n < 0 else min(n, self.left)
        self.left -= n
        return bytes(n)


def _write_tar(out: Any, root: Path, members: list[Member], *, count_only: bool = False) -> None:
    with tarfile.open(fileobj=out, mode="w|", format=tarfile.PAX_FORMAT) as tf:
        for m in members:
            ti, f = _tarinfo(root, m)
            if f is None:
                tf.addfile(ti)
            elif count_only:
                tf.addfile(ti, _Zeros(ti.size))
            else:
                with open(f, "rb") as fh:
                    tf.addfile(ti, fh)


def _order(members: list[Member]) -> tuple[list[Member], list[Member]]:
    """(info members, other members), each sorted by path (hard links after their files)."""
    info = sorted((m for m in members if m.path == "info" or m.path.startswith("info/")), key=_key)
    rest = sorted(
        (m for m in members if not (m.path == "info" or m.path.startswith("info/"))), key=_key
    )
    return info, rest


def _key(m: Member) -> tuple[int, str]:
    return (1 if m.kind == "hardlink" else 0, m.path)


def pack(root: Path, members: list[Member], dest: str | os.PathLike[str], fmt: str) -> None:
    """Write ``members`` of the tree at ``root`` as a package at ``dest``, atomically."""
    info, rest = _order(members)
    stem = stem_of(dest)
    with atomic_output(dest, mode=0o644) as out:
        if fmt == TAR_BZ2:
            comp = bz2.BZ2File(out, mode="wb", compresslevel=BZ2_LEVEL)
            with comp:
                _write_tar(comp, root, info + rest)
            return
        with zipfile.ZipFile(out, mode="w", compression=zipfile.ZIP_STORED) as zf:
            zf.writestr(_zinfo("metadata.json"), json.dumps({"conda_pkg_format_version": 2}))
            for component, part in (("pkg", rest), ("info", info)):
                _write_component(zf, f"{component}-{stem}.tar.zst", root, part)


def _zinfo(name: str) -> zipfile.ZipInfo:
    zi = zipfile.ZipInfo(name, date_time=(1980, 1, 1, 0, 0, 0))
    zi.compress_type = zipfile.ZIP_STORED
    zi.external_attr = 0o100644 << 16
    zi.create_system = 3
    return zi


class _Counter:
    """A write-only sink that counts: the exact tar size, for zstd's frame header."""

    def __init__(self) -> None:
        self.size = 0

    def write(self, b: bytes) -> int:
        self.size += len(b)
        return len(b)

    def tell(self) -> int:
        return self.size


def _write_component(zf: zipfile.ZipFile, name: str, root: Path, members: list[Member]) -> None:
    counter = _Counter()
    _write_tar(counter, root, members, count_only=True)
    cctx = zstandard.ZstdCompressor(level=ZSTD_LEVEL, write_checksum=False, threads=0)
    with (
        zf.open(_zinfo(name), mode="w", force_zip64=True) as raw,
        cctx.stream_writer(raw, size=counter.size, closefd=False) as w,
    ):
        _write_tar(w, root, members)
