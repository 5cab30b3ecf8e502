"""MobileNetV2 inference (the research tool's best case), weights from a fixed seed.

The architecture of Sandler et al. (2018), written out here so no model hub
or torchvision is needed. Prints one line: the SHA-256 of the logits of
``--batches`` batches of 8 images of 224x224, and the time per batch.
Usage: python mobilenet_v2_infer.py [--device cpu|cuda] [--batches N]
"""

from __future__ import annotations

import argparse
import hashlib
import time

import torch
from torch import nn


def conv_bn(inp: int, out: int, stride: int, groups: int = 1, kernel: int = 3) -> nn.Sequential:
    return nn.Sequential(
        nn.Conv2d(inp, out, kernel, stride, kernel // 2, groups=groups, bias=False),
        nn.BatchNorm2d(out),
        nn.ReLU6(inplace=True),
    )


class InvertedResidual(nn.Module):
    def __init__(self, inp: int, out: int, stride: int, expand: int) -> None:
        super().__init__()
        hidden = inp * expand
        layers: list[nn.Module] = []
        if expand != 1:
            layers.append(conv_bn(inp, hidden, 1, kernel=1))
        layers += [
            conv_bn(hidden, hidden, stride, groups=hidden),
            nn.Conv2d(hidden, out, 1, 1, 0, bias=False),
            nn.BatchNorm2d(out),
        ]
        self.body = nn.Sequential(*layers)
        self.residual = stride == 1 and inp == out

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.body(x)
        return x + y if self.residual else y


class MobileNetV2(nn.Module):
    SETTINGS = ((1, 16, 1, 1), (6, 24, 2, 2), (6, 32, 3, 2), (6, 64, 4, 2),
                (6, 96, 3, 1), (6, 160, 3, 2), (6, 320, 1, 1))  # fmt: skip

    def __init__(self, classes: int = 1000) -> None:
        super().__init__()
        layers: list[nn.Module] = [conv_bn(3, 32, 2)]
        inp = 32
        for t, c, n, s in self.SETTINGS:
            for i in range(n):
                layers.append(InvertedResidual(inp, c, s if i == 0 else 1, t))
                inp = c
        layers.append(conv_bn(inp, 1280, 1, kernel=1))
        self.features = nn.Sequential(*layers)
        self.classifier = nn.Sequential(nn.Dropout(0.2), nn.Linear(1280, classes))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.features(x)
        return self.classifier(x.mean((2, 3)))


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--batches", type=int, default=3)
    args = ap.parse_args()
    torch.manual_seed(0)
    torch.set_num_threads(2)
    model = MobileNetV2().eval().to(args.device)
    digest = hashlib.sha256()
    start = time.perf_counter()
    with torch.inference_mode():
        for i in range(args.batches):
            g = torch.Generator().manual_seed(i)
            x = torch.rand(8, 3, 224, 224, generator=g).to(args.device)
            digest.update(model(x).cpu().numpy().tobytes())
    per_batch = (time.perf_counter() - start) / args.batches
    print(f"{digest.hexdigest()} {per_batch * 1000:.1f} ms/batch")


if __name__ == "__main__":
    main()
