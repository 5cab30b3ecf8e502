"""Host code (--cpu): what a profile lets go, and what recording costs. No GPU needed.

    .venv/bin/python bench/bench_hostcode.py [--batches 20] [--runs 3]

Workloads, each in a fresh virtual environment made under .cache/bench-host/:

* MobileNetV2 inference on CPU torch 2.13.0 (profiles/workloads/mobilenet_v2_infer.py,
  the research tool's best case);
* a numpy matmul (300x300) on numpy's OpenBLAS.

For each: the recorder's overhead (the workload's own time per batch and the
whole run's wall time, plain / device recorder only / device and host), then
the environment's ELF bytes and host code (executable sections) before and
after ``slim-env --cpu`` and ``--cpu --strip``, per library and in total,
with functions removed. Every slimmed environment reruns the workload and
must print the same digest; it is restored after.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from slimwheel.elf import is_elf, open_elf
from slimwheel.hostcode import candidate_sections
from slimwheel.note import read_note
from tests.helpers import CACHE

REPO = Path(__file__).resolve().parent.parent
MOBILENET = REPO / "profiles" / "workloads" / "mobilenet_v2_infer.py"
MATMUL = """
import hashlib, sys, time
import numpy as np
rng = np.random.default_rng(0)
a = rng.random((300, 300))
n = int(sys.argv[1]) if len(sys.argv) > 1 else 3
t = time.perf_counter()
for _ in range(n):
    b = a @ a
ms = (time.perf_counter() - t) / n * 1000
print(hashlib.sha256(b.tobytes()).hexdigest(), f"{ms:.3f} ms/batch")
"""


def venv(name: str, requirements: list[str]) -> Path:
    root = CACHE / "bench-host" / name
    python = root / "bin" / "python"
    if not python.exists():
        subprocess.run([sys.executable, "-m", "venv", str(root)], check=True)
        subprocess.run([str(python), "-m", "pip", "install", "-q", *requirements], check=True)
    return python


def site_of(python: Path) -> Path:
    out = subprocess.run(
        [str(python), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
        capture_output=True, text=True, check=True,
    )  # fmt: skip
    return Path(out.stdout.strip())


def slimwheel(*args: str, env: dict[str, str]) -> str:
    proc = subprocess.run(
        [sys.executable, "-m", "slimwheel", *args], capture_output=True, text=True, env=env
    )
    if proc.returncode != 0:
        raise SystemExit(proc.stderr[-2000:])
    return proc.stdout


def run_workload(cmd: list[str]) -> tuple[str, float, float]:
    """(digest, ms per batch, wall seconds)."""
    t = time.monotonic()
    out = subprocess.run(cmd, capture_output=True, text=True, check=True).stdout.split()
    return out[0], float(out[1]), time.monotonic() - t


def overhead(cmd: list[str], runs: int, env: dict[str, str], tmp: Path) -> list[str]:
    """The workload's own time per batch and its process's wall time: plain, with the
    device recorder (CUPTI injection), and with the host recorder too. The recorders
    are injected as ``slimwheel profile`` does; what profile does after the command
    (hashing the libraries into the profile) is not counted."""
    from slimwheel.hostuse import build_host_recorder
    from slimwheel.profile import build_recorder
    from slimwheel.store import Store

    store = Store(env["SLIMWHEEL_STORE"])
    device = build_recorder(store)
    host = build_host_recorder(store.root / "recorder" / "host")
    records = tmp / "records"
    envs = {
        "plain": dict(os.environ),
        "device recorder": dict(os.environ, CUDA_INJECTION64_PATH=str(device)),
        "device + host recorder": host.environment(
            dict(os.environ, CUDA_INJECTION64_PATH=str(device)), str(records)
        ),
    }
    batches: dict[str, list[float]] = {label: [] for label in envs}
    walls: dict[str, list[float]] = {label: [] for label in envs}
    for _ in range(runs):  # interleaved, so drift hits every mode alike
        for label, run_env in envs.items():
            records.mkdir(exist_ok=True)
            t = time.monotonic()
            proc = subprocess.run(cmd, capture_output=True, text=True, env=run_env, check=True)
            walls[label].append(time.monotonic() - t)
            batches[label].append(float(proc.stdout.split()[1]))
            for f in records.iterdir():
                f.unlink()
    rows = []
    base_b, base_w = statistics.median(batches["plain"]), statistics.median(walls["plain"])
    for label in envs:
        batch, wall = statistics.median(batches[label]), statistics.median(walls[label])
        rows.append(
            f"| {label} | {batch:.2f} ms ({(batch / base_b - 1) * 100:+.1f}%) "
            f"| {wall:.2f} s ({(wall / base_w - 1) * 100:+.1f}%) |"
        )
    return rows


def mb(n: int) -> str:
    return f"{n / 1e6:.1f} MB"


def library_sizes(site: Path) -> dict[str, tuple[int, int, int, int]]:
    """rel path -> (file bytes, host code bytes, removed host bytes, removed functions)."""
    out = {}
    for p in sorted(site.rglob("*.so*")):
        if p.is_symlink() or not p.is_file() or not is_elf(p):
            continue
        with open_elf(p) as elf:
            code = sum(s.size for s in candidate_sections(elf))
            note = read_note(elf)
        removed = sum(b - a for a, b in note.ranges) if note else 0
        fns = sum(1 for u in note.units if u.function) if note else 0
        out[str(p.relative_to(site))] = (p.stat().st_size, code, removed, fns)
    return out


def slim_report(
    name: str, python: Path, cmd: list[str], profile: Path, env: dict[str, str]
) -> list[str]:
    site = site_of(python)
    expected = run_workload(cmd)[0]
    original = library_sizes(site)
    lines = [
        f"\n### {name}\n",
        "| library | file | host code | --cpu: file | host code removed | functions "
        "| --cpu --strip: file |",
        "|---|---|---|---|---|---|---|",
    ]
    results: dict[str, dict[str, tuple[int, int, int, int]]] = {}
    for label, flags in (("cpu", []), ("cpu+strip", ["--strip"])):
        slimwheel(
            "slim-env", "--python", str(python), "--arch", "sm_90", "--profile", str(profile),
            "--cpu", *flags, env=env,
        )  # fmt: skip
        got = run_workload(cmd)[0]
        if got != expected:
            raise SystemExit(f"{name}: --cpu {flags} changed the result ({got} != {expected})")
        results[label] = library_sizes(site)
        slimwheel("restore", "--python", str(python), env=env)
    totals = [0, 0, 0, 0, 0, 0]
    rows = []
    for rel, (size, code, _r, _f) in original.items():
        c_size, _c, c_removed, c_fns = results["cpu"][rel]
        s_size = results["cpu+strip"][rel][0]
        for i, v in enumerate((size, code, c_size, c_removed, c_fns, s_size)):
            totals[i] += v
        if c_removed or size - s_size > 1 << 20:
            share = c_removed / max(code, 1)
            rows.append(
                (
                    size,
                    f"| {rel} | {mb(size)} | {mb(code)} | {mb(c_size)} | {mb(c_removed)} "
                    f"({share:.0%}) | {c_fns} | {mb(s_size)} |",
                )
            )
    lines += [r for _s, r in sorted(rows, reverse=True)]
    size, code, c_size, c_removed, c_fns, s_size = totals
    lines.append(
        f"| **all {len(original)} ELF files** | {mb(size)} | {mb(code)} | "
        f"{mb(c_size)} ({c_size / size - 1:+.1%}) | {mb(c_removed)} "
        f"({c_removed / max(code, 1):.0%}) | {c_fns} | {mb(s_size)} ({s_size / size - 1:+.1%}) |"
    )
    return lines


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--batches", type=int, default=20)
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--overhead-only", action="store_true")
    args = ap.parse_args()
    tmp = CACHE / "bench-host" / "tmp"
    tmp.mkdir(parents=True, exist_ok=True)
    env = dict(os.environ, SLIMWHEEL_STORE=str(CACHE / "bench-host" / "store"))
    torch_py = venv("torch-cpu", ["torch==2.13.0", "numpy"])
    numpy_py = venv("numpy", ["numpy==2.4.6"])
    matmul = tmp / "matmul.py"
    matmul.write_text(MATMUL)
    workloads = {
        "MobileNetV2 inference, CPU torch 2.13.0": (
            torch_py, [str(torch_py), str(MOBILENET), "--batches", str(args.batches)]
        ),
        "numpy matmul 300x300 (OpenBLAS)": (numpy_py, [str(numpy_py), str(matmul), "200"]),
    }  # fmt: skip
    report = ["## Recorder overhead (median of runs)\n"]
    sizes: list[str] = []
    for name, (python, cmd) in workloads.items():
        report += [f"\n{name}\n", "| run | time per batch | whole run |", "|---|---|---|"]
        report += overhead(cmd, args.runs, env, tmp)
        if args.overhead_only:
            continue
        profile = tmp / f"{python.parent.parent.name}.json"
        slimwheel("profile", "-o", str(profile), "--", *cmd, env=env)
        doc = json.loads(profile.read_text())
        sizes.append(f"\n{name}: profile host_exact={doc['host_exact']}")
        sizes += slim_report(name, python, cmd, profile, env)
    print("\n".join([*report, "\n## Sizes (slim-env --cpu; outputs identical)", *sizes]))


if __name__ == "__main__":
    main()
