"""Wheels in and out: validation, RECORD, version labels, deterministic archives.

Reading (:func:`open_wheel`) refuses what an installer should never unpack:
absolute or ``..`` member paths, symbolic links, duplicate names, a missing or
inconsistent ``.dist-info``, and RECORD lines that lie about a file's hash or
size. Every problem found is reported at once.

Writing (:class:`WheelWriter`) is deterministic: entries in a canonical order
(package files sorted, then ``.dist-info`` files sorted, RECORD last), one
timestamp for all entries (SOURCE_DATE_EPOCH, else the input's newest), fixed
permissions from the input, unchanged entries copied raw (their compressed
bytes, no recompression), changed ones deflated at a fixed level.

Spec: PEP 427 / the binary distribution format
(https://packaging.python.org/en/latest/specifications/binary-distribution-format/),
PEP 376 RECORD, APPNOTE.TXT for the zip structures.
"""

from __future__ import annotations

import base64
import csv
import hashlib
import io
import os
import re
import stat
import struct
import time
import zipfile
import zlib
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from typing import BinaryIO

from packaging.utils import canonicalize_name, parse_wheel_filename
from packaging.version import InvalidVersion, Version

from .errors import InputError

DEFLATE_LEVEL = 6
SIGNATURE_FILES = ("RECORD.jws", "RECORD.p7s")
_LOCAL_HEADER = struct.Struct("<IHHHHHIIIHH")
_CENTRAL = struct.Struct("<IHHHHHHIIIHHHHHII")
_END = struct.Struct("<IHHHHIIH")
_MAX32 = 0xFFFFFFFF


class WheelError(InputError):
    """A wheel is malformed or unsafe to unpack."""


def record_hash(data_or_digest: bytes, *, digest: bool = False) -> str:
    d = data_or_digest if digest else hashlib.sha256(data_or_digest).digest()
    return "sha256=" + base64.urlsafe_b64encode(d).rstrip(b"=").decode()


@dataclass(frozen=True, slots=True)
class RecordEntry:
    path: str
    hash: str  # "sha256=..." or ""
    size: int | None


@dataclass(slots=True)
class WheelInfo:
    path: str
    name: str  # distribution name as in the file name
    version: Version
    tags: str  # "py3-none-manylinux_2_27_x86_64" (build tag included if any)
    dist_info: str  # "nvidia_curand-10.4.0.35.dist-info"
    members: list[zipfile.ZipInfo] = field(default_factory=list)
    record: dict[str, RecordEntry] = field(default_factory=dict)

    @property
    def filename(self) -> str:
        return os.path.basename(self.path)


def _unsafe(name: str) -> str | None:
    if name.startswith("/") or re.match(r"^[A-Za-z]:", name) or "\\" in name:
        return "absolute or non-POSIX path"
    parts = name.split("/")
    if any(p == ".." for p in parts):
        return "path escapes the install directory (..)"
    if "\0" in name:
        return "NUL in path"
    return None


def _is_symlink(info: zipfile.ZipInfo) -> bool:
    return (info.external_attr >> 16) and stat.S_ISLNK(info.external_attr >> 16)  # type: ignore[return-value]


def _read_record(text: str, where: str) -> dict[str, RecordEntry]:
    out: dict[str, RecordEntry] = {}
    for row in csv.reader(io.StringIO(text)):
        if not row:
            continue
        if len(row) != 3:
            raise WheelError(f"RECORD line has {len(row)} fields, not 3", path=where)
        path, h, size = row
        try:
            out[path] = RecordEntry(path, h, int(size) if size else None)
        except ValueError:
            raise WheelError(f"RECORD size of {path} is not a number", path=where) from None
    return out


def open_wheel(path: str, *, check_hashes: bool = True) -> WheelInfo:
    """Validate a wheel; raise one WheelError listing every problem found."""
    fname = os.path.basename(path)
    try:
        name, version, _build, _tags = parse_wheel_filename(fname)
    except Exception as exc:  # packaging raises InvalidWheelFilename / InvalidVersion
        raise WheelError(f"not a wheel file name ({exc})", path=path) from None
    tag_text = fname[:-4].split("-", 2)[2]
    problems: list[str] = []
    try:
        zf = zipfile.ZipFile(path)
    except (zipfile.BadZipFile, OSError) as exc:
        raise WheelError(f"not a readable zip archive ({exc})", path=path) from None
    with zf:
        infos = zf.infolist()
        seen: set[str] = set()
        for info in infos:
            why = _unsafe(info.filename)
            if why:
                problems.append(f"member {info.filename}: {why}")
            if _is_symlink(info):
                problems.append(f"member {info.filename}: symbolic link")
            if info.filename in seen:
                problems.append(f"member {info.filename}: appears twice")
            seen.add(info.filename)
        dist_infos = {n.split("/", 1)[0] for n in seen if n.split("/", 1)[0].endswith(".dist-info")}
        if len(dist_infos) != 1:
            problems.append(f"expected one .dist-info directory, found {len(dist_infos)}")
            raise WheelError("; ".join(problems), path=path)
        dist_info = dist_infos.pop()
        di_name, _, di_version = dist_info[: -len(".dist-info")].rpartition("-")
        if canonicalize_name(di_name) != canonicalize_name(name):
            problems.append(f"{dist_info} does not match the file name's project {name}")
        try:
            if Version(di_version) != version:
                problems.append(f"{dist_info} does not match the file name's version {version}")
        except InvalidVersion:
            problems.append(f"{dist_info}: invalid version")
        for required in ("METADATA", "WHEEL", "RECORD"):
            if f"{dist_info}/{required}" not in seen:
                problems.append(f"{dist_info}/{required} is missing")
        if problems:
            raise WheelError("; ".join(problems), path=path)
        try:
            record = _read_record(
                zf.read(f"{dist_info}/RECORD").decode("utf-8"), f"{path}:{dist_info}/RECORD"
            )
            meta = zf.read(f"{dist_info}/METADATA").decode("utf-8", "replace")
        except (zipfile.BadZipFile, OSError, EOFError, zlib.error) as exc:
            raise WheelError(f"cannot read {dist_info} ({exc})", path=path) from None
        m = re.search(r"^Version:\s*(\S+)\s*$", meta, re.M)
        if not m or Version(m.group(1)) != version:
            problems.append(f"{dist_info}/METADATA version does not match the file name")
        files = {i.filename for i in infos if not i.is_dir()}
        for f in sorted(files - set(record)):
            if not f.endswith(SIGNATURE_FILES):
                problems.append(f"member {f} is not listed in RECORD")
        for f in sorted(set(record) - files):
            problems.append(f"RECORD lists {f}, which is not in the wheel")
        if check_hashes:
            for info in infos:
                entry = record.get(info.filename)
                if info.is_dir() or entry is None or not entry.hash:
                    continue
                try:
                    digest, size = _hash_member(zf, info)
                except (zipfile.BadZipFile, OSError, EOFError, zlib.error) as exc:
                    problems.append(f"member {info.filename}: unreadable ({exc})")
                    continue
                algo, _, _ = entry.hash.partition("=")
                if algo != "sha256":
                    problems.append(f"member {info.filename}: RECORD uses {algo}, not sha256")
                elif record_hash(digest, digest=True) != entry.hash or (
                    entry.size is not None and entry.size != size
                ):
                    problems.append(f"member {info.filename}: RECORD hash or size does not match")
        if problems:
            raise WheelError("; ".join(problems[:10]), path=path)
        return WheelInfo(path, name, version, tag_text, dist_info, infos, record)


def _hash_member(zf: zipfile.ZipFile, info: zipfile.ZipInfo) -> tuple[bytes, int]:
    h = hashlib.sha256()
    n = 0
    with zf.open(info) as f:
        while chunk := f.read(1 << 20):
            h.update(chunk)
            n += len(chunk)
    return h.digest(), n


# -- versions ---------------------------------------------------------------


def labelled_version(version: Version, label: str | None) -> Version:
    """``2.14.1`` + ``sm90`` -> ``2.14.1+sm90``; ``2.5.1+cu124`` -> ``2.5.1+cu124.sm90``."""
    if not label:
        return version
    local = f"{version.local}.{label}" if version.local else label
    return Version(f"{version.public}+{local}")


def escape_name(name: str) -> str:
    """The file-name form of a project name (PEP 427 / binary distribution format)."""
    return re.sub(r"[-_.]+", "_", name)


# -- writing ----------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class RawMember:
    """An input member copied without recompression."""

    src: zipfile.ZipInfo


@dataclass(frozen=True, slots=True)
class NewMember:
    """A member whose content is produced here (a file on disk, or bytes)."""

    data: bytes | None = None
    path: str | None = None


def dos_time(ts: float) -> tuple[int, int]:
    t = time.gmtime(max(ts, 315532800))  # the zip epoch is 1980
    return (
        (t.tm_hour << 11) | (t.tm_min << 5) | (t.tm_sec // 2),
        ((t.tm_year - 1980) << 9) | (t.tm_mon << 5) | t.tm_mday,
    )


def canonical_order(names: Iterable[str], dist_info: str) -> list[str]:
    files = sorted(n for n in names if not n.startswith(dist_info + "/"))
    meta = sorted(n for n in names if n.startswith(dist_info + "/") and n != f"{dist_info}/RECORD")
    return [*files, *meta, f"{dist_info}/RECORD"]


class WheelWriter:
    """Writes a zip archive entry by entry to a binary file (no zip64)."""

    def __init__(self, out: BinaryIO, *, timestamp: float) -> None:
        self.out = out
        self.pos = out.tell()
        self.central: list[bytes] = []
        self.dostime, self.dosdate = dos_time(timestamp)

    def _local(self, name: bytes, method: int, crc: int, csize: int, usize: int) -> bytes:
        return (
            _LOCAL_HEADER.pack(
                0x04034B50,
                20,
                0x800,
                method,
                self.dostime,
                self.dosdate,
                crc,
                csize,
                usize,
                len(name),
                0,
            )
            + name
        )

    def _add_central(
        self, name: bytes, method: int, crc: int, csize: int, usize: int, mode: int, offset: int
    ) -> None:
        self.central.append(
            _CENTRAL.pack(
                0x02014B50,
                0x0314,
                20,
                0x800,
                method,
                self.dostime,
                self.dosdate,
                crc,
                csize,
                usize,
                len(name),
                0,
                0,
                0,
                0,
                (mode & 0xFFFF) << 16,
                offset,
            )
            + name
        )

    def _check32(self, *values: int) -> None:
        if any(v > _MAX32 for v in values):
            raise WheelError("archive member or offset beyond 4 GiB (zip64 not supported)")

    def add_raw(self, name: str, src: BinaryIO, info: zipfile.ZipInfo, mode: int) -> None:
        """Copy ``info``'s compressed bytes from the open source archive ``src``."""
        src.seek(info.header_offset)
        head = src.read(_LOCAL_HEADER.size)
        fields = _LOCAL_HEADER.unpack(head)
        if fields[0] != 0x04034B50:
            raise WheelError(f"member {info.filename}: bad local header")
        src.seek(info.header_offset + _LOCAL_HEADER.size + fields[9] + fields[10])
        bname = name.encode()
        offset = self.pos
        self._check32(offset, info.compress_size, info.file_size)
        self._write(
            self._local(bname, info.compress_type, info.CRC, info.compress_size, info.file_size)
        )
        left = info.compress_size
        while left:
            chunk = src.read(min(left, 1 << 20))
            if not chunk:
                raise WheelError(f"member {info.filename}: truncated")
            self._write(chunk)
            left -= len(chunk)
        self._add_central(
            bname, info.compress_type, info.CRC, info.compress_size, info.file_size, mode, offset
        )

    def add_stream(self, name: str, chunks: Iterable[bytes], mode: int) -> tuple[str, int]:
        """Deflate ``chunks`` into a new member; return its RECORD hash and size."""
        bname = name.encode()
        offset = self.pos
        # Sizes and CRC are not known yet: write the data after a placeholder
        # header, then seek back (the output is a regular file).
        header_at = self.pos
        self._write(self._local(bname, zipfile.ZIP_DEFLATED, 0, 0, 0))
        comp = zlib.compressobj(DEFLATE_LEVEL, zlib.DEFLATED, -15)
        crc, usize, csize = 0, 0, 0
        h = hashlib.sha256()
        for chunk in chunks:
            crc = zlib.crc32(chunk, crc)
            usize += len(chunk)
            h.update(chunk)
            data = comp.compress(chunk)
            csize += len(data)
            self._write(data)
        data = comp.flush()
        csize += len(data)
        self._write(data)
        self._check32(offset, csize, usize)
        end = self.pos
        self.out.seek(header_at)
        self.out.write(self._local(bname, zipfile.ZIP_DEFLATED, crc, csize, usize))
        self.out.seek(end)
        self._add_central(bname, zipfile.ZIP_DEFLATED, crc, csize, usize, mode, offset)
        return record_hash(h.digest(), digest=True), usize

    def _write(self, data: bytes) -> None:
        self.out.write(data)
        self.pos += len(data)

    def close(self) -> None:
        start = self.pos
        for c in self.central:
            self._write(c)
        size = self.pos - start
        self._check32(start, size)
        self._write(
            _END.pack(0x06054B50, 0, 0, len(self.central), len(self.central), size, start, 0)
        )


def file_chunks(path: str) -> Iterator[bytes]:
    with open(path, "rb") as f:
        while chunk := f.read(1 << 20):
            yield chunk


def member_mode(info: zipfile.ZipInfo) -> int:
    """Permissions to record: the input's, or 0o644 (0o755 for executables)."""
    mode = info.external_attr >> 16
    if stat.S_IFMT(mode) == 0:
        mode |= stat.S_IFREG
    if stat.S_IMODE(mode) == 0:
        mode |= 0o644
    return mode


def write_record(entries: list[tuple[str, str, int | None]]) -> bytes:
    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    for path, h, size in entries:
        w.writerow([path, h, "" if size is None else str(size)])
    return buf.getvalue().encode()
