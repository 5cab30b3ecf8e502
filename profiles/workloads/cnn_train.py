"""A few training steps of a small CNN on the GPU (and one spawned worker).

    python cnn_train.py OUT.json

Writes the SHA-256 of the losses and final parameters, so a rerun on a
slimmed stack can be compared bit for bit. Deterministic: fixed seeds,
deterministic cuDNN algorithms.
"""

from __future__ import annotations

import hashlib
import json
import sys

import torch
import torch.multiprocessing as mp
import torch.nn.functional as F
from torch import nn


def digest(t: torch.Tensor) -> str:
    return hashlib.sha256(
        t.detach().contiguous().cpu().view(torch.uint8).numpy().tobytes()
    ).hexdigest()


def worker(rank: int, queue: mp.Queue) -> None:  # type: ignore[type-arg]
    torch.manual_seed(1)
    a = torch.randn(256, 256, device="cuda")
    queue.put(digest(torch.relu(a @ a.T)))


def main() -> None:
    torch.backends.cudnn.deterministic = True
    torch.backends.cudnn.benchmark = False
    torch.manual_seed(0)
    model = nn.Sequential(
        nn.Conv2d(3, 32, 3, padding=1),
        nn.BatchNorm2d(32),
        nn.ReLU(),
        nn.MaxPool2d(2),
        nn.Conv2d(32, 64, 3, padding=1),
        nn.BatchNorm2d(64),
        nn.ReLU(),
        nn.MaxPool2d(2),
        nn.Flatten(),
        nn.Linear(64 * 8 * 8, 10),
    ).cuda()
    opt = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9)
    x = torch.randn(64, 3, 32, 32, device="cuda")
    y = torch.randint(0, 10, (64,), device="cuda")
    losses = []
    for _ in range(8):
        opt.zero_grad()
        loss = F.cross_entropy(model(x), y)
        loss.backward()
        opt.step()
        losses.append(loss.detach())
    ctx = mp.get_context("spawn")
    queue = ctx.Queue()
    p = ctx.Process(target=worker, args=(0, queue))
    p.start()
    child = queue.get(timeout=300)
    p.join()
    doc = {
        "losses": digest(torch.stack(losses)),
        "loss_values": [float(v) for v in losses],
        "params": digest(torch.cat([q.detach().flatten() for q in model.parameters()])),
        "worker": child,
    }
    with open(sys.argv[1], "w") as f:
        json.dump(doc, f, indent=1, sort_keys=True)


if __name__ == "__main__":
    main()
