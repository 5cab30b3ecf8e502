"""Where the bytes of a fatbin element go: per kernel, and per kind of cubin section.

A cubin's sections are named after the kernel they serve (``.text.K``,
``.nv.info.K``, ``.nv.constant0.K``, ``.rel.text.K``, ``.nv.capmerc.text.K``,
...); a section of a kernel counts for it. Every section also counts in one
category (code, constant banks, kernel attributes, ...); what no section
covers is the ELF header, the section header table and padding. Sizes are
uncompressed; the stored (on disk) bytes of a compressed element are shared
out in proportion, the compression being over the whole element. PTX and
LTO-IR elements count whole, in their own category.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field

from .cubin import ModuleSymbols, element_label, element_symbols, open_cubin, read_cubin
from .elf import SHT, ElfFile
from .errors import CubinError, ElfError
from .fatbin import Element, ElementKind

#: (category, section name prefixes), first match wins.
CATEGORIES: tuple[tuple[str, tuple[str, ...]], ...] = (
    ("SASS code (.text)", (".text.",)),
    (".nv.capmerc sections", (".nv.capmerc",)),
    (".nv.merc sections", (".nv.merc",)),
    ("constant banks (.nv.constant*)", (".nv.constant",)),
    (
        "kernel attributes (.nv.info, notes)",
        (".nv.info", ".note", ".nv.callgraph", ".nv.prototype"),
    ),
    ("relocations", (".rel",)),
    ("debug info", (".debug", ".nv_debug", ".nv.debug")),
    ("initialized globals", (".nv.global.init", ".data", ".nv.global")),
    ("symbol and string tables", (".symtab", ".strtab", ".shstrtab", ".nv.uft")),
)
HEADERS = "ELF headers and padding"
OTHER = "other sections"
PTX = "PTX"
LTO = "LTO-IR and other kinds"

#: Section name prefixes that are followed by the name of the kernel they serve.
_KERNEL_PREFIXES = (
    ".text.",
    ".nv.info.",
    ".nv.shared.",
    ".rel.text.",
    ".rela.text.",
    ".nv.capmerc.text.",
    ".nv.merc.text.",
    ".nv.merc.rel.text.",
    ".nv.merc.rela.text.",
    ".nv.merc.nv.info.",
    ".nv.callgraph.",
    ".nv.local.",
)


#: CATEGORIES with each prefix's bare name (".text" for ".text.").
_CATEGORY_NAMES = tuple(
    (name, prefixes, frozenset(p.rstrip(".") for p in prefixes)) for name, prefixes in CATEGORIES
)


def category_of(section: str) -> str:
    for name, prefixes, bare in _CATEGORY_NAMES:
        if section.startswith(prefixes) or section in bare:
            return name
    return OTHER


def _kernel_of(section: str, kernels: frozenset[str]) -> str | None:
    if section.startswith(".nv.constant"):  # .nv.constant0.K, .nv.constant2.K, ...
        rest = section[len(".nv.constant") :]
        digits = len(rest) - len(rest.lstrip("0123456789"))
        if digits and rest[digits : digits + 1] == ".":
            name = rest[digits + 1 :]
            return name if name in kernels else None
        return None
    for prefix in _KERNEL_PREFIXES:
        if section.startswith(prefix):
            name = section[len(prefix) :]
            if name in kernels:
                return name
    return None


@dataclass(slots=True)
class ElementSizes:
    """Uncompressed bytes of one element, by category and by kernel."""

    total: int
    by_category: Counter[str] = field(default_factory=Counter)
    by_kernel: Counter[str] = field(default_factory=Counter)


def cubin_sizes(elf: ElfFile, kernels: frozenset[str]) -> ElementSizes:
    """The byte accounting of one cubin image (uncompressed, ``cubin.open_cubin``);
    ``kernels``: its entry points (``cubin.read_cubin``)."""
    try:
        out = ElementSizes(elf.size)
        covered = 0
        for sec in elf.sections:
            if sec.type in (SHT.NULL, SHT.NOBITS) or not sec.size:
                continue
            size = min(sec.size, elf.size)
            covered += size
            out.by_category[category_of(sec.name)] += size
            kernel = _kernel_of(sec.name, kernels)
            if kernel is not None:
                out.by_kernel[kernel] += size
        out.by_category[HEADERS] += max(0, elf.size - covered)
        for k in kernels:
            out.by_kernel.setdefault(k, 0)
        return out
    except ElfError as exc:
        raise CubinError(exc.message, path=elf.name) from None


def measure_element(
    data: bytes | bytearray, el: Element, name: str
) -> tuple[ModuleSymbols | None, ElementSizes]:
    """An element's symbols (as ``cubin.element_symbols`` reads them) and its byte
    accounting: a cubin split by section (its section table parsed once for
    both), PTX and LTO-IR whole."""
    if el.kind != ElementKind.ELF:
        out = ElementSizes(len(data))
        out.by_category[PTX if el.is_ptx else LTO] += len(data)
        return element_symbols(data, el, name=name), out
    label = element_label(name, el)
    elf = open_cubin(data, label)
    symbols = read_cubin(data, label, elf)
    return symbols, cubin_sizes(elf, frozenset(symbols.kernels))


#: Region and element headers of the fatbin container (not part of any payload).
CONTAINER = "fatbin headers and padding"


def stored_share(el: Element, uncompressed: int, part: int) -> int:
    """The stored payload bytes of ``part`` of an element's ``uncompressed`` bytes."""
    if uncompressed <= 0:
        return 0
    return round(el.payload_size * part / uncompressed)
