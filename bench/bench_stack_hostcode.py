"""The torch + nvidia-* stack on a GPU machine: sizes per slimming variant, host code removed.

    python bench/bench_stack_hostcode.py --profile profiles/h200-torch2.11-cu130-battery.json \
        [--workdir DIR] [--jobs N]

Copies the installed torch/ and nvidia/ packages into a venv under
``--workdir`` (the original is never touched), then slims the copy in place
with ``slim-env`` in each variant, reads every library's size and its
``.slimwheel.host`` note, and restores it:

    original -> arch (the local GPU) -> arch + profile -> arch + profile + --cpu
    -> arch + profile + --cpu + --strip

Prints per library (largest first) and in total: file bytes per variant,
host code (executable sections) and what --cpu removed (bytes, functions).
The profile must have been recorded on the same stack (its libraries are
matched by hash); the battery profile in profiles/ was recorded with
tests/gpu/battery.py under LAZY and EAGER and merged. Needs a GPU only for
``--arch native``; ``--arch sm_90`` works anywhere the stack is installed.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.bench_hostcode import library_sizes, mb
from tests.gpu.test_slim_env_gpu import venv_copy

VARIANTS: tuple[tuple[str, tuple[str, ...]], ...] = (
    ("arch", ()),
    ("+profile", ("--profile", "{profile}")),
    ("+cpu", ("--profile", "{profile}", "--cpu")),
    ("+strip", ("--profile", "{profile}", "--cpu", "--strip")),
)


def slimwheel(*args: str) -> None:
    proc = subprocess.run(
        [sys.executable, "-m", "slimwheel", *args], capture_output=True, text=True
    )
    if proc.returncode != 0:
        raise SystemExit(f"slimwheel {' '.join(args)}: {proc.stderr.strip()[-2000:]}")


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--profile", required=True)
    ap.add_argument("--arch", default="native")
    ap.add_argument("--workdir", default=None)
    ap.add_argument("--jobs", default=str(os.cpu_count() or 1))
    ap.add_argument("--json", default=None, help="also write the raw numbers here")
    args = ap.parse_args()
    work = Path(args.workdir or tempfile.mkdtemp(prefix="slimwheel-stack-"))
    py, site = venv_copy(work)
    store = ["--python", str(py), "--store", str(work / "store"), "--jobs", args.jobs]
    sizes = {"original": library_sizes(site)}
    seconds = {}
    for name, flags in VARIANTS:
        t = time.monotonic()
        opts = [f.format(profile=args.profile) for f in flags]
        slimwheel("slim-env", "--arch", args.arch, *opts, *store)
        seconds[name] = round(time.monotonic() - t, 1)
        sizes[name] = library_sizes(site)
        slimwheel("restore", *store[:4])
    if library_sizes(site) != sizes["original"]:
        raise SystemExit("restore did not bring the copy back")
    names = ["original", *(n for n, _f in VARIANTS)]
    lines = [
        "| library | " + " | ".join(names) + " | host code | --cpu removed | functions |",
        "|---" * (len(names) + 4) + "|",
    ]
    total = dict.fromkeys(names, 0)
    code_total = removed_total = fns_total = 0
    rows = []
    for rel, (size, code, _r, _f) in sizes["original"].items():
        _s, _c, removed, fns = sizes["+cpu"][rel]
        for n in names:
            total[n] += sizes[n][rel][0]
        code_total += code
        removed_total += removed
        fns_total += fns
        if size - sizes["+strip"][rel][0] > 1 << 20:
            cells = " | ".join(mb(sizes[n][rel][0]) for n in names)
            share = f"{removed / code:.0%}" if code else "-"
            rows.append(
                (size, f"| {rel} | {cells} | {mb(code)} | {mb(removed)} ({share}) | {fns} |")
            )
    lines += [r for _s, r in sorted(rows, reverse=True)]
    cells = " | ".join(f"{mb(total[n])} ({total[n] / total['original'] - 1:+.1%})" for n in names)
    lines.append(
        f"| **all {len(sizes['original'])} ELF files** | {cells} | {mb(code_total)} | "
        f"{mb(removed_total)} ({removed_total / max(code_total, 1):.0%}) | {fns_total} |"
    )
    print(f"profile {args.profile}; slim-env seconds per variant: {seconds}\n")
    print("\n".join(lines))
    if args.json:
        Path(args.json).write_text(
            json.dumps({"seconds": seconds, "sizes": sizes}, indent=1, sort_keys=True) + "\n"
        )


if __name__ == "__main__":
    main()
