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
import binascii
import calendar
import csv
import hashlib
import io
import math
import os
import re
import stat
import struct
import time
import zipfile
import zlib
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, BinaryIO

from packaging.utils import canonicalize_name, parse_wheel_filename
from packaging.version import InvalidVersion, Version

from .errors import InputError
from .files import ZIP_ERRORS, open_regular
from .write import atomic_output

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


def record_sha256(entry_hash: str) -> str | None:
    """The hex SHA-256 a RECORD hash field (``sha256=<urlsafe base64>``) names, if any."""
    algo, _, value = entry_hash.partition("=")
    if algo != "sha256" or not value:
        return None
    try:
        digest = base64.urlsafe_b64decode(value + "=" * (-len(value) % 4))
    except (binascii.Error, ValueError):
        return None
    return digest.hex() if len(digest) == 32 else None


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
    sha256: str = ""  # of the wheel file, when the caller hashed it

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
    # "a/./b", "a//b": another spelling of a file an installer would write twice
    if any(p in ("", ".") for p in parts[:-1]) or parts[-1] == ".":
        return "path not in normal form"
    return None


def _is_symlink(info: zipfile.ZipInfo) -> bool:
    return (info.external_attr >> 16) and stat.S_ISLNK(info.external_attr >> 16)  # type: ignore[return-value]


#: Far above real ones (torch's RECORD is ~2 MB, METADATA ~100 KB).
MAX_RECORD_BYTES = 64 << 20
MAX_METADATA_BYTES = 16 << 20


def _read_record(text: str, where: str) -> dict[str, RecordEntry]:
    out: dict[str, RecordEntry] = {}
    try:
        rows = list(csv.reader(io.StringIO(text)))
    except csv.Error as exc:
        raise WheelError(f"malformed RECORD ({exc})", path=where) from None
    for row in rows:
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
    archive = open_regular(path)
    try:
        zf = zipfile.ZipFile(archive)
    except ZIP_ERRORS as exc:
        archive.close()
        raise WheelError(f"not a readable zip archive ({exc})", path=path) from None
    with archive, zf:
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
        record_text = read_text_member(zf, f"{dist_info}/RECORD", MAX_RECORD_BYTES, path)
        record = _read_record(record_text, f"{path}:{dist_info}/RECORD")
        meta = read_text_member(zf, f"{dist_info}/METADATA", MAX_METADATA_BYTES, path)
        m = re.search(r"^Version:\s*(\S+)\s*$", meta, re.M)
        if not m or _version(m.group(1)) != version:
            problems.append(f"{dist_info}/METADATA version does not match the file name")
        files = {i.filename for i in infos if not i.is_dir()}
        for f in sorted(files - set(record)):
            if not f.endswith(SIGNATURE_FILES):
                problems.append(f"member {f} is not listed in RECORD")
        for f in sorted(set(record) - files):
            problems.append(f"RECORD lists {f}, which is not in the wheel")
        for f in sorted(files & set(record)):
            if not record[f].hash and f != f"{dist_info}/RECORD":
                problems.append(f"member {f}: RECORD gives no hash")
        if check_hashes:
            for info in infos:
                entry = record.get(info.filename)
                if info.is_dir() or entry is None or not entry.hash:
                    continue
                try:
                    digest, size = _hash_member(zf, info)
                except ZIP_ERRORS as exc:
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


def _version(text: str) -> Version | None:
    try:
        return Version(text)
    except InvalidVersion:
        return None


_MEMBER_ERRORS: tuple[type[BaseException], ...] = (*ZIP_ERRORS, KeyError)  # KeyError: absent


def read_text_member(zf: zipfile.ZipFile, name: str, limit: int, where: str) -> str:
    """A small text member (UTF-8, at most ``limit`` bytes once inflated)."""
    try:
        with zf.open(name) as f:
            data = f.read(limit + 1)
    except _MEMBER_ERRORS as exc:
        raise WheelError(f"cannot read {name} ({exc})", path=where) from None
    if len(data) > limit:
        raise WheelError(f"{name} is larger than {limit} bytes", path=where)
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError:
        raise WheelError(f"{name} is not UTF-8 text", path=where) from None


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
        sizes = (info.CRC, info.compress_size, info.file_size)
        self._copy(name, src, info.compress_type, *sizes, mode, f"member {info.filename}")

    def add_deflated(self, name: str, member: Deflated, mode: int) -> None:
        """A member whose deflated stream is already in a file: copied as it is."""
        with open(member.path, "rb") as f:
            sizes = (member.crc, member.compressed_size, member.size)
            self._copy(name, f, zipfile.ZIP_DEFLATED, *sizes, mode, member.path)

    def _copy(
        self,
        name: str,
        src: BinaryIO,
        method: int,
        crc: int,
        csize: int,
        usize: int,
        mode: int,
        what: str,
    ) -> None:
        """A member whose compressed bytes are read from ``src`` as they are."""
        bname = name.encode()
        offset = self.pos
        self._check32(offset, csize, usize)
        self._write(self._local(bname, method, crc, csize, usize))
        left = csize
        while left:
            chunk = src.read(min(left, 1 << 20))
            if not chunk:
                raise WheelError(f"{what}: truncated")
            self._write(chunk)
            left -= len(chunk)
        self._add_central(bname, method, crc, csize, usize, mode, offset)

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


# -- METADATA -----------------------------------------------------------------


def set_metadata_field(text: str, name: str, value: str) -> str:
    """``text`` (core metadata: RFC 822 headers, a blank line, a body) with the
    one header field ``name`` set to ``value``; every other byte unchanged.

    Only the header block is searched (a body line that looks like a field is
    not one); continuation lines of the old value go with it.
    """
    lines = text.splitlines(keepends=True)
    want = name.lower()
    for i, line in enumerate(lines):
        if line in ("\n", "\r\n") or not line.strip():
            break  # end of the headers
        if line[:1] in (" ", "\t"):
            continue
        key, sep, _rest = line.partition(":")
        if sep and key.strip().lower() == want:
            end = i + 1
            while end < len(lines) and lines[end][:1] in (" ", "\t") and lines[end].strip():
                end += 1
            newline = "\r\n" if line.endswith("\r\n") else "\n"
            lines[i:end] = [f"{key}: {value}{newline}"]
            return "".join(lines)
    raise WheelError(f"METADATA has no {name} field")


# -- timestamps -----------------------------------------------------------------

#: The zip format's dates end with 2107.
_MAX_ZIP_TIME = calendar.timegm((2107, 12, 31, 23, 59, 58, 0, 0, 0))


def source_date_epoch() -> float | None:
    """SOURCE_DATE_EPOCH, when set (seconds since 1970, up to the end of 2107)."""
    env = os.environ.get("SOURCE_DATE_EPOCH")
    if not env:
        return None
    try:
        value = float(env)
    except ValueError:
        raise InputError(f"SOURCE_DATE_EPOCH is not a number: {env!r}") from None
    if not math.isfinite(value) or not 0 <= value <= _MAX_ZIP_TIME:
        raise InputError(f"SOURCE_DATE_EPOCH is out of range (0 to the end of 2107): {env!r}")
    return value


def wheel_timestamp(info: WheelInfo) -> float:
    """The one timestamp of an output wheel: SOURCE_DATE_EPOCH, else the input's newest."""
    epoch = source_date_epoch()
    if epoch is not None:
        return epoch
    newest = max((m.date_time for m in info.members), default=(1980, 1, 1, 0, 0, 0))
    return float(calendar.timegm((*newest, 0, 0, 0)))


# -- deflated members -------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Deflated:
    """A member's content, already deflated (raw stream, DEFLATE_LEVEL) in a file."""

    path: str
    crc: int
    compressed_size: int
    size: int
    sha256: str  # of the uncompressed content, hex


def deflate_file(src: Path, dest: Path) -> dict[str, Any]:
    """Deflate ``src`` into ``dest`` exactly as :meth:`WheelWriter.add_stream` would."""
    comp = zlib.compressobj(DEFLATE_LEVEL, zlib.DEFLATED, -15)
    crc = usize = 0
    h = hashlib.sha256()  # of what is written, while it is written
    with open(src, "rb") as fin, open(dest, "wb") as fout:
        while chunk := fin.read(1 << 20):
            crc = zlib.crc32(chunk, crc)
            usize += len(chunk)
            data = comp.compress(chunk)
            h.update(data)
            fout.write(data)
        data = comp.flush()
        h.update(data)
        fout.write(data)
    return {
        "crc": crc,
        "uncompressed_size": usize,
        "level": DEFLATE_LEVEL,
        "sha256": h.hexdigest(),
    }


# -- the one wheel writer -----------------------------------------------------------

Content = bytes | Deflated


def rewrite_wheel(
    info: WheelInfo,
    outdir: str | os.PathLike[str],
    *,
    version: Version,
    name_suffix: str = "",
    contents: Mapping[str, Content] | None = None,
    dist_info_files: Mapping[str, bytes] | None = None,
    drop: Iterable[str] = (),
) -> tuple[str, int]:
    """Write a wheel made from ``info``, atomically, into ``outdir``.

    The version (file name, ``.dist-info`` name, METADATA's Version field)
    becomes ``version``; ``name_suffix`` ends the file name (a variant label:
    ``-sm90``). ``contents`` gives new content for package members by name;
    ``dist_info_files`` adds or replaces ``.dist-info`` files (by name inside
    it); ``drop`` names ``.dist-info`` files to leave out. RECORD and
    signatures are written anew. Entries in canonical order, one timestamp
    (:func:`wheel_timestamp`), unchanged members copied raw.

    Returns the output's path and its installed size.
    """
    contents = contents or {}
    dist_info_files = dist_info_files or {}
    new_di = f"{escape_name(info.name)}-{version}.dist-info"
    out_name = f"{escape_name(info.name)}-{version}-{info.tags}{name_suffix}.whl"
    skip = {"RECORD", *SIGNATURE_FILES, *drop, *dist_info_files}
    by_name = {m.filename: m for m in info.members if not m.is_dir()}
    plan: dict[str, zipfile.ZipInfo | Content] = {}
    sources: dict[str, zipfile.ZipInfo] = {}
    old_di = info.dist_info + "/"
    with zipfile.ZipFile(info.path) as zf:
        metadata = read_text_member(zf, f"{old_di}METADATA", MAX_METADATA_BYTES, info.path)
    for old, m in by_name.items():
        if old.startswith(old_di):
            rest = old[len(old_di) :]
            if rest in skip:
                continue
            new = f"{new_di}/{rest}"
            sources[new] = m
            if rest == "METADATA":
                plan[new] = set_metadata_field(metadata, "Version", str(version)).encode()
            else:
                plan[new] = m
        else:
            sources[old] = m
            plan[old] = contents.get(old, m)
    for rest, data in dist_info_files.items():
        plan[f"{new_di}/{rest}"] = data
    order = canonical_order(plan, new_di)
    dest = os.path.join(outdir, out_name)
    record: list[tuple[str, str, int | None]] = []
    installed = 0
    with atomic_output(dest, mode=0o644) as out, open(info.path, "rb") as src:
        w = WheelWriter(out, timestamp=wheel_timestamp(info))
        for name in order[:-1]:
            item = plan[name]
            mode = member_mode(sources[name]) if name in sources else 0o100644
            if isinstance(item, zipfile.ZipInfo):
                w.add_raw(name, src, item, mode)
                entry = info.record[item.filename]
                record.append((name, entry.hash, entry.size))
                installed += item.file_size
            elif isinstance(item, Deflated):
                w.add_deflated(name, item, mode)
                record.append(
                    (name, record_hash(bytes.fromhex(item.sha256), digest=True), item.size)
                )
                installed += item.size
            else:
                h, size = w.add_stream(name, iter([item]), mode)
                record.append((name, h, size))
                installed += size
        record.append((order[-1], "", None))
        body = write_record(record)
        w.add_stream(order[-1], iter([body]), 0o100644)
        installed += len(body)
        w.close()
    return dest, installed
