"""The workloads of bench/gpu_report.py, one per process, run by the environment's Python.

    python bench/report_workloads.py WORKLOAD --out RESULT.json [--device cuda]

WORKLOAD is one of NAMES. Weights come from a fixed seed and inputs from
seeded CPU generators, so two runs on the same stack compute the same bytes
(deterministic algorithms are requested; CUBLAS_WORKSPACE_CONFIG is set
before torch loads). Writes one JSON object:

- ``first_s``: seconds from ``SLIMWHEEL_REPORT_T0`` (the parent's clock just
  before it started this process) to the first CUDA result on the host:
  ``import torch`` and one kernel; ``import_s`` the part up to ``import torch``
  done (the rest is CUDA's start: the driver, the context, the first module);
- ``work_s``: the workload itself, after that;
- ``digest``: SHA-256 of the outputs (logits, the loss curve and final
  weights, or the generated tokens), compared across variants;
- ``detail``: a few of the outputs in readable form.

Exit status 3 (and ``{"skipped": ...}``) when the workload's library is not
installed (transformers, for the language model).
"""

from __future__ import annotations

import os
import time

T0 = float(os.environ.get("SLIMWHEEL_REPORT_T0") or time.time())
os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")

import argparse  # noqa: E402
import hashlib  # noqa: E402
import importlib.util  # noqa: E402
import json  # noqa: E402
import sys  # noqa: E402
from pathlib import Path  # noqa: E402
from typing import Any  # noqa: E402

import torch  # noqa: E402
from torch import nn  # noqa: E402

IMPORT_S = time.time() - T0  # the interpreter's start and ``import torch``

NAMES = (
    "mobilenet_v2-infer",
    "mobilenet_v2-train",
    "transformer-infer",
    "transformer-train",
    "llama-generate",
)
HERE = Path(__file__).resolve().parent


def _seeded(shape: tuple[int, ...], seed: int) -> torch.Tensor:
    return torch.randn(shape, generator=torch.Generator().manual_seed(seed))


def _hash_tensors(h: Any, *tensors: torch.Tensor) -> None:
    for t in tensors:
        h.update(t.detach().float().cpu().contiguous().numpy().tobytes())


def mobilenet_v2() -> tuple[nn.Module, str]:
    """torchvision's MobileNetV2 for 10 classes when torchvision is installed, else
    the same architecture written out in profiles/workloads/mobilenet_v2_infer.py."""
    try:
        from torchvision.models import mobilenet_v2 as tv  # type: ignore[import-not-found]

        return tv(weights=None, num_classes=10), "torchvision"
    except ImportError:
        path = HERE.parent / "profiles" / "workloads" / "mobilenet_v2_infer.py"
        spec = importlib.util.spec_from_file_location("mobilenet_v2_local", path)
        assert spec is not None and spec.loader is not None
        mod = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(mod)
        return mod.MobileNetV2(classes=10), "profiles/workloads/mobilenet_v2_infer.py"


def transformer() -> nn.Module:
    return nn.Transformer(
        d_model=256, nhead=8, num_encoder_layers=3, num_decoder_layers=3,
        dim_feedforward=1024, dropout=0.1, batch_first=True,
    )  # fmt: skip


def run(name: str, dev: str) -> dict[str, Any]:
    h = hashlib.sha256()
    detail: dict[str, Any] = {}
    torch.manual_seed(0)
    if name.startswith("mobilenet_v2"):
        model, source = mobilenet_v2()
        detail["model"] = source
        model = model.to(dev)
        batches = [(_seeded((128, 3, 32, 32), i), i % 10) for i in range(20)]  # CIFAR-10 shaped
        if name.endswith("infer"):
            model.eval()
            with torch.inference_mode():
                for x, _ in batches:
                    logits = model(x.to(dev))
                    _hash_tensors(h, logits)
            detail["last_argmax"] = logits.argmax(1)[:16].tolist()
        else:
            model.train()
            opt = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9)
            labels = torch.randint(0, 10, (20, 128), generator=torch.Generator().manual_seed(99))
            losses = []
            for (x, _), y in zip(batches, labels, strict=True):
                opt.zero_grad()
                loss = nn.functional.cross_entropy(model(x.to(dev)), y.to(dev))
                loss.backward()
                opt.step()
                losses.append(loss.item())
            _hash_tensors(h, torch.tensor(losses, dtype=torch.float64), *model.parameters())
            detail["losses"] = [v.hex() for v in losses]
    elif name.startswith("transformer"):
        model = transformer().to(dev)
        mask = nn.Transformer.generate_square_subsequent_mask(48).to(dev)
        data = [
            (_seeded((32, 64, 256), 2 * i), _seeded((32, 48, 256), 2 * i + 1)) for i in range(10)
        ]
        if name.endswith("infer"):
            model.eval()
            with torch.inference_mode():
                for src, tgt in data:
                    out = model(src.to(dev), tgt.to(dev), tgt_mask=mask)
                    _hash_tensors(h, out)
            detail["last_out"] = [v.hex() for v in out[0, 0, :4].double().tolist()]
        else:
            model.train()
            opt = torch.optim.Adam(model.parameters(), lr=1e-4)
            losses = []
            for i, (src, tgt) in enumerate(data * 2):
                target = _seeded((32, 48, 256), 1000 + i).to(dev)
                opt.zero_grad()
                out = model(src.to(dev), tgt.to(dev), tgt_mask=mask)
                loss = nn.functional.mse_loss(out, target)
                loss.backward()
                opt.step()
                losses.append(loss.item())
            _hash_tensors(h, torch.tensor(losses, dtype=torch.float64), *model.parameters())
            detail["losses"] = [v.hex() for v in losses]
    elif name == "llama-generate":
        from transformers import LlamaConfig, LlamaForCausalLM  # type: ignore[import-not-found]

        config = LlamaConfig(
            vocab_size=8192, hidden_size=512, intermediate_size=1376, num_hidden_layers=4,
            num_attention_heads=8, num_key_value_heads=8, max_position_embeddings=512,
        )  # fmt: skip
        model = LlamaForCausalLM(config).to(dev).eval()
        prompt = torch.randint(1, 8192, (4, 16), generator=torch.Generator().manual_seed(7))
        with torch.inference_mode():
            tokens = model.generate(
                prompt.to(dev), attention_mask=torch.ones_like(prompt).to(dev),
                max_new_tokens=64, min_new_tokens=64, do_sample=False, pad_token_id=0,
            )  # fmt: skip
        h.update(tokens.cpu().numpy().astype("int64").tobytes())
        detail["tokens"] = tokens[0, 16:32].tolist()
    else:
        raise SystemExit(f"unknown workload {name!r}; one of {', '.join(NAMES)}")
    if dev == "cuda":
        torch.cuda.synchronize()
    return {"digest": h.hexdigest(), "detail": detail}


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("workload", choices=NAMES)
    ap.add_argument("--out", required=True)
    ap.add_argument("--device", default="cuda")
    args = ap.parse_args()
    torch.use_deterministic_algorithms(True, warn_only=True)
    torch.backends.cudnn.benchmark = False
    if args.workload == "llama-generate" and importlib.util.find_spec("transformers") is None:
        Path(args.out).write_text(json.dumps({"skipped": "transformers is not installed"}))
        return 3
    one = torch.ones(1, device=args.device).add(1).item()  # the first result on the host
    first_s = time.time() - T0
    assert one == 2.0
    start = time.perf_counter()
    result = run(args.workload, args.device)
    result.update(
        workload=args.workload,
        first_s=round(first_s, 4),
        import_s=round(IMPORT_S, 4),
        work_s=round(time.perf_counter() - start, 4),
        torch=torch.__version__,
        device=torch.cuda.get_device_name() if args.device == "cuda" else args.device,
        loading=os.environ.get("CUDA_MODULE_LOADING", ""),
    )
    Path(args.out).write_text(json.dumps(result, sort_keys=True))
    return 0


if __name__ == "__main__":
    sys.exit(main())
