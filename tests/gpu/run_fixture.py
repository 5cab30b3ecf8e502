"""Child process for GPU fixture tests: load a fixture library, run its harness.

    python run_fixture.py LIB HARNESS

Prints one JSON line: {"rc": CUDA error code, "sha256": digest of the output
buffer, "head": first values}. CUDA_MODULE_LOADING is taken from the
environment, so each loading mode runs in its own process.
"""

from __future__ import annotations

import ctypes
import hashlib
import json
import sys

N = 4096


def main() -> None:
    lib = ctypes.CDLL(sys.argv[1])
    harness = sys.argv[2]
    if harness in ("fixture_run", "rdc_run"):
        buf = (ctypes.c_float * N)(*[float(i % 97) - 40.0 for i in range(N)])
        rc = getattr(lib, harness)(buf, N)
    elif harness in ("big_run", "embedded_run", "per_arch_run", "usage_run_a", "usage_run_b"):
        buf = (ctypes.c_uint * N)()
        rc = getattr(lib, harness)(buf, N)
    elif harness == "fixture_managed_run":
        out = ctypes.c_int()
        rc = lib.fixture_managed_run(5, ctypes.byref(out))
        buf = (ctypes.c_int * 1)(out.value)
    else:
        raise SystemExit(f"unknown harness {harness}")
    data = bytes(buf)
    print(json.dumps({"rc": rc, "sha256": hashlib.sha256(data).hexdigest(), "head": list(buf[:4])}))


if __name__ == "__main__":
    main()
