"""``slimwheel slim LIB --arch TARGET -o OUT``: keep only what the driver loads there."""

from __future__ import annotations

import argparse
import json
import os
import sys
from typing import TYPE_CHECKING, Any

from ..demangle import demangle
from ..errors import UsageError
from ..files import check_regular
from ..slim import SlimResult, slim_library
from ..store import file_sha256
from .options import (
    add_output_options,
    add_policy_options,
    human,
    make_console,
    policy_from,
    warn,
)

if TYPE_CHECKING:
    from rich.console import Console

HELP = "write a library that keeps only the device code the given GPUs load"


def configure_parser(sub: Any) -> argparse.ArgumentParser:
    p: argparse.ArgumentParser = sub.add_parser("slim", help=HELP, description=HELP + ".")
    p.add_argument("library", metavar="LIB", help="the shared library to slim")
    add_policy_options(p)
    out = p.add_mutually_exclusive_group(required=True)
    out.add_argument("-o", "--output", metavar="OUT", help="where to write the slim library")
    out.add_argument("--in-place", action="store_true", help="replace LIB (atomically)")
    p.add_argument(
        "--explain", action="store_true", help="print why each element is kept or removed"
    )
    add_output_options(p)
    return p


def execute(args: argparse.Namespace) -> int:
    src = args.library
    check_regular(src)
    dest = src if args.in_place else args.output
    if not args.in_place and os.path.exists(dest) and os.path.samefile(src, dest):
        raise UsageError(f"{dest}: output is the input; use --in-place to replace it")
    policy = policy_from(args)
    # Hashing a 500 MB library is not free: only when a profile needs it.
    sha = file_sha256(src) if policy.needs_hash else None
    lib = policy.for_library(os.path.basename(src), sha)
    if lib.note:
        warn(lib.note)
    result = slim_library(src, dest, lib)
    if args.json:
        json.dump(result_document(result), sys.stdout, indent=1)
        sys.stdout.write("\n")
        return 0
    console = make_console()
    if args.explain:
        print_explain(console, result)
    print_summary(console, result, dest)
    return 0


def print_summary(console: Console, r: SlimResult, dest: str) -> None:
    pct = 100 * r.saved / r.file_bytes_before if r.file_bytes_before else 0.0
    console.print(
        f"{r.name} -> {dest}\n"
        f"  file          {human(r.file_bytes_before)} -> {human(r.file_bytes_after)}"
        f"  (-{human(r.saved)}, {pct:.1f}%)",
        markup=False,
    )
    console.print(
        f"  device code   {human(r.device_bytes_before)} -> {human(r.device_bytes_after)}"
        f"  ({r.plan.removed_elements} of {r.plan.removed_elements + r.plan.kept_elements}"
        " elements removed)",
        markup=False,
    )
    console.print(
        f"  PT_LOAD       {r.loads_before} -> {r.loads_after}"
        f"  ({r.holes} zero runs, {human(r.hole_bytes)}, taken out of the file)",
        markup=False,
    )
    if r.stripped_bytes:
        console.print(
            f"  stripped      {human(r.stripped_bytes)} (DWARF, static symbol table)",
            markup=False,
        )
    if r.host is not None:
        h = r.host
        console.print(
            f"  host code     {human(h.code_bytes)} -> {human(h.code_bytes - h.removed_bytes)}"
            f"  ({h.removed_functions} of {h.functions} functions removed, "
            f"{len(h.ranges)} ranges unmapped; --cpu)" + (f"; {h.note}" if h.note else ""),
            markup=False,
        )
    if r.note:
        console.print(f"  note          {r.note}", markup=False)
    for section, why in r.plan.left_alone:
        console.print(f"  left alone    {section}: {why}", markup=False)
    arches = sorted(set(r.by_arch_before) | set(r.by_arch_after))
    console.print(
        "  by arch       "
        + ", ".join(
            f"{a} {human(r.by_arch_before.get(a, 0))}->{human(r.by_arch_after.get(a, 0))}"
            for a in arches
        ),
        markup=False,
    )
    if r.unused_bytes:
        unused = sum(1 for d in r.plan.decisions if d.reason.value == "not-used")
        console.print(
            f"  profile       {unused} more elements ({human(r.unused_bytes)}) removed as unused",
            markup=False,
        )
    rep = r.report
    console.print(
        f"  verified      {rep.regions} regions, {rep.kept_elements} kept elements byte-identical,"
        f" {human(rep.compared_bytes)} of the loaded image compared",
        markup=False,
    )


def print_explain(console: Console, r: SlimResult) -> None:
    console.print(f"{r.name}: targets {', '.join(t.name for t in r.plan.targets)}", markup=False)
    if r.host is not None:
        h = r.host
        console.print(
            f"  host code: {h.kept_functions} of {h.functions} functions ran or must stay "
            "(entry, init/fini, IFUNC resolvers, cold parts of kept functions)",
            markup=False,
        )
        for hr in h.ranges:
            console.print(
                f"    unmap  [{hr.start:#x}, {hr.end:#x})  {human(hr.end - hr.start):>9}",
                markup=False,
            )
        largest = sorted(
            (u for u in h.removed if u.function), key=lambda u: (u.start - u.end, u.start)
        )
        for u in largest[:20]:
            console.print(
                f"    remove {demangle(u.name) if u.name else f'<function at {u.start:#x}>'}"
                f"  {human(u.end - u.start)}",
                markup=False,
            )
    for i, rp in enumerate(r.plan.regions):
        reg = rp.region
        console.print(
            f"  region {i} {reg.section} @{reg.vaddr:#x} ({len(reg.elements)} elements)",
            markup=False,
        )
        for d in rp.decisions:
            e = d.element
            verb = "keep  " if d.keep else "remove"
            why = d.reason.text
            if d.targets:
                why += " " + ", ".join(t.name for t in d.targets)
            console.print(
                f"    {verb} {e.kind_label:<4} {e.arch_name:<12} {human(e.size):>9}  {why}",
                markup=False,
            )


def result_document(r: SlimResult) -> dict[str, Any]:
    """The ``--json`` document (schema: ``schemas/slim.schema.json``)."""
    from .. import __version__

    return {
        "schema": "slimwheel.slim",
        "schema_version": 1,
        "tool": {"name": "slimwheel", "version": __version__},
        "library": r.name,
        "targets": [t.name for t in r.plan.targets],
        "keep_ptx": r.plan.keep_ptx,
        "drop_lto": r.plan.drop_lto,
        "file_bytes": {"before": r.file_bytes_before, "after": r.file_bytes_after},
        "device_code_bytes": {"before": r.device_bytes_before, "after": r.device_bytes_after},
        "elements": {"kept": r.plan.kept_elements, "removed": r.plan.removed_elements},
        "pt_load": {"before": r.loads_before, "after": r.loads_after},
        "holes": {"count": r.holes, "bytes": r.hole_bytes},
        "compacted": r.compacted,
        "stripped_bytes": r.stripped_bytes,
        "host_code": (
            {
                "bytes": {"before": r.host.code_bytes, "removed": r.host.removed_bytes},
                "functions": {
                    "total": r.host.functions,
                    "kept": r.host.kept_functions,
                    "removed": r.host.removed_functions,
                },
                "ranges": [[x.start, x.end] for x in r.host.ranges],
                "note": r.host.note,
            }
            if r.host is not None
            else None
        ),
        "note": r.note,
        "left_alone": [{"section": s, "reason": why} for s, why in r.plan.left_alone],
        "not_used": {
            "elements": sum(1 for d in r.plan.decisions if d.reason.value == "not-used"),
            "bytes": r.unused_bytes,
        },
        "by_arch": {
            a: {"before": r.by_arch_before.get(a, 0), "after": r.by_arch_after.get(a, 0)}
            for a in sorted(set(r.by_arch_before) | set(r.by_arch_after))
        },
        "verified": {
            "regions": r.report.regions,
            "kept_elements": r.report.kept_elements,
            "compared_bytes": r.report.compared_bytes,
        },
    }
