"""JAX workloads whose results are compared between an original and a slimmed install.

    python jax_battery.py OUT.json

Runs jitted matmuls (f32, bf16), a convolution, FFTs, linear algebra
(solve, Cholesky, QR, SVD, eigh), random numbers and a small training loop
on the default device, and writes {workload: SHA-256 of the result's bytes}
plus the device it ran on. XLA picks algorithms by timing unless autotuning
is off: run it with ``XLA_FLAGS=--xla_gpu_autotune_level=0`` (XLA refuses
unknown flags, so a run that starts proves the flag exists).
"""

from __future__ import annotations

import hashlib
import json
import sys
from collections.abc import Callable
from typing import Any


def main() -> None:
    import jax
    import jax.numpy as jnp
    import numpy as np

    jax.config.update("jax_default_matmul_precision", "highest")
    key = jax.random.PRNGKey(0)
    k1, k2, k3, k4 = jax.random.split(key, 4)
    a = jax.random.normal(k1, (256, 256), jnp.float32)
    b = jax.random.normal(k2, (256, 256), jnp.float32)
    spd = a @ a.T + 256 * jnp.eye(256)
    img = jax.random.normal(k3, (8, 32, 32, 16), jnp.float32)
    ker = jax.random.normal(k4, (3, 3, 16, 32), jnp.float32)

    def conv(x: Any, w: Any) -> Any:
        return jax.lax.conv_general_dilated(
            x, w, (1, 1), "SAME", dimension_numbers=("NHWC", "HWIO", "NHWC")
        )

    def train() -> Any:
        params = {"w1": a[:64, :32] * 0.1, "w2": b[:32, :8] * 0.1}
        x, y = a[:, :64], b[:, :8]

        def loss(p: Any) -> Any:
            return jnp.mean((jnp.tanh(x @ p["w1"]) @ p["w2"] - y) ** 2)

        step = jax.jit(lambda p: jax.tree.map(lambda v, g: v - 0.05 * g, p, jax.grad(loss)(p)))
        losses = []
        for _ in range(20):
            params = step(params)
            losses.append(loss(params))
        return jnp.stack(losses)

    work: dict[str, Callable[[], Any]] = {
        "matmul_f32": lambda: jax.jit(jnp.matmul)(a, b),
        "matmul_bf16": lambda: jax.jit(jnp.matmul)(a.astype(jnp.bfloat16), b.astype(jnp.bfloat16)),
        "conv": lambda: jax.jit(conv)(img, ker),
        "conv_grad": lambda: jax.jit(jax.grad(lambda w: jnp.sum(conv(img, w) ** 2)))(ker),
        "fft2": lambda: jnp.fft.fft2(a.astype(jnp.complex64)),
        "rfft": lambda: jnp.fft.rfft(a, axis=1),
        "solve": lambda: jnp.linalg.solve(spd, b),
        "cholesky": lambda: jnp.linalg.cholesky(spd),
        "qr": lambda: jnp.linalg.qr(a)[1],
        "svd": lambda: jnp.linalg.svd(a, compute_uv=False),
        "eigh": lambda: jnp.linalg.eigh(spd)[0],
        "random": lambda: jax.random.uniform(k1, (4096,)),
        "reduce": lambda: jax.jit(lambda x: jnp.sum(jnp.exp(x), axis=0))(a),
        "train": train,
    }
    out: dict[str, Any] = {"device": str(jax.devices()[0]), "results": {}}
    for name, fn in work.items():
        value = np.asarray(jax.block_until_ready(fn()))
        digest = hashlib.sha256(value.tobytes()).hexdigest()
        head = value.ravel()[:3].real.astype(float).tolist()
        out["results"][name] = {"sha256": digest, "head": head}
    # Which copies of JAX's CUDA libraries this process mapped.
    with open("/proc/self/maps") as maps:
        out["mapped"] = sorted(
            {ln.split()[-1] for ln in maps if ".so" in ln and ("jax" in ln or "xla" in ln)}
        )
    with open(sys.argv[1], "w") as f:
        json.dump(out, f, indent=1, sort_keys=True)


if __name__ == "__main__":
    main()
