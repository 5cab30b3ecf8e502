"""note.py: the note round-trips, reads without its body, and refuses damage."""

from __future__ import annotations

import pytest

from slimwheel.elf import SHT, ElfFile
from slimwheel.hostcode import HostPlan, HostRange, Unit
from slimwheel.note import (
    _HEADER,
    DEVICE_REMOVED,
    HOST_REMOVED,
    NoteError,
    fnv1a,
    make_note,
    note_bytes,
    read_note,
)
from tests.elf_bytes import Sec, elf_bytes


def _plan() -> HostPlan:
    units = (Unit(0x2000, 0x2800, "_ZN3foo3barEv", True), Unit(0x2800, 0x3000, "", False))
    return HostPlan(0x4000, 2, 0, 1, (HostRange(0x2000, 0x3000, 0x2000, 1),), units, "ab" * 32)


def _library(note: bytes) -> ElfFile:
    return ElfFile(elf_bytes([], [Sec(".slimwheel.host", SHT.PROGBITS, 0, 0, 0x200, len(note))],
                             data=b"\0" * 0x200 + note))  # fmt: skip


def test_round_trip_with_and_without_the_body() -> None:
    note = make_note(_plan(), ["kB", "kA"], "ab" * 32)
    assert note is not None and note.flags == HOST_REMOVED | DEVICE_REMOVED
    assert note.kernel_hashes == tuple(sorted({fnv1a("kA"), fnv1a("kB")}))
    got = read_note(_library(note_bytes(note)))
    assert got == note
    assert got.unit_at(0x2100) == Unit(0x2000, 0x2800, "_ZN3foo3barEv", True)
    bare = read_note(_library(note_bytes(note)), body=False)
    assert bare is not None and bare.ranges == note.ranges and bare.units == ()
    assert make_note(None, [], "0" * 64) is None  # nothing removed: no note


def test_fnv1a_is_the_guards_hash() -> None:
    assert fnv1a("") == 0xCBF29CE484222325
    assert fnv1a("a") == 0xAF63DC4C8601EC8C  # the published FNV-1a 64 test vector


@pytest.mark.parametrize("damage", ["truncate", "body", "counts"])
def test_a_damaged_note_is_refused(damage: str) -> None:
    note = make_note(_plan(), ["kA"], "ab" * 32)
    assert note is not None
    data = bytearray(note_bytes(note))
    if damage == "truncate":
        data = data[: _HEADER.size - 1]
    elif damage == "body":
        data[-3:] = b"\xff\xff\xff"
    else:
        data[12:16] = (1000).to_bytes(4, "little")  # a range count the section cannot hold
    with pytest.raises(NoteError):
        read_note(_library(bytes(data)))
