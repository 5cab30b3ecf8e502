"""The inspect report: per-library summaries as a versioned JSON document.

The document is the single source for both outputs: ``--json`` prints it and
the text view renders it, so the two never disagree. Its schema is
``schemas/inspect.schema.json``.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Sequence
from typing import Any

from . import __version__
from .arch import Target
from .cubin import BareCubin
from .cubinsize import CONTAINER, stored_share
from .demangle import demangle
from .fatbin import Element
from .inventory import LibraryScan

SCHEMA_NAME = "slimwheel.inspect"
SCHEMA_VERSION = 4  # 2: bare cubins and --strip bytes; 3: host code (--cpu); 4: builds

Doc = dict[str, Any]


def _tally(rows: dict[str, Doc], key: str, el: Element, stored: int) -> None:
    row = rows.setdefault(key, {"elements": 0, "bytes": 0, "uncompressed_bytes": 0})
    row["elements"] += 1
    row["bytes"] += stored
    row["uncompressed_bytes"] += el.data_size


def _rows(rows: dict[str, Doc], label: str) -> list[Doc]:
    ordered = sorted(rows.items(), key=lambda kv: (-kv[1]["bytes"], kv[0]))
    return [{label: k, **v} for k, v in ordered]


def library_document(scan: LibraryScan, *, elements: bool = False) -> Doc:
    layout = scan.layout
    by_section: dict[str, Doc] = {}
    by_arch: dict[str, Doc] = {}
    by_kind: dict[str, Doc] = {}
    by_comp: dict[str, Doc] = {}
    for region in layout.regions:
        sec = by_section.setdefault(region.section, {"regions": 0, "elements": 0, "bytes": 0})
        sec["regions"] += 1
        sec["elements"] += len(region.elements)
        sec["bytes"] += region.total_size
        for el in region.elements:
            _tally(by_arch, el.arch_name, el, el.size)
            _tally(by_kind, el.kind_label, el, el.size)
            _tally(by_comp, el.compression.value, el, el.size)
    doc: Doc = {
        "name": scan.name,
        "file_bytes": scan.file_size,
        "machine": scan.machine,
        "soname": scan.soname,
        "device_code_bytes": scan.device_bytes,
        "stored_payload_bytes": sum(e.payload_size for _, e in layout.elements),
        "uncompressed_payload_bytes": sum(e.data_size for _, e in layout.elements),
        "regions": len(layout.regions),
        "elements": scan.element_count,
        "wrappers": len(layout.wrappers),
        "unreferenced_regions": len(layout.unreferenced()),
        "by_section": [
            {"section": k, **v}
            for k, v in sorted(by_section.items(), key=lambda kv: (-kv[1]["bytes"], kv[0]))
        ],
        "by_arch": _rows(by_arch, "arch"),
        "by_kind": _rows(by_kind, "kind"),
        "by_compression": _rows(by_comp, "compression"),
        "removable": None,
    }
    if scan.plan is not None:
        doc["removable"] = {
            "bytes": scan.plan.removed_bytes,
            "elements": scan.plan.removed_elements,
        }
    doc["strip_bytes"] = scan.strip_bytes
    h = scan.host
    doc["host_code"] = (
        {
            "bytes": h.code_bytes,
            "removable_bytes": h.removed_bytes,
            "functions": h.functions,
            "removable_functions": h.removed_functions,
            "note": h.note,
        }
        if h is not None
        else None
    )
    doc["bare_cubin_bytes"] = scan.bare_bytes
    doc["bare_cubins"] = [_bare_document(scan, c) for c in scan.bare_cubins]
    if elements or scan.symbols is not None:
        doc["element_list"] = _element_list(scan)
    return doc


def _bare_document(scan: LibraryScan, c: BareCubin) -> Doc:
    out: Doc = {"section": c.section, "offset": c.offset, "bytes": c.size, "arch": c.arch}
    if scan.bare_symbols is not None:
        syms = scan.bare_symbols[c.offset]
        out["kernels"] = list(syms.kernels)
    return out


def _element_list(scan: LibraryScan) -> list[Doc]:
    decisions = {}
    if scan.plan is not None:
        decisions = {d.element.offset: d for d in scan.plan.decisions}
    out = []
    for index, region in enumerate(scan.layout.regions):
        for el in region.elements:
            row: Doc = {
                "region": index,
                "section": region.section,
                "offset": el.offset,
                "kind": el.kind_label,
                "arch": el.arch_name,
                "variant": el.variant.value,
                "debug": el.debug,
                "compression": el.compression.value,
                "header_bytes": el.header_size,
                "stored_bytes": el.payload_size,
                "uncompressed_bytes": el.data_size,
                "identifier": el.identifier,
            }
            d = decisions.get(el.offset)
            if d is not None:
                row["keep"] = d.keep
                row["reason"] = d.reason.value
            if scan.symbols is not None:
                syms = scan.symbols.get(el.offset)
                row["kernels"] = list(syms.kernels) if syms else []
                row["variables"] = (
                    [{"name": v.name, "space": v.space, "size": v.size} for v in syms.variables]
                    if syms
                    else []
                )
            out.append(row)
    return out


def sort_scans(scans: Iterable[LibraryScan]) -> list[LibraryScan]:
    """Largest device code first, then by name."""
    return sorted(scans, key=lambda s: (-s.device_bytes, s.name))


def inspect_document(
    scans: Sequence[LibraryScan],
    *,
    inputs: Sequence[str],
    targets: Sequence[Target] = (),
    keep_ptx: bool = False,
    elements: bool = False,
) -> Doc:
    libs = [library_document(s, elements=elements) for s in sort_scans(scans)]
    totals: Doc = {
        "libraries": len(libs),
        "libraries_with_device_code": sum(1 for d in libs if d["regions"]),
        "file_bytes": sum(d["file_bytes"] for d in libs),
        "device_code_bytes": sum(d["device_code_bytes"] for d in libs),
        "uncompressed_payload_bytes": sum(d["uncompressed_payload_bytes"] for d in libs),
        "regions": sum(d["regions"] for d in libs),
        "elements": sum(d["elements"] for d in libs),
        "bare_cubin_bytes": sum(d["bare_cubin_bytes"] for d in libs),
        "strip_bytes": sum(d["strip_bytes"] for d in libs),
        "removable_bytes": (
            sum(d["removable"]["bytes"] for d in libs if d["removable"]) if targets else None
        ),
        "host_removable_bytes": (
            sum(d["host_code"]["removable_bytes"] for d in libs if d["host_code"])
            if any(d["host_code"] for d in libs)
            else None
        ),
    }
    return {
        "schema": SCHEMA_NAME,
        "schema_version": SCHEMA_VERSION,
        "tool": {"name": "slimwheel", "version": __version__},
        "inputs": list(inputs),
        "targets": [t.name for t in targets],
        "keep_ptx": keep_ptx,
        "libraries": libs,
        "totals": totals,
    }


def size_views(
    scans: Sequence[LibraryScan], *, top: int | None, pattern: re.Pattern[str] | None
) -> Doc:
    """Device code by cubin section category, and bytes per kernel (largest stored
    first; ``pattern`` searches the demangled and the mangled name; ``top`` cuts)."""
    categories: dict[str, list[int]] = {}
    kernels: dict[tuple[str, str], tuple[list[int], set[str]]] = {}
    for s in sort_scans(scans):
        if not s.sizes:
            continue
        for region in s.layout.regions:
            headers = region.total_size - sum(e.payload_size for e in region.elements)
            row = categories.setdefault(CONTAINER, [0, 0])
            row[0] += headers
            row[1] += headers
        for _region, el in s.layout.elements:
            acc = s.sizes.get(el.offset)
            if acc is None:
                continue
            for cat, n in acc.by_category.items():
                row = categories.setdefault(cat, [0, 0])
                row[0] += n
                row[1] += stored_share(el, acc.total, n)
            for name, n in acc.by_kernel.items():
                counts, arches = kernels.setdefault((s.name, name), ([0, 0], set()))
                counts[0] += n
                counts[1] += stored_share(el, acc.total, n)
                arches.add(el.arch_name)
    rows: list[Doc] = []
    for (lib, name), ((raw, stored), arches) in kernels.items():
        nice = demangle(name)
        if pattern is not None and not (pattern.search(nice) or pattern.search(name)):
            continue
        rows.append(
            {
                "library": lib,
                "kernel": name,
                "demangled": nice,
                "arches": sorted(arches),
                "uncompressed_bytes": raw,
                "stored_bytes": stored,
            }
        )
    rows.sort(
        key=lambda r: (-r["stored_bytes"], -r["uncompressed_bytes"], r["library"], r["kernel"])
    )
    return {
        "by_category": [
            {"category": c, "uncompressed_bytes": raw, "stored_bytes": stored}
            for c, (raw, stored) in sorted(categories.items(), key=lambda kv: (-kv[1][1], kv[0]))
        ],
        "kernels_matched": len(rows),
        "kernel_bytes": {
            "uncompressed": sum(r["uncompressed_bytes"] for r in rows),
            "stored": sum(r["stored_bytes"] for r in rows),
        },
        "kernels": rows[:top] if top is not None else rows,
    }
