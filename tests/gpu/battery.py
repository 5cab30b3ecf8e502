"""A battery of GPU work touching the big CUDA libraries of a torch stack.

    python battery.py OUT.json

Writes, per result, the SHA-256 of its bytes (bit-identical comparison), its
shape, dtype and a few values, plus the CUDA libraries the process mapped (to
prove which copy of the stack ran). Every step is deterministic: fixed seeds,
deterministic cuDNN algorithms, fixed cuBLAS workspace.
"""

from __future__ import annotations

import ctypes
import hashlib
import json
import os
import sys
import tempfile
from typing import Any

os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import nn

results: dict[str, Any] = {}


def record(name: str, t: torch.Tensor) -> None:
    t = t.detach().contiguous().cpu()
    if t.is_complex():
        t = torch.view_as_real(t)
    raw = t.view(torch.uint8).numpy().tobytes() if t.numel() else b""
    results[name] = {
        "sha256": hashlib.sha256(raw).hexdigest(),
        "shape": list(t.shape),
        "dtype": str(t.dtype),
        "head": [float(v) for v in t.flatten()[:3].float().tolist()],
        "sum": float(t.double().sum()) if t.numel() else 0.0,
        "abs_sum": float(t.double().abs().sum()) if t.numel() else 0.0,
    }


STEPS: list[tuple[str, Any]] = []


def step(name: str) -> Any:
    def register(fn: Any) -> Any:
        STEPS.append((name, fn))
        return fn

    return register


dev = torch.device("cuda")
torch.backends.cudnn.deterministic = True
torch.backends.cudnn.benchmark = False
torch.backends.cuda.matmul.allow_tf32 = False
torch.backends.cudnn.allow_tf32 = False
g = torch.Generator(device="cpu").manual_seed(1234)


def rand(*shape: int, dtype: torch.dtype = torch.float32) -> torch.Tensor:
    return torch.randn(*shape, generator=g).to(dev, dtype)


@step("conv")
def _conv() -> None:
    for dtype in (torch.float32, torch.float16, torch.bfloat16):
        x = rand(8, 16, 32, 32, dtype=dtype).requires_grad_()
        w = rand(32, 16, 3, 3, dtype=dtype).requires_grad_()
        y = F.conv2d(x, w, padding=1)
        y.float().square().sum().backward()
        record(f"conv_fwd_{dtype}", y)
        record(f"conv_dgrad_{dtype}", x.grad)  # type: ignore[arg-type]
        record(f"conv_wgrad_{dtype}", w.grad)  # type: ignore[arg-type]
        xc = x.detach().to(memory_format=torch.channels_last)
        record(f"conv_cl_{dtype}", F.conv2d(xc, w.detach(), padding=1, stride=2))
    bn = nn.BatchNorm2d(16).to(dev)
    record("batchnorm", bn(rand(4, 16, 8, 8)))


@step("matmul")
def _matmul() -> None:
    for dtype in (torch.float32, torch.float16, torch.bfloat16):
        a, b = rand(384, 512, dtype=dtype), rand(512, 256, dtype=dtype)
        record(f"mm_{dtype}", a @ b)
        record(f"bmm_{dtype}", torch.bmm(a.view(3, 128, 512), b.expand(3, 512, 256)))
        bias = rand(256, dtype=dtype)
        record(f"linear_bias_{dtype}", F.linear(a, b.t().contiguous(), bias))
        record(f"linear_gelu_{dtype}", F.gelu(F.linear(a, b.t().contiguous(), bias)))


@step("attention")
def _attention() -> None:
    q, k, v = (rand(2, 4, 128, 64, dtype=torch.float16) for _ in range(3))
    record("sdpa_fp16", F.scaled_dot_product_attention(q, k, v, is_causal=True))
    lstm = nn.LSTM(32, 64, num_layers=2).to(dev)
    out, _ = lstm(rand(10, 4, 32))
    record("lstm", out)


@step("fft")
def _fft() -> None:
    record("fft2", torch.fft.fft2(rand(64, 64)))
    record("rfft_1000", torch.fft.rfft(rand(8, 1000)))
    record("ifft_c", torch.fft.ifft(torch.fft.fft(rand(4, 4096).to(torch.complex64))))
    record("fft_prime", torch.fft.fft(rand(3, 1013)))


@step("curand")
def _curand() -> None:
    path = next(p for p in _mapped_or_found("libcurand.so") if os.path.exists(p))
    lib = ctypes.CDLL(path)
    for name, kind in (
        ("xorwow", 101),
        ("mrg32k3a", 121),
        ("mtgp32", 141),
        ("philox", 161),
        ("sobol32", 201),
    ):
        gen = ctypes.c_void_p()
        assert lib.curandCreateGenerator(ctypes.byref(gen), kind) == 0, name
        if kind < 200:
            assert lib.curandSetPseudoRandomGeneratorSeed(gen, ctypes.c_ulonglong(42)) == 0
        out = torch.empty(1 << 16, device=dev)
        ptr, n = ctypes.c_void_p(out.data_ptr()), ctypes.c_size_t(out.numel())
        rc = lib.curandGenerateUniform(gen, ptr, n)
        torch.cuda.synchronize()
        assert rc == 0, (name, rc)
        record(f"curand_{name}", out)
        lib.curandDestroyGenerator(gen)


@step("sparse")
def _sparse() -> None:
    dense = rand(256, 256)
    s = (dense * (dense > 1.0)).to_sparse_csr()
    record("spmm_csr", s @ rand(256, 64))
    record("spmv_csr", s @ rand(256))
    coo = (dense * (dense > 1.5)).to_sparse()
    record("spmm_coo", torch.sparse.mm(coo, rand(256, 32)))


@step("linalg")
def _linalg() -> None:
    torch.backends.cuda.preferred_linalg_library("cusolver")
    a = rand(128, 128) + 128 * torch.eye(128, device=dev)
    b = rand(128, 8)
    record("solve", torch.linalg.solve(a, b))
    spd = a @ a.T
    record("cholesky", torch.linalg.cholesky(spd))
    _q, r = torch.linalg.qr(a)
    record("qr_r", r)
    record("eigvalsh", torch.linalg.eigvalsh(spd))
    record("svdvals", torch.linalg.svdvals(a))
    record("inv", torch.linalg.inv(a))


@step("nccl")
def _nccl() -> None:
    with tempfile.NamedTemporaryFile(delete=False) as f:
        init = f"file://{f.name}"
    dist.init_process_group("nccl", init_method=init, rank=0, world_size=1)
    t = torch.arange(1 << 20, device=dev, dtype=torch.float32)
    dist.all_reduce(t)
    u = rand(4096, dtype=torch.bfloat16)
    dist.all_reduce(u, op=dist.ReduceOp.MAX)
    torch.cuda.synchronize()
    record("nccl_allreduce", t)
    record("nccl_allreduce_bf16", u)
    dist.destroy_process_group()


@step("train")
def _train() -> None:
    torch.manual_seed(0)
    model = nn.Sequential(
        nn.Conv2d(3, 16, 3, padding=1),
        nn.BatchNorm2d(16),
        nn.ReLU(),
        nn.MaxPool2d(2),
        nn.Conv2d(16, 32, 3, padding=1),
        nn.ReLU(),
        nn.AdaptiveAvgPool2d(1),
        nn.Flatten(),
        nn.Linear(32, 10),
    ).to(dev)
    opt = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9)
    x, y = rand(32, 3, 32, 32), torch.randint(0, 10, (32,), generator=g).to(dev)
    losses = []
    for _ in range(5):
        opt.zero_grad()
        loss = F.cross_entropy(model(x), y)
        loss.backward()
        opt.step()
        losses.append(loss.detach())
    record("train_losses", torch.stack(losses))
    record("train_params", torch.cat([p.detach().flatten() for p in model.parameters()]))


def _fft_sweep() -> None:
    """cuFFT across many sizes, precisions and ranks (run alone: battery.py OUT --fft-sweep).

    cuFFT picks kernels per size (radix, Bluestein for large primes, ...);
    a sweep reaches far more of its kernels and code paths than the battery.
    """
    sizes = [*range(1, 1025), 1031, 2048, 2310, 4096, 4099, 7919, 8192, 10007, 16384]
    sizes += [65536, 65537, 100003, 131072, 1 << 20, 1_000_000]

    def case(name: str, fn: Any) -> None:
        try:
            record(name, fn())
        except Exception as exc:
            results[name + ":error"] = {"error": f"{type(exc).__name__}: {exc}"[:300]}

    for n in sizes:
        x = rand(2, n).to(torch.complex64)
        case(f"c2c_f32_{n}", lambda x=x: torch.fft.fft(x))
        if n <= 512 or n in (4096, 65536, 100003):
            case(f"c2c_f64_{n}", lambda n=n: torch.fft.ifft(rand(2, n, dtype=torch.float64)))
            case(f"r2c_{n}", lambda n=n: torch.fft.rfft(rand(2, n)))
            case(f"c2r_{n}", lambda n=n: torch.fft.irfft(rand(2, n).to(torch.complex64)))
    for k in range(1, 13):
        case(f"c2c_f16_{1 << k}", lambda k=k: torch.fft.fft(rand(2, 1 << k, dtype=torch.float16)))
    dims = [3, 5, 16, 17, 64, 100, 128, 255, 256, 1000, 1024]
    for a in dims:
        for b in dims:
            case(f"fft2_{a}x{b}", lambda a=a, b=b: torch.fft.fft2(rand(a, b)))
    for shape in [(8, 8, 8), (16, 32, 64), (7, 11, 13), (64, 64, 64)]:
        case(f"fftn_{'x'.join(map(str, shape))}", lambda shape=shape: torch.fft.fftn(rand(*shape)))


def _mapped_or_found(stem: str) -> list[str]:
    mapped = [p for p in _mapped() if stem in os.path.basename(p)]
    if mapped:
        return mapped
    for entry in sys.path:
        for sub in ("nvidia/cu13/lib", "nvidia/curand/lib"):
            d = os.path.join(entry, sub)
            if os.path.isdir(d):
                for fn in sorted(os.listdir(d)):
                    if fn.startswith(stem):
                        return [os.path.join(d, fn)]
    return []


def _mapped() -> list[str]:
    out = set()
    with open("/proc/self/maps") as f:
        for line in f:
            parts = line.split()
            if len(parts) >= 6 and ".so" in parts[5]:
                out.add(parts[5])
    return sorted(out)


def main() -> None:
    steps = [("fft_sweep", _fft_sweep)] if "--fft-sweep" in sys.argv[2:] else STEPS
    for name, fn in steps:
        torch.manual_seed(0)  # module initializers draw from the global generator
        try:
            fn()
        except Exception as exc:  # a failing step is a result too
            results[name + ":error"] = {"error": f"{type(exc).__name__}: {exc}"[:500]}
    torch.cuda.synchronize()
    cuda_libs = [p for p in _mapped() if "/nvidia/" in p or "/torch/lib/" in p]
    doc = {
        "torch": torch.__version__,
        "device": torch.cuda.get_device_name(),
        "loading": os.environ.get("CUDA_MODULE_LOADING", ""),
        "libraries": cuda_libs,
        "results": results,
    }
    with open(sys.argv[1], "w") as f:
        json.dump(doc, f, indent=1, sort_keys=True)
    errors = [k for k in results if k.endswith(":error")]
    print(f"{len(results)} results, {len(errors)} failed steps, {len(cuda_libs)} CUDA libraries")


if __name__ == "__main__":
    main()
