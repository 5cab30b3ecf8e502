"""The note slimming leaves in a library: what a profile removed, for the guard to name.

A non-allocated section ``.slimwheel.host`` (no process maps it), written
when ``--cpu`` removed host code or a profile removed device code the
workload never used. Little-endian:

* header: magic ``SLIMHOST``, version (1), range count, unit count, kernel
  count, flags (1: host code removed, 2: device code removed by a profile),
  0, then as 8-byte values the offsets of the kernel hashes and of the body,
  the body's size and its size uncompressed, then the profile's digest (64
  hex digits);
* ranges: removed host code, virtual addresses [start, end) (add the load base);
* kernel hashes: FNV-1a 64 of each kernel name whose code the profile
  removed (mangled, as the driver is asked for it), sorted;
* body, zlib-compressed (a big C++ library's names are tens of MB raw, a
  few MB compressed): the units, the code in the removed ranges (start,
  end, name offset or 0xffffffff, 1 for a function) sorted by address, then
  their names as the symbol tables give them (mangled), NUL-terminated.

``shim/slimwheel_guard.c`` reads the same layout (and demangles with the
C++ runtime when it prints).
"""

from __future__ import annotations

import struct
import zlib
from collections.abc import Iterable
from dataclasses import dataclass

from .elf import ElfFile
from .errors import SlimwheelError
from .hostcode import MAX_NAME, HostPlan, Unit

NOTE_SECTION = ".slimwheel.host"
NOTE_MAGIC = b"SLIMHOST"
NOTE_VERSION = 1
HOST_REMOVED = 1
DEVICE_REMOVED = 2

_HEADER = struct.Struct("<8sIIIIIIQQQQ64s")
#: A cap on the uncompressed body (input is untrusted): 1 GiB.
MAX_BODY = 1 << 30
_RANGE = struct.Struct("<QQ")
_UNIT = struct.Struct("<QQII")
_U64 = struct.Struct("<Q")
_NO_NAME = 0xFFFFFFFF


class NoteError(SlimwheelError):
    """A library's slimwheel note is malformed."""


def fnv1a(name: str) -> int:
    h = 0xCBF29CE484222325
    for b in name.encode("utf-8", "surrogateescape"):
        h = ((h ^ b) * 0x100000001B3) & 0xFFFFFFFFFFFFFFFF
    return h


@dataclass(frozen=True, slots=True)
class Note:
    profile_digest: str
    flags: int = 0
    ranges: tuple[tuple[int, int], ...] = ()
    units: tuple[Unit, ...] = ()
    kernel_hashes: tuple[int, ...] = ()

    def unit_at(self, vaddr: int) -> Unit | None:
        for u in self.units:
            if u.start <= vaddr < u.end:
                return u
        return None


def make_note(host: HostPlan | None, removed_kernels: Iterable[str], digest: str) -> Note | None:
    """The note for a slim output, or None when no profile removed anything."""
    kernels = tuple(sorted({fnv1a(k) for k in removed_kernels}))
    ranges = tuple((r.start, r.end) for r in host.ranges) if host else ()
    if not ranges and not kernels:
        return None
    flags = (HOST_REMOVED if ranges else 0) | (DEVICE_REMOVED if kernels else 0)
    units = tuple(sorted(host.removed, key=lambda u: u.start)) if host and ranges else ()
    return Note(digest, flags, ranges, units, kernels)


def note_bytes(note: Note) -> bytes:
    strings = bytearray()
    seen: dict[str, int] = {}
    units = []
    for u in note.units:
        at = _NO_NAME
        if u.name:
            at = seen.get(u.name, -1)
            if at < 0:
                at = seen[u.name] = len(strings)
                strings += u.name[:MAX_NAME].encode("utf-8", "replace") + b"\0"
        units.append(_UNIT.pack(u.start, u.end, at, 1 if u.function else 0))
    raw = b"".join(units) + bytes(strings)
    body = zlib.compress(raw, 6)
    ranges = b"".join(_RANGE.pack(a, b) for a, b in note.ranges)
    kernels_at = _HEADER.size + len(ranges)
    body_at = kernels_at + len(note.kernel_hashes) * _U64.size
    header = _HEADER.pack(
        NOTE_MAGIC,
        NOTE_VERSION,
        len(note.ranges),
        len(units),
        len(note.kernel_hashes),
        note.flags,
        0,
        kernels_at,
        body_at,
        len(body),
        len(raw),
        note.profile_digest.encode("ascii", "replace")[:64].ljust(64, b"0"),
    )
    kernels = b"".join(_U64.pack(k) for k in note.kernel_hashes)
    return header + ranges + kernels + body


def read_note(elf: ElfFile, *, body: bool = True) -> Note | None:
    """The note of a slimmed library, or None. ``body=False``: ranges and kernel
    hashes only, without inflating the body (names of a big library: tens of MB)."""
    sec = elf.section_by_name(NOTE_SECTION)
    if sec is None:
        return None
    data = elf.read(sec.offset, sec.size, NOTE_SECTION)
    if len(data) < _HEADER.size:
        raise NoteError(f"{NOTE_SECTION} is truncated", path=elf.name)
    (magic, version, nr, nu, nk, flags, _r, kernels_at, body_at, body_size, raw_size, digest) = (
        _HEADER.unpack_from(data)
    )
    if magic != NOTE_MAGIC or version != NOTE_VERSION:
        raise NoteError(f"{NOTE_SECTION}: not a version 1 note", path=elf.name)
    if (
        kernels_at != _HEADER.size + nr * _RANGE.size
        or body_at != kernels_at + nk * _U64.size
        or body_at + body_size != len(data)
        or raw_size > MAX_BODY
        or nu * _UNIT.size > raw_size
    ):
        raise NoteError(f"{NOTE_SECTION} is truncated or inconsistent", path=elf.name)
    ranges = tuple(_RANGE.unpack_from(data, _HEADER.size + i * _RANGE.size) for i in range(nr))
    kernels = tuple(_U64.unpack_from(data, kernels_at + i * 8)[0] for i in range(nk))
    digest_text = digest.decode("ascii", "replace")
    if not body:
        return Note(digest_text, flags, ranges, (), kernels)
    try:
        d = zlib.decompressobj()
        raw = d.decompress(data[body_at:], raw_size)
    except zlib.error as exc:
        raise NoteError(
            f"{NOTE_SECTION}: body does not decompress ({exc})", path=elf.name
        ) from None
    if len(raw) != raw_size:
        raise NoteError(f"{NOTE_SECTION}: body is not its stated size", path=elf.name)
    strings_at = nu * _UNIT.size
    units = []
    for i in range(nu):
        start, stop, name_at, uflags = _UNIT.unpack_from(raw, i * _UNIT.size)
        name = ""
        if name_at != _NO_NAME and strings_at + name_at < len(raw):
            z = raw.find(b"\0", strings_at + name_at)
            name = raw[strings_at + name_at : z if z >= 0 else len(raw)].decode("utf-8", "replace")
        units.append(Unit(start, stop, name, bool(uflags & 1)))
    return Note(digest_text, flags, ranges, tuple(units), kernels)
