"""``slimwheel profile -o OUT.json -- COMMAND...``: record the kernels a workload uses,
and the host code it runs (``--no-cpu`` leaves host code out).

Also ``slimwheel profile merge A.json B.json -o C.json`` (union) and
``slimwheel profile show P.json`` (a readable summary).
"""

from __future__ import annotations

import argparse
import sys
from typing import Any

from ..errors import UsageError
from ..hostuse import build_host_recorder
from ..profile import ProfileError, build_recorder, load_profile, merge, record, save_profile
from .options import add_store_option, human, make_console, store_from, warn

HELP = "record which kernels a command launches (profile), or merge / show profiles"


def configure_parser(sub: Any) -> argparse.ArgumentParser:
    p: argparse.ArgumentParser = sub.add_parser(
        "profile",
        help=HELP,
        description=HELP + ". Usage: slimwheel profile -o OUT.json -- COMMAND...; "
        "slimwheel profile merge A.json B.json -o C.json; slimwheel profile show P.json",
    )
    p.add_argument("-o", "--output", metavar="OUT", help="the profile to write")
    p.add_argument(
        "--no-cpu",
        action="store_true",
        help="record device code use only, not which host code runs",
    )
    add_store_option(p)
    p.add_argument("words", nargs=argparse.REMAINDER, metavar="-- COMMAND | merge | show")
    return p


def execute(args: argparse.Namespace) -> int:
    words = list(args.words)
    if words and words[0] == "merge":
        inputs, output = [], args.output
        rest = iter(words[1:])
        for w in rest:
            if w in ("-o", "--output"):
                output = next(rest, None)
            elif w.startswith("--output="):
                output = w.split("=", 1)[1]
            else:
                inputs.append(w)
        if not inputs or not output:
            raise UsageError("usage: slimwheel profile merge A.json B.json ... -o OUT.json")
        save_profile(merge(load_profile(p) for p in inputs), output)
        return 0
    if words and words[0] == "show":
        if len(words) != 2:
            raise UsageError("usage: slimwheel profile show P.json")
        show(words[1])
        return 0
    if words and words[0] == "--":
        words = words[1:]
    if not words:
        raise UsageError("usage: slimwheel profile -o OUT.json -- COMMAND...")
    if not args.output:
        raise UsageError("profile: -o OUT.json is required")
    store = store_from(args)
    host = None if args.no_cpu else build_host_recorder(store.root / "recorder" / "host")
    try:
        device = build_recorder(store)
    except ProfileError as exc:
        if host is None:
            raise
        device = None
        warn(f"device code use is not recorded: {exc.message}")
    code, profile = record(words, device, host)
    save_profile(profile, args.output)
    kernels = sum(len(lib.kernels) for lib in profile.libraries)
    hosts = [lib for lib in profile.libraries if lib.host is not None]
    cpu = ""
    if profile.host_recorded:
        pages = sum(lib.host.pages * lib.host.page_size for lib in hosts if lib.host)
        cpu = f", host code of {len(hosts)} files ({human(pages)} of pages run)"
    print(
        f"slimwheel: profile {args.output}: {len(profile.libraries)} libraries, {kernels} kernels "
        f"launched{cpu}, {profile.processes} processes",
        file=sys.stderr,
    )
    return code


def _cuda_version(v: int | None) -> str:
    """CUDA's integer versions (13000) as people write them (13.0)."""
    if not v:
        return "unknown"
    return f"{v // 1000}.{v % 1000 // 10}"


def show(path: str) -> None:
    p = load_profile(path)
    console = make_console()
    gpus = ", ".join(f"{n} ({cc})" for n, cc in p.gpus) or "unknown"
    runtimes = ", ".join(f"{n} {_cuda_version(v)}" for n, v in p.runtimes) or "not recorded"
    console.print(
        f"{path}: profile {p.digest()[:12]}, {p.processes} processes on {gpus}, "
        f"driver {_cuda_version(p.driver_version)}, runtime {runtimes}",
        markup=False,
    )
    for lib in p.libraries:
        dist = f" [{lib.distribution[0]} {lib.distribution[1]}]" if lib.distribution else ""
        device = lib.kernels or lib.variables or lib.regions or lib.images or lib.resolved
        if lib.host is not None and not device:
            console.print(
                f"  {lib.site_relative or lib.path}{dist}: host code: {lib.host.pages} pages "
                f"of {lib.host.page_size} B run",
                markup=False,
            )
            continue
        console.print(
            f"  {lib.site_relative or lib.path}{dist}: {len(lib.kernels)} kernels, "
            f"{len(lib.variables)} variables, {len(lib.regions)} regions loaded, "
            f"{len(lib.images)} images matched"
            + (
                f", host code: {lib.host.pages} pages of {lib.host.page_size} B run"
                if lib.host is not None
                else ""
            ),
            markup=False,
        )
    if not p.host_recorded:
        console.print("  host code use: not recorded (slimming with --cpu needs it)", markup=False)
    elif not p.host_exact:
        console.print(
            "  host code use: recorded with the kernel's fault-around on (no userfaultfd "
            "write-protect here): pages near those that ran count as run",
            markup=False,
        )
    for api, n in p.jit:
        console.print(f"  jit/heap images via {api}: {n} (never removed)", markup=False)
    if p.unmatched_images:
        console.print(
            f"  {p.unmatched_images} loaded images match no element (PTX JIT or heap)", markup=False
        )
