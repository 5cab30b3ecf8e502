"""``slimwheel inspect TARGET...``: what device code libraries carry, and what a slim removes."""

from __future__ import annotations

import argparse
import json
import re
import sys
from typing import TYPE_CHECKING, Any

from ..errors import UsageError
from ..identity import describe, identities
from ..inventory import LibraryScan, scan_library
from ..report import Doc, inspect_document, size_views
from ..sources import LibrarySource, find_libraries
from .options import (
    add_output_options,
    add_policy_options,
    human,
    make_console,
    policy_from,
    positive_int,
    warn,
)
from .progress import byte_progress

if TYPE_CHECKING:
    from rich.console import Console

HELP = "show the CUDA device code in libraries, wheels, directories or installed distributions"


def configure_parser(sub: Any) -> argparse.ArgumentParser:
    p: argparse.ArgumentParser = sub.add_parser("inspect", help=HELP, description=HELP + ".")
    p.add_argument(
        "targets",
        nargs="+",
        metavar="TARGET",
        help="a library (.so), a wheel (.whl), a directory, or an installed distribution name",
    )
    add_policy_options(p, required=False, layout=False)
    p.add_argument("--kernels", action="store_true", help="list kernels and variables per element")
    p.add_argument(
        "--elements", action="store_true", help="list every element (with --json: element_list)"
    )
    p.add_argument(
        "--all", action="store_true", help="also list libraries that carry no device code"
    )
    p.add_argument(
        "--top",
        type=positive_int,
        metavar="N",
        help="the N largest kernels (stored bytes, every arch), and device code by cubin "
        "section category",
    )
    p.add_argument(
        "--filter",
        metavar="REGEX",
        help="only kernels whose name (demangled or mangled) matches; implies the kernel table",
    )
    add_output_options(p)
    return p


def execute(args: argparse.Namespace) -> int:
    policy = policy_from(args)
    pattern = None
    if args.filter is not None:
        try:
            pattern = re.compile(args.filter)
        except re.error as exc:
            raise UsageError(f"--filter {args.filter!r}: {exc}") from None
    sizes = args.top is not None or pattern is not None
    targets = policy.targets
    if not targets and (args.profile or args.leave_section or args.keep_ptx or args.drop_lto):
        raise UsageError("--profile, --leave-section, --keep-ptx and --drop-lto need --arch")
    sources: list[LibrarySource] = []
    for t in args.targets:
        sources.extend(find_libraries(t))
    scans: list[LibraryScan] = []
    with byte_progress(sum(s.size for s in sources), enabled=not args.quiet) as advance:
        for src in sources:
            with src.open() as path:
                scan = scan_library(
                    path,
                    name=src.name,
                    where=src.where,
                    policy=policy,
                    kernels=args.kernels,
                    sizes=sizes,
                )
            advance(src.size, src.name)
            scans.append(scan)
            if scan.note:
                warn(scan.note)
    doc = inspect_document(
        scans,
        inputs=args.targets,
        targets=targets,
        keep_ptx=args.keep_ptx,
        elements=args.elements or args.kernels,
    )
    if sizes:
        doc["sizes"] = size_views(scans, top=args.top, pattern=pattern)
    builds = [i for t in args.targets for i in identities(t)]
    if builds:
        doc["builds"] = [b.to_json() for b in builds]
    if args.json:
        json.dump(doc, sys.stdout, indent=1, sort_keys=False)
        sys.stdout.write("\n")
    else:
        render(doc, show_all=args.all)
    return 0


def _pct(part: int, whole: int) -> str:
    return f"{100 * part / whole:.1f}%" if whole else "-"


def _breakdown(rows: list[Doc], key: str, limit: int = 12) -> str:
    parts = [f"{r[key]} {human(r['bytes'])}" for r in rows[:limit]]
    if len(rows) > limit:
        parts.append(f"+{len(rows) - limit} more")
    return ", ".join(parts)


def render(doc: Doc, *, show_all: bool = False) -> None:
    from rich.table import Table

    console = make_console()
    targets = doc["targets"]
    libs = [
        lib
        for lib in doc["libraries"]
        if show_all or lib["regions"] or lib["bare_cubins"] or lib["host_code"]
    ]
    table = Table(title="CUDA device code", title_justify="left", show_footer=True)
    totals = doc["totals"]
    table.add_column("library", footer=f"total ({totals['libraries']} libraries)")
    table.add_column("file", justify="right", footer=human(totals["file_bytes"]))
    table.add_column("device code", justify="right", footer=human(totals["device_code_bytes"]))
    table.add_column(
        "%", justify="right", footer=_pct(totals["device_code_bytes"], totals["file_bytes"])
    )
    table.add_column("regions", justify="right", footer=str(totals["regions"]))
    table.add_column("elements", justify="right", footer=str(totals["elements"]))
    table.add_column(
        "uncompressed", justify="right", footer=human(totals["uncompressed_payload_bytes"])
    )
    if targets:
        removable = totals["removable_bytes"] or 0
        table.add_column(
            f"removable ({','.join(targets)})", justify="right", footer=human(removable)
        )
        table.add_column("% of file", justify="right", footer=_pct(removable, totals["file_bytes"]))
    for lib in libs:
        row = [
            lib["name"],
            human(lib["file_bytes"]),
            human(lib["device_code_bytes"]),
            _pct(lib["device_code_bytes"], lib["file_bytes"]),
            str(lib["regions"]),
            str(lib["elements"]),
            human(lib["uncompressed_payload_bytes"]),
        ]
        if targets:
            rem = lib["removable"]["bytes"]
            row += [human(rem), _pct(rem, lib["file_bytes"])]
        table.add_row(*row)
    console.print(table)
    for b in doc.get("builds", ()):
        console.print(f"installers see {describe(b)}", markup=False)
    if "sizes" in doc:
        _render_sizes(console, doc["sizes"], totals["device_code_bytes"])
    if not libs:
        console.print("no CUDA device code found")
        return
    device_total = totals["device_code_bytes"]
    if len(libs) > 3 and device_total:
        top = libs[:3]
        share = sum(lib["device_code_bytes"] for lib in top)
        console.print(
            f"The {len(top)} largest libraries hold {_pct(share, device_total)} of the device code."
        )
    for lib in libs:
        if lib["bare_cubins"]:
            _render_bare(console, lib)
        if lib["host_code"]:
            h = lib["host_code"]
            console.print(
                f"\n[bold]{lib['name']}[/bold]  host code {human(h['bytes'])}: --cpu would remove "
                f"{human(h['removable_bytes'])} ({_pct(h['removable_bytes'], h['bytes'])}), "
                f"{h['removable_functions']} of {h['functions']} functions"
            )
        if not lib["regions"]:
            continue
        strip = f", --strip {human(lib['strip_bytes'])}" if lib["strip_bytes"] else ""
        console.print(
            f"\n[bold]{lib['name']}[/bold]  {lib['machine']}"
            f"  wrappers {lib['wrappers']}, unreferenced regions "
            f"{lib['unreferenced_regions']}{strip}"
        )
        console.print(f"  by section:     {_breakdown(lib['by_section'], 'section')}", markup=False)
        console.print(f"  by arch:        {_breakdown(lib['by_arch'], 'arch')}", markup=False)
        console.print(f"  by kind:        {_breakdown(lib['by_kind'], 'kind')}", markup=False)
        console.print(
            f"  by compression: {_breakdown(lib['by_compression'], 'compression')}"
            f" (stored {human(lib['stored_payload_bytes'])},"
            f" uncompressed {human(lib['uncompressed_payload_bytes'])})",
            markup=False,
        )
        for el in lib.get("element_list", ()):
            _render_element(console, el)
    if totals["strip_bytes"]:
        console.print(
            f"\n--strip would also remove {human(totals['strip_bytes'])} "
            "(DWARF and static symbol tables; --all lists every library)."
        )
    if targets:
        removable, size = totals["removable_bytes"] or 0, totals["file_bytes"]
        console.print(
            f"\nA slim for {', '.join(targets)} would remove {human(removable)} of "
            f"{human(size)} ({_pct(removable, size)})."
        )
    if totals["host_removable_bytes"] is not None:
        host = totals["host_removable_bytes"]
        console.print(f"--cpu would also remove {human(host)} of host code.")


def _render_bare(console: Console, lib: Doc) -> None:
    by_arch: dict[str, int] = {}
    for c in lib["bare_cubins"]:
        by_arch[c["arch"]] = by_arch.get(c["arch"], 0) + c["bytes"]
    arches = ", ".join(f"{a} {human(n)}" for a, n in sorted(by_arch.items()))
    console.print(
        f"\n{lib['name']}: {len(lib['bare_cubins'])} bare cubins ({human(lib['bare_cubin_bytes'])}:"
        f" {arches}), loaded by the library itself; slim leaves them in place",
        markup=False,
    )
    for c in lib["bare_cubins"]:
        for k in c.get("kernels", ()):
            console.print(
                f"        kernel   {k}  ({c['arch']}, bare cubin @{c['offset']:#x})", markup=False
            )


def _render_element(console: Console, el: Doc) -> None:
    flags = []
    if el["debug"]:
        flags.append("debug")
    if "keep" in el:
        flags.append(("keep: " if el["keep"] else "remove: ") + el["reason"])
    size = human(el["stored_bytes"])
    if el["compression"] != "none":
        size += f" {el['compression']} -> {human(el['uncompressed_bytes'])}"
    line = (
        f"    region {el['region']:>4} {el['section']:<14} @{el['offset']:#x}  "
        f"{el['kind']:<4} {el['arch']:<12} {size}"
    )
    if flags:
        line += "  [" + ", ".join(flags) + "]"
    console.print(line, markup=False)
    for k in el.get("kernels", ()):
        console.print(f"        kernel   {k}", markup=False)
    for v in el.get("variables", ()):
        console.print(f"        {v['space']:<8} {v['name']} ({v['size']} B)", markup=False)


def _render_sizes(console: Console, sizes: Doc, device: int) -> None:
    from rich.table import Table

    cats = Table(title="Device code by cubin section", title_justify="left")
    cats.add_column("category")
    cats.add_column("uncompressed", justify="right")
    cats.add_column("stored", justify="right")
    cats.add_column("% of device code", justify="right")
    for c in sizes["by_category"]:
        cats.add_row(
            c["category"],
            human(c["uncompressed_bytes"]),
            human(c["stored_bytes"]),
            _pct(c["stored_bytes"], device),
        )
    console.print(cats)
    shown = sizes["kernels"]
    table = Table(
        title=f"Largest kernels ({len(shown)} of {sizes['kernels_matched']})",
        title_justify="left",
    )
    table.add_column("#", justify="right")
    table.add_column("kernel (demangled)", overflow="ellipsis", no_wrap=True, max_width=90)
    table.add_column("library")
    table.add_column("arches")
    table.add_column("uncompressed", justify="right")
    table.add_column("stored", justify="right")
    table.add_column("% of device code", justify="right")
    for i, k in enumerate(shown, 1):
        table.add_row(
            str(i),
            k["demangled"],
            k["library"],
            ",".join(k["arches"]),
            human(k["uncompressed_bytes"]),
            human(k["stored_bytes"]),
            _pct(k["stored_bytes"], device),
        )
    console.print(table)
    total = sizes["kernel_bytes"]
    console.print(
        f"{sizes['kernels_matched']} kernels: {human(total['stored'])} stored, "
        f"{human(total['uncompressed'])} uncompressed",
        markup=False,
    )
