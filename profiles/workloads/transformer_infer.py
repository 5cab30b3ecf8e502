"""Transformer inference on the GPU (fp16, scaled-dot-product attention).

    python transformer_infer.py OUT.json

Writes the SHA-256 of the logits of a small encoder-only model with random
(seeded) weights, so a rerun on a slimmed stack can be compared bit for bit.
"""

from __future__ import annotations

import hashlib
import json
import sys

import torch
from torch import nn


def main() -> None:
    torch.manual_seed(0)
    layer = nn.TransformerEncoderLayer(d_model=256, nhead=8, dim_feedforward=1024, batch_first=True)
    model = nn.Sequential(
        nn.Embedding(1000, 256), nn.TransformerEncoder(layer, num_layers=4), nn.Linear(256, 1000)
    )
    model = model.cuda().half().eval()
    tokens = torch.randint(0, 1000, (8, 128), device="cuda")
    with torch.inference_mode():
        logits = model(tokens)
        top = logits.float().softmax(-1).argmax(-1)
    raw = logits.contiguous().cpu().view(torch.uint8).numpy().tobytes()
    doc = {
        "logits": hashlib.sha256(raw).hexdigest(),
        "top_tokens": hashlib.sha256(top.cpu().numpy().tobytes()).hexdigest(),
        "first": [float(v) for v in logits[0, 0, :4].float()],
    }
    with open(sys.argv[1], "w") as f:
        json.dump(doc, f, indent=1, sort_keys=True)


if __name__ == "__main__":
    main()
