"""``slimwheel profile -o OUT.json -- COMMAND...``: record the kernels a workload uses.

Also ``slimwheel profile merge A.json B.json -o C.json`` (union) and
``slimwheel profile show P.json`` (a readable summary).
"""

from __future__ import annotations

import argparse
import sys
from typing import Any

from ..errors import UsageError
from ..profile import build_recorder, load_profile, merge, record, save_profile
from .options import add_store_option, make_console, store_from

HELP = "record which kernels a command launches (profile), or merge / show profiles"


def configure_parser(sub: Any) -> argparse.ArgumentParser:
    p: argparse.ArgumentParser = sub.add_parser(
        "profile",
        help=HELP,
        description=HELP + ". Usage: slimwheel profile -o OUT.json -- COMMAND...; "
        "slimwheel profile merge A.json B.json -o C.json; slimwheel profile show P.json",
    )
    p.add_argument("-o", "--output", metavar="OUT", help="the profile to write")
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
    code, profile = record(words, build_recorder(store))
    save_profile(profile, args.output)
    kernels = sum(len(lib.kernels) for lib in profile.libraries)
    print(
        f"slimwheel: profile {args.output}: {len(profile.libraries)} libraries, {kernels} kernels "
        f"launched, {profile.processes} processes",
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
        f"{path}: {p.processes} processes on {gpus}, driver {_cuda_version(p.driver_version)}, "
        f"runtime {runtimes}",
        markup=False,
    )
    for lib in p.libraries:
        dist = f" [{lib.distribution[0]} {lib.distribution[1]}]" if lib.distribution else ""
        console.print(
            f"  {lib.site_relative or lib.path}{dist}: {len(lib.kernels)} kernels, "
            f"{len(lib.variables)} variables, {len(lib.regions)} regions loaded, "
            f"{len(lib.images)} images matched",
            markup=False,
        )
    for api, n in p.jit:
        console.print(f"  jit/heap images via {api}: {n} (never removed)", markup=False)
    if p.unmatched_images:
        console.print(
            f"  {p.unmatched_images} loaded images match no element (PTX JIT or heap)", markup=False
        )
