"""What more holes in host code cost at load time: cold dlopen of each library,
slimmed under each ``--min-hole``, beside the original. No GPU needed.

    .venv/bin/python bench/bench_host_load.py PROFILE.json LIB... [--min-hole default,64K]
        [--arch sm_90] [--rounds 5] [--workdir DIR] [--json OUT]

For each LIB the profile holds a host record of (matched by SHA-256, as
``--cpu`` matches), the bench writes the original (a copy) and one
``slim --arch ARCH --profile PROFILE --cpu [--min-hole SIZE]`` output per rule
(``default``: no ``--min-hole``, today's defaults; ``64K`` gives the rules
``--cpu`` had before host code got its own, as no library of the H200 stacks
reached 256 holes under them). Each output sits in its own folder, beside
links to the library's siblings, so that ``$ORIGIN`` finds its dependencies.

Then, ``--rounds`` times, for each library, each variant in an order rotated
per round: the file is evicted from the page cache (``POSIX_FADV_DONTNEED``,
its siblings stay cached by a warm-up load), and a fresh Python process
dlopens it (``RTLD_NOW``) and reports the time of the dlopen, its major and
minor page faults, the mappings of the file (``/proc/self/maps``) and their
RSS, and leaves with ``_exit``: a library loaded alone may run exit-time
destructors that a workload's process never ran. (A library alone may also
bind calls to its own copy of a function the workload's process ran in
another library: libtorch_cpu.so under the H200's MobileNetV2 profile faults
in a static initializer then, and the bench stops, naming it; measure it
with a profile of a process that loads it alone.) Every hole costs the
loader a PT_LOAD, an mmap and mappings, and a process may have at most
``vm.max_map_count`` mappings (recorded). Medians are printed per library
and rule, beside the original's; ``--json`` writes every run. The bench's
folder ``bench_host_load.run`` in ``--workdir`` is removed before and after
(a killed run's too); nothing else there is touched.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from bench.common import run_main, sizes_arg  # noqa: E402
from bench.gpu_report import evict  # noqa: E402
from slimwheel.arch import Target, parse_targets  # noqa: E402
from slimwheel.cli.options import parse_size  # noqa: E402
from slimwheel.elf import open_elf  # noqa: E402
from slimwheel.guard import Guard, build_guard, guarded_environment  # noqa: E402
from slimwheel.policy import SlimPolicy  # noqa: E402
from slimwheel.profile import Profile, load_profile  # noqa: E402
from slimwheel.slim import slim_library  # noqa: E402
from slimwheel.store import file_sha256  # noqa: E402
from slimwheel.write import atomic_output  # noqa: E402

#: Siblings linked beside each output (a library folder has a few dozen).
MAX_SIBLINGS = 10_000
MAX_ROUNDS = 1_000
#: The bench's own folder inside ``--workdir``.
RUN_DIR = "bench_host_load.run"

#: Run in a fresh process: dlopen argv[1] and report what it cost.
CHILD = r"""
import ctypes, json, os, resource, sys, time
path = os.path.realpath(sys.argv[1])
r0 = resource.getrusage(resource.RUSAGE_SELF)
t = time.perf_counter()
ctypes.CDLL(path, mode=os.RTLD_NOW | os.RTLD_LOCAL)
dt = time.perf_counter() - t
r1 = resource.getrusage(resource.RUSAGE_SELF)
mine = False
maps = rss = total = 0
with open("/proc/self/smaps") as f:
    for line in f:
        head = line.split(None, 5)
        if "-" in head[0] and not head[0].endswith(":"):
            total += 1
            mine = len(head) > 5 and head[5].rstrip("\n") == path
            maps += mine
        elif head[0] == "Rss:" and mine:
            rss += int(head[1]) * 1024
print(json.dumps({"dlopen_s": dt, "major_faults": r1.ru_majflt - r0.ru_majflt,
                  "minor_faults": r1.ru_minflt - r0.ru_minflt, "mappings": maps,
                  "rss_bytes": rss, "process_mappings": total}), flush=True)
os._exit(0)
"""

MEASURES = ("dlopen_s", "major_faults", "minor_faults", "mappings", "rss_bytes")


def rules_arg(text: str) -> list[str]:
    """``default,64K``: ``default`` (no --min-hole), then sizes in whole KiB, ascending."""
    parts = text.split(",")
    sizes = [x for x in parts if x != "default"]
    named = [f"{n >> 10}K" for n in sizes_arg(",".join(sizes))] if sizes else []
    return (["default"] if "default" in parts else []) + named


def rounds_arg(text: str) -> int:
    if not text.isdigit() or not 1 <= int(text) <= MAX_ROUNDS:
        raise argparse.ArgumentTypeError(f"{text!r}: a number of rounds, 1 to {MAX_ROUNDS}")
    return int(text)


def link_siblings(src: Path, folder: Path) -> None:
    """``folder`` holds links to every other entry of ``src``'s folder."""
    folder.mkdir(parents=True)
    for n, entry in enumerate(sorted(src.parent.iterdir())):
        if n >= MAX_SIBLINGS:
            raise SystemExit(f"bench_host_load: {src.parent}: more than {MAX_SIBLINGS} entries")
        if entry.name != src.name:
            (folder / entry.name).symlink_to(entry.resolve())


def load_once(path: Path, guard: Guard) -> dict[str, Any]:
    """One cold load in a fresh process, under slimwheel's guard (it names removed code run)."""
    got = subprocess.run(
        [sys.executable, "-S", "-c", CHILD, str(path)],
        capture_output=True,
        text=True,
        env=guarded_environment(guard, dict(os.environ)),
    )
    if got.returncode != 0:
        said = [ln for ln in got.stderr.splitlines() if ln.startswith("slimwheel: ")]
        last = (said or got.stderr.strip().splitlines() or [f"exit status {got.returncode}"])[-1]
        raise SystemExit(f"bench_host_load: {path}: dlopen failed: {last}")
    row: dict[str, Any] = json.loads(got.stdout)
    if row["mappings"] < 1:  # a measure of nothing: the path did not match /proc/self/maps
        raise SystemExit(f"bench_host_load: {path}: loaded, but no mapping of it was found")
    return row


def load_segments(path: Path) -> int:
    with open_elf(path) as elf:
        return len(elf.loads)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("profile", type=Path)
    ap.add_argument("libs", type=Path, nargs="+")
    ap.add_argument("--min-hole", type=rules_arg, default="default,64K")
    ap.add_argument("--arch", default="sm_90")
    ap.add_argument("--rounds", type=rounds_arg, default=5)
    ap.add_argument("--workdir", type=Path, default=REPO / ".cache" / "bench-host-load")
    ap.add_argument("--json", type=Path, help="write every run here")
    args = ap.parse_args(argv)
    if args.json and not args.json.parent.is_dir():
        ap.error(f"--json {args.json}: no folder {args.json.parent}")
    rules: list[str] = args.min_hole
    targets = parse_targets([args.arch])
    profile = load_profile(args.profile)
    for lib in args.libs:
        if not lib.is_file():
            why = "not a regular file" if lib.exists() else "no such file"
            raise SystemExit(f"bench_host_load: {lib}: {why}")
    work: Path = args.workdir.resolve() / RUN_DIR  # only this is ever removed
    shutil.rmtree(work, ignore_errors=True)  # what a killed run left
    try:
        return measure_all(args, profile, targets, rules, work)
    finally:
        shutil.rmtree(work, ignore_errors=True)


def measure_all(
    args: argparse.Namespace,
    profile: Profile,
    targets: tuple[Target, ...],
    rules: list[str],
    work: Path,
) -> int:
    variants = ["original", *rules]
    guard = build_guard(work / "guard", cuda=False)
    files: dict[str, dict[str, Path]] = {}
    info: dict[str, dict[str, Any]] = {}
    for n, lib in enumerate(args.libs):
        sha = file_sha256(lib)
        if profile.host_for(sha) is None:
            print(f"{lib}: no host record of these bytes in the profile: skipped", flush=True)
            continue
        key = f"{lib.name} {sha[:12]}"
        files[key], info[key] = {}, {"file_bytes": {}, "load_segments": {}}
        for v in variants:
            out = work / str(n) / v
            link_siblings(lib, out)
            dest = out / lib.name
            if v == "original":
                shutil.copyfile(lib, dest)
            else:
                mh = None if v == "default" else parse_size(v)
                policy = SlimPolicy(targets, profile=profile, cpu=True, min_hole=mh)
                slim_library(lib, dest, policy.for_library(lib.name, sha))
            files[key][v] = dest
            info[key]["file_bytes"][v] = dest.stat().st_size
            info[key]["load_segments"][v] = load_segments(dest)
            load_once(dest, guard)  # warm the siblings it needs
        print(f"{key}: PT_LOAD {info[key]['load_segments']}", flush=True)
    if not files:
        raise SystemExit(f"bench_host_load: {args.profile}: no host record of these libraries")
    runs: list[dict[str, Any]] = []
    for r in range(args.rounds):
        for key, per in files.items():
            order = variants[r % len(variants) :] + variants[: r % len(variants)]
            for v in order:
                evict(per[v].parent)
                row = load_once(per[v], guard)
                runs.append({"library": key, "variant": v, "round": r + 1, **row})
    doc = {
        "arch": args.arch,
        "profile": profile.digest(),
        "max_map_count": int(Path("/proc/sys/vm/max_map_count").read_text()),
        "libraries": info,
        "runs": runs,
    }
    report(doc, variants)
    if args.json:
        with atomic_output(args.json) as f:
            f.write((json.dumps(doc, indent=1, sort_keys=True) + "\n").encode())
    return 0


def medians(doc: dict[str, Any], key: str, variant: str) -> dict[str, float]:
    rows = [r for r in doc["runs"] if r["library"] == key and r["variant"] == variant]
    return {m: statistics.median(r[m] for r in rows) for m in MEASURES}


def report(doc: dict[str, Any], variants: list[str]) -> None:
    print(f"\ncold dlopen, median of {max(r['round'] for r in doc['runs'])} runs each")
    print(
        f"{'library':42s} {'rule':>8s} {'PT_LOAD':>7s} {'maps':>6s} {'major':>6s}"
        f" {'minor':>7s} {'dlopen s':>9s} {'RSS MB':>7s}"
    )
    for key, info in doc["libraries"].items():
        for v in variants:
            m = medians(doc, key, v)
            print(
                f"{key[:42]:42s} {v:>8s} {info['load_segments'][v]:7d} {m['mappings']:6.0f}"
                f" {m['major_faults']:6.0f} {m['minor_faults']:7.0f} {m['dlopen_s']:9.3f}"
                f" {m['rss_bytes'] / 1e6:7.1f}"
            )


if __name__ == "__main__":
    run_main("bench_host_load", main)
