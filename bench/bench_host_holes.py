"""Host code (--cpu): how much of it the hole rules let leave the file. No GPU needed.

    .venv/bin/python bench/bench_host_holes.py PROFILE.json PATH... [--min-hole 4K,16K,64K]
        [--max-holes 256,1024,4096] [--json OUT]

PATH: libraries, or folders searched for ELF files. For each library the profile
holds a host record of (matched by SHA-256, as ``--cpu`` matches), the plan
``--cpu`` would make under each pair of rules: the smallest hole (``--min-hole``)
and the most holes per library (the defaults: ``policy.host_rules()``). It
prints the holes taken and the host code removed per library and in total;
nothing is written but ``--json``. Each hole costs the loader a PT_LOAD, an
mmap and two mappings (the segment and the PROT_NONE gap before it), so the
totals' hole counts are what a process that loads all these libraries pays.

One plan per library, ``slim.plan_host_code``'s with the smallest hole asked for
and no cap: a larger smallest hole takes those of its holes that are at least
that long, and a cap keeps the largest (``hostcode.largest_first``), the choices
``plan_host`` makes.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.common import run_main, sizes_arg
from slimwheel.elf import ElfFile, is_elf, open_elf
from slimwheel.hostcode import HostRange, largest_first
from slimwheel.hostuse import HostUse
from slimwheel.policy import LibraryPolicy, host_rules
from slimwheel.profile import load_profile
from slimwheel.slim import plan_host_code
from slimwheel.store import file_sha256
from slimwheel.write import atomic_output

#: Folders searched hold at most this many files (a site-packages has a few thousand).
MAX_FILES = 200_000


def libraries(paths: list[Path]) -> list[Path]:
    """The ELF files named or found under ``paths`` (links not followed), sorted."""
    out: set[Path] = set()
    seen = 0
    for p in paths:
        if p.is_dir():
            for root, dirs, files in os.walk(p):
                dirs.sort()
                for name in files:
                    seen += 1
                    if seen > MAX_FILES:
                        raise SystemExit(f"{p}: more than {MAX_FILES} files")
                    f = Path(root) / name
                    if f.is_file() and not f.is_symlink() and is_elf(f):
                        out.add(f)
        elif p.is_file() and is_elf(p):
            out.add(p)
        else:
            raise SystemExit(f"{p}: not an ELF file or a folder")
    return sorted(out)


def capped(holes: list[HostRange], cap: int) -> tuple[int, int]:
    """(holes taken, bytes removed) when at most ``cap`` of ``holes`` are taken."""
    taken = largest_first(holes)[:cap]
    return len(taken), sum(h.end - h.start for h in taken)


Rules = dict[str, dict[str, int]]  # "16K/1024" -> {"holes": n, "removed": bytes}


def measure(
    elf: ElfFile, use: HostUse, min_holes: list[int], caps: list[int]
) -> tuple[int, Rules] | None:
    """This library's bytes of host code and, per rule pair, the holes and bytes removed
    (None: ``--cpu`` leaves the file's host code alone)."""
    policy = LibraryPolicy(targets=(), cpu=True, host=use, host_min_hole=min(min_holes))
    plan = plan_host_code(elf, policy, max_holes=sys.maxsize)
    if plan is None:
        return None
    rules: Rules = {}
    for mh in min_holes:
        holes = [h for h in plan.ranges if h.end - h.start >= mh]
        for cap in caps:
            n, removed = capped(holes, cap)
            rules[rule_name(mh, cap)] = {"holes": n, "removed": removed}
    return plan.code_bytes, rules


def rule_name(min_hole: int, cap: int) -> str:
    return f"{min_hole >> 10}K/{cap}"


def caps_arg(text: str) -> list[int]:
    """``256,1024``: holes per library, each at least 1."""
    try:
        out = sorted({int(x) for x in text.split(",")})
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r}: not a list of numbers") from None
    if any(n < 1 for n in out):
        raise argparse.ArgumentTypeError(f"{text!r}: a cap is at least 1")
    return out


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("profile", type=Path)
    ap.add_argument("paths", type=Path, nargs="+")
    ap.add_argument("--min-hole", type=sizes_arg, default="4K,16K,64K")
    ap.add_argument("--max-holes", type=caps_arg, default="256,1024,4096")
    ap.add_argument("--json", type=Path, help="write the numbers here")
    args = ap.parse_args(argv)
    if args.json and not args.json.parent.is_dir():
        ap.error(f"--json {args.json}: no folder {args.json.parent}")
    min_holes: list[int] = args.min_hole
    caps: list[int] = args.max_holes
    profile = load_profile(args.profile)
    libs: dict[str, tuple[int, Rules]] = {}
    for path in libraries(args.paths):
        sha = file_sha256(path)
        use = profile.host_for(sha)
        if use is None:
            continue
        with open_elf(path) as elf:
            row = measure(elf, use, min_holes, caps)
        if row is not None:
            libs[f"{path.name} {sha[:12]}"] = row
            print(f"{path.name}: {row[0]:,} bytes of host code", flush=True)
    total_code = sum(code for code, _ in libs.values())
    totals: Rules = {}
    for mh in min_holes:
        for cap in caps:
            k = rule_name(mh, cap)
            totals[k] = {x: sum(r[k][x] for _, r in libs.values()) for x in ("holes", "removed")}
    default = rule_name(*host_rules())
    doc = {
        "profile": profile.digest(),
        "default": default,
        "libraries": {k: {"host_code": c, "rules": r} for k, (c, r) in libs.items()},
        "total": {"libraries": len(libs), "host_code": total_code, "rules": totals},
    }
    print(f"\n{len(libs)} libraries with a host record, {total_code / 1e6:,.1f} MB of host code")
    print(f"{'min hole / holes per library':30s} {'holes':>7s} {'removed':>11s} {'share':>7s}")
    for k, v in totals.items():
        share = v["removed"] / total_code * 100 if total_code else 0.0
        mark = "  (default)" if k == default else ""
        print(f"{k:30s} {v['holes']:7,d} {v['removed'] / 1e6:8,.1f} MB {share:6.1f}%{mark}")
    if args.json:
        with atomic_output(args.json) as out:
            out.write((json.dumps(doc, indent=1, sort_keys=True) + "\n").encode())
    return 0


if __name__ == "__main__":
    run_main("bench_host_holes", main)
