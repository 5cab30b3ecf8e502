"""Small ELF64 little-endian files built with struct, for unit tests.

Real headers, not mocks: the reader parses them like any library. The layout
is fixed: the ELF header, the program headers at offset 64, the caller's
``data`` (section contents, at the offsets the caller gives), then the
section name table and the section header table at the end.
"""

from __future__ import annotations

import struct
from typing import NamedTuple

_EHDR = struct.Struct("<16sHHIQQQIHHHHHH")
_PHDR = struct.Struct("<IIQQQQQQ")
_SHDR = struct.Struct("<IIQQQQIIQQ")

EM_X86_64 = 62
EM_AARCH64 = 183
SHN_LORESERVE = 0xFF00
SHN_XINDEX = 0xFFFF
SHT_STRTAB = 3


class Seg(NamedTuple):
    type: int
    offset: int
    vaddr: int
    filesz: int
    memsz: int
    align: int = 0x1000
    flags: int = 4  # PF_R


class Sec(NamedTuple):
    name: str
    type: int = 1  # SHT_PROGBITS
    flags: int = 0
    addr: int = 0
    offset: int = 0
    size: int = 0
    link: int = 0
    info: int = 0
    addralign: int = 1
    entsize: int = 0


def phdrs_end(count: int) -> int:
    """Where the program header table of ``count`` entries ends."""
    return _EHDR.size + count * _PHDR.size


def elf_bytes(
    segments: list[Seg],
    sections: list[Sec] | None = None,
    *,
    machine: int = EM_X86_64,
    data: bytes = b"",
    shstrtab_at: int | None = None,
    extended_count: bool = False,
    xindex: bool = False,
) -> bytes:
    """An ELF file with ``segments`` and, unless ``sections`` is None, a section
    header table: section 0, ``sections``, and ``.shstrtab`` inserted at index
    ``shstrtab_at`` (default: last).

    Extended numbering (gABI) is written when the count or the name table
    index needs it, or when ``extended_count`` / ``xindex`` force it.
    """
    head = phdrs_end(len(segments))
    body = bytearray(max(head, len(data)))
    body[: len(data)] = data
    if any(body[:head]):
        raise ValueError("data overlaps the ELF header or the program headers")
    shoff = shnum = shstrndx = 0
    if sections is not None:
        names = b"\0.shstrtab\0"
        offsets = {".shstrtab": 1}
        for s in sections:
            if s.name not in offsets:
                offsets[s.name] = len(names)
                names += s.name.encode() + b"\0"
        at = len(sections) + 1 if shstrtab_at is None else shstrtab_at
        strtab_off = len(body)
        body += names
        body += bytes(-len(body) % 8)
        shoff = len(body)
        rows = [(offsets[s.name], *s[1:]) for s in sections]
        rows.insert(at - 1, (1, SHT_STRTAB, 0, 0, strtab_off, len(names), 0, 0, 1, 0))
        count = len(rows) + 1
        size0 = link0 = 0
        shnum, shstrndx = count, at
        if count >= SHN_LORESERVE or extended_count:
            shnum, size0 = 0, count
        if at >= SHN_LORESERVE or xindex:
            shstrndx, link0 = SHN_XINDEX, at
        table = [_SHDR.pack(0, 0, 0, 0, 0, size0, link0, 0, 0, 0)]
        table += [_SHDR.pack(*r) for r in rows]
        body += b"".join(table)
    ident = b"\x7fELF" + bytes([2, 1, 1]) + bytes(9)
    body[0 : _EHDR.size] = _EHDR.pack(
        ident,
        3,  # ET_DYN
        machine,
        1,
        0,
        _EHDR.size if segments else 0,
        shoff,
        0,
        _EHDR.size,
        _PHDR.size,
        len(segments),
        _SHDR.size,
        shnum,
        shstrndx,
    )
    for i, p in enumerate(segments):
        _PHDR.pack_into(
            body,
            _EHDR.size + i * _PHDR.size,
            p.type,
            p.flags,
            p.offset,
            p.vaddr,
            p.vaddr,
            p.filesz,
            p.memsz,
            p.align,
        )
    return bytes(body)
