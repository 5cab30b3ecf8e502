"""Overhead of the usage recorder on a GPU, side by side in one run.

    python bench/bench_recorder.py

Two torch workloads, each timed in a fresh process without the recorder,
with the device recorder injected (CUDA_INJECTION64_PATH), and with host
code recording too (LD_AUDIT + LD_PRELOAD, as ``slimwheel profile`` runs by
default), interleaved, best of 3: a launch-bound loop of 100,000 tiny kernel
launches, and 30 training steps of a small CNN. Targets: at most 5% slower
on the training step (issue 5, device), and at most 5% with host recording
(issue 15). Also prints the whole process's wall time of the same runs: host
recording reads every library again from disk (its page cache is dropped), which
the workloads' own timed loops do not see. Needs an NVIDIA GPU and torch.
"""

from __future__ import annotations

import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from slimwheel.hostuse import HostRecorder, build_host_recorder
from slimwheel.profile import build_recorder
from slimwheel.store import Store

LAUNCHES = """
import time, torch
x = torch.zeros(1, device="cuda")
for _ in range(1000): x.add_(1)
torch.cuda.synchronize(); t = time.perf_counter()
for _ in range(100_000): x.add_(1)
torch.cuda.synchronize(); print(time.perf_counter() - t)
"""

TRAIN = """
import time, torch, torch.nn as nn, torch.nn.functional as F
torch.manual_seed(0)
m = nn.Sequential(nn.Conv2d(3, 64, 3, padding=1), nn.BatchNorm2d(64), nn.ReLU(),
                  nn.Conv2d(64, 128, 3, padding=1), nn.BatchNorm2d(128), nn.ReLU(),
                  nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(128, 10)).cuda()
opt = torch.optim.SGD(m.parameters(), lr=0.01)
x = torch.randn(128, 3, 64, 64, device="cuda"); y = torch.randint(0, 10, (128,), device="cuda")
def step():
    opt.zero_grad(); F.cross_entropy(m(x), y).backward(); opt.step()
for _ in range(5): step()
torch.cuda.synchronize(); t = time.perf_counter()
for _ in range(30): step()
torch.cuda.synchronize(); print((time.perf_counter() - t) / 30)
"""


def run(code: str, recorder: Path | None, host: HostRecorder | None = None) -> tuple[float, float]:
    """(the workload's own timed loop, the whole process's wall time) in one fresh process."""
    env = dict(os.environ)
    with tempfile.TemporaryDirectory() as tmp:
        if recorder is not None:
            env.update(CUDA_INJECTION64_PATH=str(recorder), SLIMWHEEL_PROFILE_DIR=tmp)
        if host is not None:
            env = host.environment(env, tmp)
        start = time.perf_counter()
        out = subprocess.run(
            [sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True
        )
        wall = time.perf_counter() - start
    return float(out.stdout.strip().splitlines()[-1]), wall


def main() -> None:
    store = Store()
    recorder = build_recorder(store)
    host = build_host_recorder(store.root / "recorder" / "host")
    print(
        f"{'workload':<32} {'without':>10} {'device':>10} {'overhead':>9}"
        f" {'+host':>10} {'overhead':>9}"
    )
    walls: list[str] = []
    for name, code, unit in (
        ("100k tiny launches (s)", LAUNCHES, 1.0),
        ("CNN training step (ms)", TRAIN, 1000.0),
    ):
        times: dict[str, list[tuple[float, float]]] = {"base": [], "device": [], "host": []}
        for _ in range(3):  # interleaved: drift hits every column alike
            times["base"].append(run(code, None))
            times["device"].append(run(code, recorder))
            times["host"].append(run(code, recorder, host))
        for col, label, scale in ((0, name, unit), (1, name.split(" (")[0] + ", process (s)", 1.0)):
            base, dev, both = (min(t[col] for t in times[k]) for k in ("base", "device", "host"))
            line = (
                f"{label[:32]:<32} {base * scale:10.3f} {dev * scale:10.3f}"
                f" {100 * (dev / base - 1):8.1f}% {both * scale:10.3f}"
                f" {100 * (both / base - 1):8.1f}%"
            )
            if col:
                walls.append(line)
            else:
                print(line)
    print("\nthe same runs, whole process wall time (import, CUDA start, recording, exit):")
    print("\n".join(walls))


if __name__ == "__main__":
    main()
