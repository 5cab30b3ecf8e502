"""Cold and warm ``slimwheel build`` and ``slim-env`` of the torch 2.14.1 stack, and sizes.

    .venv/bin/python bench/bench_build.py [--arch sm_90] [--drop-lto] [--no-env]

The stack is torch 2.14.1 and its nvidia-* dependency wheels (pip download
--deps from the configured index; cached under .cache/). A cold build uses an
empty store; a warm build repeats it with every library in the store (and a
byte-identical copy of every input wheel). Targets: cold at most 4 minutes
and 1 GB peak RSS per process; warm at most 20% of cold, with outputs
byte-identical to cold; the stack's installed library bytes at least 37%
smaller, its wheel bytes at least 45% smaller.

Then (unless --no-env) ``slim-env`` on two virtual environments with the
same wheels installed: the first with an empty store (cold), the second with
the store the first filled (warm).
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import tempfile
import zipfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.common import timed
from tests.helpers import CACHE


def stack_wheels() -> list[Path]:
    dest = CACHE / "wheels" / "stack-deps"
    dest.mkdir(parents=True, exist_ok=True)
    if not any(dest.glob("torch-*.whl")):
        subprocess.run(
            [
                sys.executable,
                "-m",
                "pip",
                "download",
                "-q",
                "--only-binary=:all:",
                "-d",
                str(dest),
                "torch==2.14.1",
            ],
            check=True,
        )
    return sorted(p for p in dest.glob("*.whl") if p.name.startswith(("torch-", "nvidia_")))


def lib_bytes(wheel: Path) -> int:
    with zipfile.ZipFile(wheel) as zf:
        return sum(i.file_size for i in zf.infolist() if ".so" in Path(i.filename).name)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--arch", default="sm_90")
    ap.add_argument("--drop-lto", action="store_true", help="passed to slimwheel build")
    ap.add_argument("--no-env", action="store_true", help="skip the slim-env part")
    args = ap.parse_args()
    wheels = stack_wheels()
    with tempfile.TemporaryDirectory(dir=CACHE) as tmp:
        store = Path(tmp) / "store"
        base = [
            sys.executable,
            "-m",
            "slimwheel",
            "build",
            *map(str, wheels),
            "--arch",
            args.arch,
            "--store",
            str(store),
            "-q",
            *(["--drop-lto"] if args.drop_lto else []),
        ]
        cold_t, cold_rss = timed([*base, "-o", str(Path(tmp) / "cold")])
        copies = Path(tmp) / "copies"  # byte-identical inputs at other paths
        copies.mkdir()
        for w in wheels:
            shutil.copyfile(w, copies / w.name)
        warm_cmd = [*base[:4], *(str(copies / w.name) for w in wheels), *base[4 + len(wheels) :]]
        warm_t, warm_rss = timed([*warm_cmd, "-o", str(Path(tmp) / "warm")])
        cold = sorted((Path(tmp) / "cold").iterdir())
        warm = sorted((Path(tmp) / "warm").iterdir())
        identical = [a.read_bytes() == b.read_bytes() for a, b in zip(cold, warm, strict=True)]
        print(
            f"{len(wheels)} wheels (torch + nvidia-*), --arch {args.arch}"
            f"{' --drop-lto' if args.drop_lto else ''}, {os.cpu_count()} cores"
        )
        print(f"cold build: {cold_t:6.1f} s, peak RSS {cold_rss:.0f} MB (targets 240 s, 1024 MB)")
        print(
            f"warm build: {warm_t:6.1f} s, peak RSS {warm_rss:.0f} MB; "
            f"{100 * warm_t / cold_t:.0f}% of cold (target at most 20%); "
            f"outputs byte-identical to cold: {all(identical)}"
        )
        print(f"\n{'wheel':<62} {'wheel MB':>17} {'libraries MB':>17}")
        tw = tw2 = tl = tl2 = 0
        by_name = {w.name.split("-")[0]: w for w in wheels}
        for out in cold:
            src = by_name[out.name.split("-")[0]]
            w1, w2 = src.stat().st_size, out.stat().st_size
            l1, l2 = lib_bytes(src), lib_bytes(out)
            tw, tw2, tl, tl2 = tw + w1, tw2 + w2, tl + l1, tl2 + l2
            sizes = f"{w1 / 1e6:8.1f}->{w2 / 1e6:7.1f} {l1 / 1e6:8.1f}->{l2 / 1e6:7.1f}"
            print(f"{out.name[:62]:<62} {sizes}")
        print(f"{'total':<62} {tw / 1e6:8.1f}->{tw2 / 1e6:7.1f} {tl / 1e6:8.1f}->{tl2 / 1e6:7.1f}")
        print(
            f"wheel bytes -{100 * (tw - tw2) / tw:.1f}% (target 45%), "
            f"installed library bytes -{100 * (tl - tl2) / tl:.1f}% (target 37%)"
        )
        shutil.rmtree(copies)
        shutil.rmtree(Path(tmp) / "warm")
        if not args.no_env:
            bench_env(wheels, Path(tmp), args)


def bench_env(wheels: list[Path], tmp: Path, args: argparse.Namespace) -> None:
    """slim-env cold (empty store) and warm (the store the first run filled)."""
    store = tmp / "env-store"
    flags = ["--arch", args.arch, "--store", str(store), *(["--drop-lto"] if args.drop_lto else [])]
    times = []
    for name in ("env-cold", "env-warm"):
        venv = tmp / name
        subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(venv)], check=True)
        py = venv / "bin" / "python"
        pip = [sys.executable, "-m", "pip", "--python", str(py), "install", "-q"]
        subprocess.run([*pip, "--no-index", "--no-deps", *map(str, wheels)], check=True)
        t, rss = timed([sys.executable, "-m", "slimwheel", "slim-env", "--python", str(py), *flags])
        times.append(t)
        print(f"slim-env {name[4:]}: {t:6.1f} s, peak RSS {rss:.0f} MB")
        shutil.rmtree(venv)
    print(f"slim-env warm: {100 * times[1] / times[0]:.0f}% of cold")


if __name__ == "__main__":
    main()
