"""Speed of ``slimwheel slim`` beside ``cp``, and the whole torch 2.14.1 stack to sm_90.

    .venv/bin/python bench/bench_slim.py [--arch sm_90] [--skip-stack]

1. libtorch_cuda.so: ``cp`` and ``slimwheel slim`` timed side by side (page
   cache warm for both), with the slim's peak RSS. Target (issue 3): at most
   3x the copy, at most 500 MB RSS.
2. Every library of the stack (tests/helpers.py STACK): sizes before/after,
   what selection allows, PT_LOAD counts, and the total time.
"""

from __future__ import annotations

import argparse
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.common import timed
from slimwheel.arch import parse_targets
from slimwheel.elf import is_elf, open_elf
from slimwheel.fatbin import scan
from slimwheel.policy import LibraryPolicy
from slimwheel.slim import SlimResult, slim_library
from tests.helpers import stack_site


def warm(path: Path) -> None:
    with open(path, "rb") as f:
        while f.read(1 << 24):
            pass


def gap_reason(r: SlimResult) -> str:
    """Why bytes selection removes did not all leave the file."""
    gap = r.plan.removed_bytes - r.saved
    if r.plan.removed_bytes == 0 or gap <= 0.05 * r.plan.removed_bytes:
        return ""
    if r.plan.removed_bytes < 64 << 10:
        return "under 64 KiB removed: zeroed in place"
    if r.holes == 0:
        return (
            f"{gap / 1e6:.1f} MB zeroed in place: regions keep their addresses and no "
            "zero run reaches a page-aligned 64 KiB"
        )
    return f"{gap / 1e6:.1f} MB zeroed: runs shorter than 64 KiB or cut at page edges"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--arch", default="sm_90")
    ap.add_argument("--skip-stack", action="store_true")
    args = ap.parse_args()
    site = stack_site()
    lib = site / "torch/lib/libtorch_cuda.so"
    with tempfile.TemporaryDirectory(dir=site.parent) as tmp:
        warm(lib)
        cp_times, slim_times, rss = [], [], 0.0
        for i in range(3):
            t0 = time.monotonic()
            shutil.copyfile(lib, Path(tmp) / f"copy{i}.so")
            with open(Path(tmp) / f"copy{i}.so", "rb+") as f:
                os.fsync(f.fileno())
            cp_times.append(time.monotonic() - t0)
            t, r = timed(
                [
                    sys.executable,
                    "-m",
                    "slimwheel",
                    "slim",
                    str(lib),
                    "--arch",
                    args.arch,
                    "-o",
                    str(Path(tmp) / f"slim{i}.so"),
                    "-q",
                ]
            )
            slim_times.append(t)
            rss = max(rss, r)
        cp_t, slim_t = min(cp_times), min(slim_times)
        print(
            f"libtorch_cuda.so ({lib.stat().st_size / 1e6:.0f} MB), {os.cpu_count()} cores, "
            "best of 3, each with fsync"
        )
        print(f"  cp                 {cp_t:6.2f} s")
        print(
            f"  slimwheel slim     {slim_t:6.2f} s  ({slim_t / cp_t:.2f}x cp; target 3x)"
            f"  peak RSS {rss:.0f} MB (target 500 MB)"
        )
    if args.skip_stack:
        return
    targets = parse_targets([args.arch])
    rows = []
    t0 = time.monotonic()
    with tempfile.TemporaryDirectory(dir=site.parent) as tmp:
        for path in sorted(p for p in site.rglob("*") if p.is_file() and not p.is_symlink()):
            if not is_elf(path):
                continue
            with open_elf(path) as elf:
                if not scan(elf).regions:
                    continue
            r = slim_library(path, Path(tmp) / path.name, LibraryPolicy(targets=targets))
            rows.append((str(path.relative_to(site)), r))
            (Path(tmp) / path.name).unlink()
    total_t = time.monotonic() - t0
    print(f"\nstack to {args.arch}: {len(rows)} libraries with device code")
    print(
        f"{'library':<58} {'before':>9} {'after':>9} {'selection':>9} {'off file':>9}  PT_LOAD  gap"
    )
    tb = ta = ts = 0
    for name, r in rows:
        tb += r.file_bytes_before
        ta += r.file_bytes_after
        ts += r.plan.removed_bytes
        print(
            f"{name:<58} {r.file_bytes_before / 1e6:9.1f} {r.file_bytes_after / 1e6:9.1f} "
            f"{r.plan.removed_bytes / 1e6:9.1f} {r.saved / 1e6:9.1f}  "
            f"{r.loads_before}->{r.loads_after}  {gap_reason(r)}"
        )
    print(
        f"{'total (MB)':<58} {tb / 1e6:9.1f} {ta / 1e6:9.1f} {ts / 1e6:9.1f} {(tb - ta) / 1e6:9.1f}"
    )
    print(f"off the files / selection: {100 * (tb - ta) / ts:.1f}%; total time {total_t:.1f} s")


if __name__ == "__main__":
    main()
