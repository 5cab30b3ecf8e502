"""Speed and memory of ``slimwheel inspect`` on libtorch_cuda.so, beside cuobjdump and cubloaty.

    .venv/bin/python bench/bench_inspect.py [--lib PATH] [--skip-cuobjdump] [--runs 3]

The per-kernel view (``inspect --top 20``: bytes per kernel and per cubin section
category) runs side by side with cubloaty 0.2 (``cubloaty LIB --top 20``, the
size profiler GPU developers use; installed by this script into
.cache/bench-inspect/, a venv of its own), interleaved, ``--runs`` times each:
the median wall time and the largest peak RSS. Target (issue 17): at least as
fast as cubloaty, and less memory.

Without --lib, libtorch_cuda.so is taken from the torch 2.14.1 wheel (pip
download; the local index serves it). Each command runs in a child process;
wall time and the child's peak RSS are reported. Targets (issue 2): without
--kernels at most 3 s and 300 MB; with --kernels at most 15 s and 600 MB.
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.common import timed
from tests.helpers import extract_member, find_cuobjdump, local_wheel


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--lib", type=Path, help="library to inspect (default: libtorch_cuda.so)")
    ap.add_argument("--skip-cuobjdump", action="store_true")
    ap.add_argument("--arch", default="sm_90")
    ap.add_argument("--skip-cubloaty", action="store_true")
    ap.add_argument("--runs", type=int, default=3)
    args = ap.parse_args()
    lib = args.lib.resolve() if args.lib else None
    if lib is None:
        dest = Path(os.environ.get("SLIMWHEEL_TEST_CACHE", Path(".cache"))) / "libs"
        dest.mkdir(parents=True, exist_ok=True)
        lib = extract_member(local_wheel("torch==2.14.1"), "libtorch_cuda.so", dest)
    lib = lib.resolve()
    size_mb = lib.stat().st_size / 1e6
    slim = [sys.executable, "-m", "slimwheel", "inspect", "-q", "--json", str(lib)]
    # Warm the page cache so every command reads the same way.
    with open(lib, "rb") as f:
        while f.read(1 << 24):
            pass
    rows = []
    t, rss = timed([*slim, "--arch", args.arch])
    rows.append(("slimwheel inspect --arch " + args.arch, t, rss, "3 s / 300 MB"))
    t, rss = timed([*slim, "--kernels"])
    rows.append(("slimwheel inspect --kernels", t, rss, "15 s / 600 MB"))
    t0 = time.monotonic()
    with tempfile.TemporaryDirectory(dir=lib.parent) as tmp:
        shutil.copyfile(lib, Path(tmp) / "copy.so")
    rows.append(("cp (reference)", time.monotonic() - t0, 0.0, ""))
    if not args.skip_cuobjdump:
        with tempfile.TemporaryDirectory(dir=lib.parent) as tmp:
            t, rss = timed([find_cuobjdump(), "-xelf", "all", str(lib)], cwd=tmp)
            written = sum(p.stat().st_size for p in Path(tmp).iterdir())
        rows.append((f"cuobjdump -xelf all (wrote {written / 1e9:.2f} GB)", t, rss, ""))
    if not args.skip_cubloaty:
        cub = _cubloaty()
        pairs: dict[str, list[tuple[float, float]]] = {
            "slimwheel inspect --top 20": [],
            "cubloaty --top 20": [],
        }
        for _ in range(args.runs):
            pairs["slimwheel inspect --top 20"].append(timed([*slim, "--top", "20"]))
            pairs["cubloaty --top 20"].append(timed([str(cub), str(lib), "--top", "20"]))
        for name, got in pairs.items():
            rows.append(
                (f"{name} (median of {args.runs})", statistics.median(t for t, _ in got),
                 max(r for _, r in got), "issue 17: faster and smaller than cubloaty")
            )  # fmt: skip
    print(f"library: {lib} ({size_mb:.0f} MB), {os.cpu_count()} cores")
    print(f"{'command':<48} {'wall s':>8} {'peak RSS MB':>12}  target")
    for name, t, rss, target in rows:
        print(f"{name:<48} {t:8.2f} {rss:12.0f}  {target}")


def _cubloaty() -> Path:
    """cubloaty 0.2 in a venv of its own (its dependencies stay out of slimwheel's)."""
    root = Path(os.environ.get("SLIMWHEEL_TEST_CACHE", Path(".cache"))) / "bench-inspect" / "cub"
    exe = root / "bin" / "cubloaty"
    if not exe.exists():
        subprocess.run([sys.executable, "-m", "venv", str(root)], check=True)
        subprocess.run(
            [str(root / "bin" / "python"), "-m", "pip", "install", "-q", "cubloaty==0.2.0b1"],
            check=True,
        )
    return exe


if __name__ == "__main__":
    main()
