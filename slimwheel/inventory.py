"""The inventory of one library: its device code, and optionally its kernels and plan.

This is the one place that opens a library, scans it and (on request)
decompresses its elements; ``inspect`` and later ``slim`` build on it.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Mapping
from dataclasses import dataclass

from .cubin import (
    BareCubin,
    ModuleSymbols,
    element_symbols,
    find_bare_cubins,
    read_bare_cubin,
)
from .cubinsize import ElementSizes, measure_element
from .elf import ElfFile, map_file, release
from .errors import SlimwheelError
from .fatbin import RELEASE_EVERY, FatbinLayout, payload, scan
from .hostcode import HostPlan
from .layout import strippable_sections
from .plan import Plan
from .policy import SlimPolicy
from .slim import make_plan, plan_host_code
from .store import file_sha256


@dataclass(frozen=True, slots=True)
class LibraryScan:
    name: str  # as shown to the user (relative to the input it came from)
    file_size: int
    machine: str
    soname: str | None
    layout: FatbinLayout
    symbols: Mapping[int, ModuleSymbols | None] | None  # element offset -> symbols
    plan: Plan | None
    note: str = ""  # a warning for the user
    bare_cubins: tuple[BareCubin, ...] = ()  # cubins with no fatbin around them (left in place)
    strip_bytes: int = 0  # what --strip would remove (DWARF, static symbol table)
    bare_symbols: Mapping[int, ModuleSymbols] | None = None  # offset -> symbols (--kernels)
    host: HostPlan | None = None  # --cpu: the host code plan
    sizes: Mapping[int, ElementSizes] | None = None  # element offset -> byte accounting

    @property
    def bare_bytes(self) -> int:
        return sum(c.size for c in self.bare_cubins)

    @property
    def device_bytes(self) -> int:
        return sum(r.total_size for r in self.layout.regions)

    @property
    def element_count(self) -> int:
        return sum(len(r.elements) for r in self.layout.regions)


def scan_library(
    path: str | os.PathLike[str],
    *,
    name: str | None = None,
    where: str | None = None,
    policy: SlimPolicy | None = None,
    kernels: bool = False,
    sizes: bool = False,
    progress: Callable[[int], None] | None = None,
) -> LibraryScan:
    """Scan one ELF library; with a policy that names targets, plan its slim too.

    ``name`` is what reports call it; errors name ``where`` (else ``name``,
    else the path): for a wheel member, the wheel and the member.
    """
    label = where or name or os.fspath(path)
    try:
        with map_file(path) as buf:
            elf = ElfFile(buf, label)
            layout = scan(elf)
            symbols: dict[int, ModuleSymbols | None] | None = None
            accounts: dict[int, ElementSizes] | None = {} if sizes else None
            if kernels or sizes:
                symbols = {} if kernels else None
                swept = 0
                for _region, el in layout.elements:
                    data = payload(buf, el, name=label)  # decompressed and read once for both
                    if accounts is not None:
                        syms, accounts[el.offset] = measure_element(data, el, label)
                    else:
                        syms = element_symbols(data, el, name=label)
                    if symbols is not None:
                        symbols[el.offset] = syms
                    del data
                    if progress:
                        progress(el.size)
                    if el.end - swept > RELEASE_EVERY:
                        release(buf, swept, el.offset)
                        swept = el.offset
            bare = tuple(
                find_bare_cubins(elf, [(r.offset, r.offset + r.total_size) for r in layout.regions])
            )
            bare_symbols = (
                {c.offset: read_bare_cubin(buf, c, name=label) for c in bare} if kernels else None
            )
            plan, note, host = None, "", None
            if policy is not None and policy.targets:
                sha = file_sha256(path) if policy.needs_hash else None
                lib = policy.for_library(os.path.basename(name or os.fspath(path)), sha)
                plan, note = make_plan(buf, label, layout, lib), lib.note
                host = plan_host_code(elf, lib)
            return LibraryScan(
                name=name or label,
                file_size=len(buf),
                machine=elf.machine_name,
                soname=elf.soname if elf.dynamic else None,
                layout=layout,
                symbols=symbols,
                plan=plan,
                note=note,
                bare_cubins=bare,
                bare_symbols=bare_symbols,
                strip_bytes=sum(s.size for s in strippable_sections(elf)),
                host=host,
                sizes=accounts,
            )
    except SlimwheelError as exc:
        if exc.path == os.fspath(path):
            exc.path = label  # a temporary copy: name what the user gave
        raise exc.with_path(label) from None
