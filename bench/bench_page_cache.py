"""What the page cache does to RSS: the same libraries, cached three ways. No GPU needed.

    python bench/bench_page_cache.py [--workdir DIR] [--arch sm_90] [--json OUT]

Run it with the Python whose torch + nvidia-* stack it measures (slimwheel's
own dependencies and pytest installed beside it, as for bench/gpu_report.py).
It copies torch/ and nvidia/ into a venv under ``--workdir`` (never touching
the installed ones) and measures ``import torch`` in a fresh process, peak RSS
and the RSS of libtorch_cuda.so's text mapping:

- the copy as just written (shutil's copy: sendfile);
- the same files evicted from the page cache (``POSIX_FADV_DONTNEED``): a cold
  start, then the next run (warm, cached by that run's own faults);
- after ``slim-env --arch ARCH`` rewrote the libraries, then evicted, then warm.

The kernel caches a file written in large write() calls (slimwheel's writer
writes 8 MB at a time) in large folios and maps many pages of one per fault,
so that state reads as more RSS for the same pages touched; bench/gpu_report.py
evicts before every run for that.
"""

from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

# Peak RSS, and the RSS of the executable mapping of libtorch_cuda.so, after import torch.
PROBE = """
import resource, torch
text, cur = 0, None
for line in open("/proc/self/smaps"):
    f = line.split()
    if "-" in f[0] and not f[0].endswith(":"):
        cur = f[5] if len(f) > 5 and f[1].startswith("r-x") else None
    elif f[0] == "Rss:" and cur and cur.endswith("/libtorch_cuda.so"):
        text += int(f[1]) * 1024
print(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024, text)
"""


def probe(py: Path) -> dict[str, int]:
    out = subprocess.run([str(py), "-c", PROBE], capture_output=True, text=True, check=True)
    rss, text = (int(x) for x in out.stdout.split())
    return {"rss_bytes": rss, "text_bytes": text}


def main() -> None:
    from bench.gpu_report import evict, slimwheel
    from tests.gpu.test_slim_env_gpu import venv_copy

    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--workdir", default="/tmp/slimwheel-page-cache")
    ap.add_argument("--arch", default="sm_90")
    ap.add_argument("--json")
    args = ap.parse_args()
    work = Path(args.workdir)
    shutil.rmtree(work, ignore_errors=True)
    py, _site = venv_copy(work)
    rows: list[dict[str, Any]] = []

    def measure(state: str) -> None:
        rows.append({"state": state, **probe(py)})
        r = rows[-1]
        print(f"{state:<40} peak RSS {r['rss_bytes'] / 1e6:8.1f} MB   "
              f"libtorch_cuda.so text {r['text_bytes'] / 1e6:6.1f} MB", flush=True)  # fmt: skip

    measure("copy, just written")
    evict(work)
    measure("copy, evicted (cold)")
    measure("copy, next run (warm)")
    slimwheel("slim-env", "--arch", args.arch, "--python", str(py), "--store",
              str(work / "store"), "--no-backup")  # fmt: skip
    measure(f"slim-env --arch {args.arch}, just written")
    evict(work)
    measure(f"slim-env --arch {args.arch}, evicted (cold)")
    measure(f"slim-env --arch {args.arch}, next run (warm)")
    shutil.rmtree(work, ignore_errors=True)
    if args.json:
        Path(args.json).write_text(json.dumps({"arch": args.arch, "rows": rows}, indent=1) + "\n")


if __name__ == "__main__":
    main()
