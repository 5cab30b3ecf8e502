"""Function ranges from ``.eh_frame``: one FDE per function (or split part) with unwind info.

``.eh_frame`` (LSB, "Exception Frames") is a run of records, each a length
(4 bytes; 0xffffffff then 8 bytes for 64-bit lengths; 0 ends the section)
and an id: 0 for a CIE, else the distance back to the FDE's CIE. A CIE's
augmentation string says how its FDEs encode addresses ('R' gives the
pointer encoding, 'P' a personality pointer, 'L' an LSDA encoding, 'z' an
augmentation data length). An FDE starts with ``pc_begin`` in that encoding
(usually pc-relative signed 4 bytes) and ``pc_range`` in its value format.
Stripped libraries keep ``.eh_frame``: it is what C++ exceptions unwind
with, which makes it the one map of functions every library has.
"""

from __future__ import annotations

import struct
from collections.abc import Iterator
from dataclasses import dataclass

from .elf import Buffer, ElfFile, Section
from .errors import ElfError

DW_EH_PE_omit = 0xFF
DW_EH_PE_pcrel = 0x10
DW_EH_PE_datarel = 0x30
DW_EH_PE_indirect = 0x80

#: A cap on records (a 4-byte FDE is the smallest; real libraries have < 10^6).
MAX_RECORDS = 1 << 24


@dataclass(frozen=True, slots=True)
class Fde:
    """The code range [start, end) one FDE describes (virtual addresses)."""

    start: int
    end: int


@dataclass(frozen=True, slots=True)
class _Cie:
    encoding: int  # FDE pointer encoding ('R'), absptr when absent
    has_data: bool  # 'z': FDEs carry an augmentation data length


class _Reader:
    def __init__(self, buf: Buffer, pos: int, end: int, where: str) -> None:
        self.buf, self.pos, self.end, self.where = buf, pos, end, where

    def need(self, n: int) -> None:
        if self.pos + n > self.end:
            raise ElfError(f".eh_frame: record runs past its end at {self.pos:#x}", path=self.where)

    def fixed(self, fmt: str) -> int:
        st = struct.Struct("<" + fmt)
        self.need(st.size)
        (v,) = st.unpack_from(self.buf, self.pos)
        self.pos += st.size
        return int(v)

    def uleb(self) -> int:
        value = shift = 0
        while True:
            b = self.fixed("B")
            value |= (b & 0x7F) << shift
            shift += 7
            if b < 0x80:
                return value
            if shift > 63:
                raise ElfError(".eh_frame: LEB128 too long", path=self.where)

    def sleb(self) -> int:
        value = shift = 0
        while True:
            b = self.fixed("B")
            value |= (b & 0x7F) << shift
            shift += 7
            if b < 0x80:
                if b & 0x40:
                    value -= 1 << shift
                return value
            if shift > 63:
                raise ElfError(".eh_frame: LEB128 too long", path=self.where)

    def cstring(self) -> bytes:
        stop = self.buf.find(b"\0", self.pos, self.end)
        if stop < 0:
            raise ElfError(".eh_frame: unterminated augmentation string", path=self.where)
        s = bytes(self.buf[self.pos : stop])
        self.pos = stop + 1
        return s

    def encoded(self, enc: int, field_vaddr: int) -> int | None:
        """A pointer in DWARF EH encoding ``enc``; None when it cannot be known statically."""
        if enc == DW_EH_PE_omit:
            return None
        fmt = enc & 0x0F
        value: int
        if fmt == 0x00:
            value = self.fixed("Q")
        elif fmt == 0x01:
            value = self.uleb()
        elif fmt == 0x02:
            value = self.fixed("H")
        elif fmt == 0x03:
            value = self.fixed("I")
        elif fmt == 0x04:
            value = self.fixed("Q")
        elif fmt == 0x09:
            value = self.sleb()
        elif fmt == 0x0A:
            value = self.fixed("h")
        elif fmt == 0x0B:
            value = self.fixed("i")
        elif fmt == 0x0C:
            value = self.fixed("q")
        else:
            raise ElfError(f".eh_frame: pointer encoding {enc:#x} is not known", path=self.where)
        app = enc & 0x70
        if app == DW_EH_PE_pcrel:
            value += field_vaddr
        elif app != 0:
            return None  # datarel / textrel / funcrel: not used by FDEs of linked libraries
        return value & 0xFFFFFFFFFFFFFFFF


def _parse_cie(r: _Reader, where: str) -> _Cie:
    version = r.fixed("B")
    if version not in (1, 3):
        raise ElfError(f".eh_frame: CIE version {version} is not known", path=where)
    aug = r.cstring()
    if b"eh" in aug:
        r.fixed("Q")
    r.uleb()  # code alignment
    r.sleb()  # data alignment
    if version == 1:
        r.fixed("B")
    else:
        r.uleb()  # return address register
    encoding = 0
    has_data = aug.startswith(b"z")
    if has_data:
        length = r.uleb()
        data_end = r.pos + length
        for c in aug[1:]:
            if c == ord("R"):
                encoding = r.fixed("B")
            elif c == ord("L"):
                r.fixed("B")
            elif c == ord("P"):
                penc = r.fixed("B")
                r.encoded(penc & ~DW_EH_PE_indirect & 0xFF, 0)
            elif c in b"SBG":
                continue
            else:
                break  # an unknown letter: the length says where the data ends
        r.pos = data_end
    return _Cie(encoding, has_data)


def fdes(elf: ElfFile, section: Section | None = None) -> Iterator[Fde]:
    """Every FDE of ``.eh_frame`` with a known, non-empty range."""
    sec = section or elf.section_by_name(".eh_frame")
    if sec is None or sec.file_size == 0:
        return
    where = elf.name
    elf.check_range(sec.offset, sec.size, ".eh_frame")
    buf = elf.buf
    pos, end = sec.offset, sec.offset + sec.size
    cies: dict[int, _Cie] = {}
    for _ in range(MAX_RECORDS):
        if pos + 4 > end:
            return
        r = _Reader(buf, pos, end, where)
        length = r.fixed("I")
        if length == 0:
            return  # terminator
        if length == 0xFFFFFFFF:
            length = r.fixed("Q")
        body = r.pos
        rec_end = body + length
        if rec_end > end:
            raise ElfError(f".eh_frame: record at {pos:#x} runs past the section", path=where)
        r.end = rec_end
        id_at = r.pos
        cie_id = r.fixed("I")
        if cie_id == 0:
            cies[pos] = _parse_cie(r, where)
        else:
            cie_at = id_at - cie_id
            cie = cies.get(cie_at)
            if cie is None:
                if not sec.offset <= cie_at < end:
                    raise ElfError(f".eh_frame: FDE at {pos:#x} names no CIE", path=where)
                cr = _Reader(buf, cie_at, end, where)
                clen = cr.fixed("I")
                if clen == 0xFFFFFFFF:
                    clen = cr.fixed("Q")
                cr.end = min(end, cr.pos + clen)
                if cr.fixed("I") != 0:
                    raise ElfError(f".eh_frame: FDE at {pos:#x} names no CIE", path=where)
                cie = cies[cie_at] = _parse_cie(cr, where)
            field_vaddr = sec.addr + (r.pos - sec.offset)
            start = r.encoded(cie.encoding, field_vaddr)
            size = r.encoded(cie.encoding & 0x0F, 0)
            if start and size:
                yield Fde(start, start + size)
        pos = rec_end
    raise ElfError(".eh_frame: more records than allowed", path=where)
