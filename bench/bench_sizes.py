"""Installed library bytes before and after ``slimwheel build``, with and without --strip.

    .venv/bin/python bench/bench_sizes.py [--arch sm_90]

Wheels: TensorFlow 2.16.2 and jax-cuda12-pjrt (libraries with PT_PHDR), and
the torch 2.14.1 stack (torch + its nvidia-* wheels), fetched with pip and
cached under .cache/. For each set: the ELF libraries' bytes in the input
wheels, after an arch slim, and after an arch slim with --strip.
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import tempfile
import zipfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.bench_build import stack_wheels
from tests.helpers import CACHE, local_wheel


def elf_bytes(wheel: Path) -> int:
    total = 0
    with zipfile.ZipFile(wheel) as zf:
        for info in zf.infolist():
            if info.is_dir() or info.file_size < 64:
                continue
            with zf.open(info) as f:
                if f.read(4) == b"\x7fELF":
                    total += info.file_size
    return total


def build(wheels: list[Path], out: Path, store: Path, arch: str, *flags: str) -> list[Path]:
    cmd = [sys.executable, "-m", "slimwheel", "build", *map(str, wheels), "--arch", arch]
    subprocess.run([*cmd, "-o", str(out), "--store", str(store), "-q", *flags], check=True)
    return sorted(out.glob("*.whl"))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--arch", default="sm_90")
    args = ap.parse_args()
    sets = {
        "TensorFlow 2.16.2": [local_wheel("tensorflow==2.16.2")],
        "jax-cuda12-pjrt 0.12.0.1": [local_wheel("jax-cuda12-pjrt==0.12.0.1")],
        "torch 2.14.1 stack": stack_wheels(),
    }
    print(f"ELF library bytes in the wheels, --arch {args.arch} (MB)")
    print(f"{'wheels':<28} {'original':>10} {'arch':>10} {'arch+strip':>11}")
    with tempfile.TemporaryDirectory(dir=CACHE) as tmp:
        for name, wheels in sets.items():
            before = sum(elf_bytes(w) for w in wheels)
            row = [before]
            for i, flags in enumerate(((), ("--strip",))):
                out = Path(tmp) / f"{name}-{i}".replace(" ", "_")
                row.append(
                    sum(
                        elf_bytes(w) for w in build(wheels, out, Path(tmp) / "s", args.arch, *flags)
                    )
                )
            pct = [f"{r / 1e6:,.1f} ({100 * (r - before) / before:+.1f}%)" for r in row[1:]]
            print(f"{name:<28} {before / 1e6:>10,.1f} {pct[0]:>18} {pct[1]:>18}")


if __name__ == "__main__":
    main()
