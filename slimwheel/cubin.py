"""Kernels and device variables of one fatbin element (a cubin or PTX).

A cubin is an ELF with ``e_machine == EM_CUDA`` (190). A kernel (entry point)
is an ``STT_FUNC`` symbol with ``st_other & STO_CUDA_ENTRY`` (0x10); a device
variable is a defined ``STT_OBJECT`` symbol in a ``.nv.global*`` or
``.nv.constant<N>`` section (N != 0: bank 0 holds kernel parameters); a
``__managed__`` one is in ``.nv.global`` with ``st_other & 0x4`` (nvcc 13.0).
PTX is read from its ``.entry`` and ``.global``/``.const`` directives.
"""

from __future__ import annotations

import re
import struct
from collections.abc import Sequence
from dataclasses import dataclass

from .elf import SHN_LORESERVE, SHN_UNDEF, SHT, STT, Buffer, ElfFile, EMachine
from .errors import CubinError, ElfError, SlimwheelError
from .fatbin import Element, ElementKind, payload

STO_CUDA_ENTRY = 0x10
STO_CUDA_MANAGED = 0x4  # st_other of a __managed__ variable (it lives in .nv.global)


@dataclass(frozen=True, slots=True)
class DeviceVariable:
    name: str
    space: str  # "global", "constant" or "managed"
    size: int


@dataclass(frozen=True, slots=True)
class ModuleSymbols:
    """What a host program can reach in one element: kernels and variables."""

    kernels: tuple[str, ...]
    variables: tuple[DeviceVariable, ...]

    @property
    def has_managed(self) -> bool:
        """Modules with managed variables are loaded eagerly by the runtime."""
        return any(v.space == "managed" for v in self.variables)


def _space(section_name: str) -> str | None:
    if section_name.startswith(".nv.global"):
        return "global"
    if section_name.startswith(".nv.managed"):
        return "managed"
    if section_name.startswith(".nv.constant") and not section_name.startswith(".nv.constant0"):
        return "constant"
    return None


def _wanted(info: int, other: int, shndx: int) -> bool:
    """A symbol read_cubin looks at: an entry point, or a defined object."""
    kind = info & 0xF
    if kind == STT.FUNC:
        return bool(other & STO_CUDA_ENTRY)
    return kind == STT.OBJECT and SHN_UNDEF < shndx < SHN_LORESERVE


def open_cubin(data: bytes | bytearray, name: str) -> ElfFile:
    """A cubin image opened for its readers (its section table is parsed once,
    on first use); not a CUDA ELF is a CubinError naming ``name``."""
    try:
        elf = ElfFile(data, name)
    except ElfError as exc:
        raise CubinError(exc.message, path=name) from None
    if elf.header.machine != EMachine.CUDA:
        raise CubinError(f"not a CUDA cubin (e_machine {elf.header.machine})", path=name)
    return elf


def read_cubin(
    data: bytes | bytearray, name: str = "<cubin>", elf: ElfFile | None = None
) -> ModuleSymbols:
    """Kernels and device variables of a cubin image; ``elf``: the image already
    opened (``open_cubin``)."""
    elf = elf if elf is not None else open_cubin(data, name)
    kernels: list[str] = []
    variables: list[DeviceVariable] = []
    try:
        sections = elf.sections
        for symtab in sections:
            if symtab.type != SHT.SYMTAB:
                continue
            for sym in elf.symbols(symtab, _wanted):  # entry points and defined objects
                if sym.type == STT.FUNC:
                    kernels.append(sym.name)
                    continue
                if sym.shndx >= len(sections):
                    raise CubinError(f"symbol {sym.name} in missing section", path=name)
                space = _space(sections[sym.shndx].name)
                if space == "global" and sym.other & STO_CUDA_MANAGED:
                    space = "managed"
                if space is not None:
                    variables.append(DeviceVariable(sym.name, space, sym.size))
    except ElfError as exc:
        raise CubinError(exc.message, path=name) from None
    return ModuleSymbols(tuple(sorted(set(kernels))), tuple(sorted(set(variables), key=_var_key)))


def _var_key(v: DeviceVariable) -> tuple[str, str]:
    return (v.name, v.space)


# Line starts are matched with [ \t]*, never \s*: \s* would run on through
# every following blank line at each line start (quadratic in blank lines).
_PTX_ENTRY = re.compile(rb"^[ \t]*(?:\.(?:visible|weak)\s+)*\.entry\s+([A-Za-z_$%][\w$%.]*)", re.M)
_PTX_VAR = re.compile(
    rb"^[ \t]*(?:\.(?:visible|weak|common)\s+)*\.(global|const)\s+"
    rb"(?:\.(?:align|attribute)\s*(?:\d+|\([^)]*\))\s+)*(?:\.v\d\s+)?\.\w+\s+"
    rb"([A-Za-z_$%][\w$%.]*)",
    re.M,
)


def read_ptx(data: bytes | bytearray) -> ModuleSymbols:
    """Kernels and defined module-scope variables of a PTX text."""
    kernels = sorted({m.group(1).decode() for m in _PTX_ENTRY.finditer(data)})
    variables = {
        DeviceVariable(m.group(2).decode(), "global" if m.group(1) == b"global" else "constant", 0)
        for m in _PTX_VAR.finditer(data)
    }
    return ModuleSymbols(tuple(kernels), tuple(sorted(variables, key=_var_key)))


def read_element(buf: Buffer, el: Element, *, name: str) -> ModuleSymbols | None:
    """Symbols of an element; None for kinds without a symbol table (LTO-IR)."""
    if el.kind not in (ElementKind.ELF, ElementKind.PTX):
        return None
    return element_symbols(payload(buf, el, name=name), el, name=name)


def element_label(name: str, el: Element) -> str:
    """How errors name an element of the library ``name``."""
    return f"{name}: element at {el.offset:#x} ({el.arch_name})"


def element_symbols(data: bytes | bytearray, el: Element, *, name: str) -> ModuleSymbols | None:
    """Symbols of an element's (decompressed) payload; None for LTO-IR and other kinds."""
    if el.kind not in (ElementKind.ELF, ElementKind.PTX):
        return None
    label = element_label(name, el)
    if el.is_ptx:
        return read_ptx(data)
    try:
        return read_cubin(data, label)
    except SlimwheelError as exc:
        raise CubinError(exc.message, path=label) from None


# -- bare cubins -------------------------------------------------------------------
#
# Some libraries embed cubins without a fatbin around them (onnxruntime-gpu's
# TensorRT attention kernels: 114 of them in .rodata) and load them themselves
# (cuModuleLoadData). They are found by their ELF header (e_machine EM_CUDA)
# in the sections that can hold device code, outside every fatbin region,
# bounds-checked like everything else. slim leaves them in place.

_CUBIN_EHDR = struct.Struct("<16sHHIQQQIHHHHHH")
_CUBIN_SHDR = struct.Struct("<IIQQQQIIQQ")
#: Section headers read to size one bare cubin (real ones have a few dozen to hundreds).
MAX_BARE_SECTIONS = 1 << 16


@dataclass(frozen=True, slots=True)
class BareCubin:
    section: str
    offset: int  # file offset of its ELF header
    size: int
    arch: str  # "sm_90" (a/f variants cannot be told from a cubin's own header)

    @property
    def end(self) -> int:
        return self.offset + self.size


def _bare_size(buf: Buffer, at: int, limit: int) -> tuple[int, int] | None:
    """(size, sm) of the cubin whose ELF header is at ``at``, or None if none fits
    before ``limit``."""
    if at + _CUBIN_EHDR.size > limit:
        return None
    (
        ident,
        _type,
        machine,
        _ver,
        _entry,
        phoff,
        shoff,
        flags,
        _eh,
        phentsize,
        phnum,
        shentsize,
        shnum,
        _str,
    ) = _CUBIN_EHDR.unpack_from(buf, at)
    if machine != EMachine.CUDA or ident[4] != 2 or ident[5] != 1:
        return None
    if shentsize != _CUBIN_SHDR.size or not 0 < shnum <= MAX_BARE_SECTIONS:
        return None
    end = max(shoff + shnum * shentsize, phoff + phnum * phentsize if phnum else 0)
    if at + end > limit:
        return None
    for i in range(shnum):
        fields = _CUBIN_SHDR.unpack_from(buf, at + shoff + i * shentsize)
        if fields[1] != SHT.NOBITS:
            end = max(end, fields[4] + fields[5])
    if at + end > limit:
        return None
    # CUDA 12.8+ cubins (ELF ABI version 8) keep the SM in bits 8..15, older ones in 0..7.
    sm = (flags >> 8) & 0xFF if ident[8] >= 8 else flags & 0xFF
    return end, sm


def gaps(spans: Sequence[tuple[int, int]], start: int, limit: int) -> list[tuple[int, int]]:
    """The parts of [start, limit) that no (start, end) of ``spans`` (sorted) covers."""
    out, cur = [], start
    for a, b in spans:
        if a >= limit:
            break
        if b <= cur:
            continue
        if a > cur:
            out.append((cur, a))
        cur = b
    if cur < limit:
        out.append((cur, limit))
    return out


def find_bare_cubins(elf: ElfFile, regions: Sequence[tuple[int, int]]) -> list[BareCubin]:
    """Cubins embedded without a fatbin, in the sections ``fatbin.scan`` searches;
    ``regions``: the (start, end) file ranges of the fatbin regions found there.

    Only the bytes between regions are searched: a region's payload (compressed,
    hundreds of MB in libtorch_cuda.so) is never read, so this costs neither its
    time nor its pages. A cubin found may run into what follows its gap."""
    from .fatbin import candidate_sections

    out: list[BareCubin] = []
    spans = sorted(regions)
    magic = b"\x7fELF"
    for s in candidate_sections(elf):
        limit = min(s.offset + s.size, elf.size)
        pos = s.offset
        for lo, hi in gaps(spans, s.offset, limit):
            pos = max(pos, lo)
            stop = min(hi + len(magic) - 1, limit)  # a header that starts in the gap
            while pos < hi and (at := elf.buf.find(magic, pos, stop)) >= 0:
                pos = at + 1
                got = _bare_size(elf.buf, at, limit)
                if got is None:
                    continue
                size, sm = got
                out.append(BareCubin(s.name, at, size, f"sm_{sm}"))
                pos = at + size
    return out


def read_bare_cubin(buf: Buffer, cubin: BareCubin, *, name: str) -> ModuleSymbols:
    return read_cubin(
        bytes(buf[cubin.offset : cubin.end]), f"{name}: bare cubin at {cubin.offset:#x}"
    )
