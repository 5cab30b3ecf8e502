"""GPU tests: skipped unless the NVIDIA driver reports a GPU."""

from __future__ import annotations

import ctypes
from functools import cache

import pytest

from slimwheel.arch import Target


@cache
def gpu_capability() -> tuple[int, int] | None:
    try:
        cuda = ctypes.CDLL("libcuda.so.1")
    except OSError:
        return None
    count = ctypes.c_int()
    if cuda.cuInit(0) != 0 or cuda.cuDeviceGetCount(ctypes.byref(count)) != 0 or not count.value:
        return None
    major, minor = ctypes.c_int(), ctypes.c_int()
    cuda.cuDeviceGetAttribute(ctypes.byref(major), 75, 0)
    cuda.cuDeviceGetAttribute(ctypes.byref(minor), 76, 0)
    return major.value, minor.value


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    if gpu_capability() is not None:
        return
    skip = pytest.mark.skip(reason="no NVIDIA GPU (libcuda.so.1 reports none)")
    for item in items:
        if "tests/gpu/" in str(item.fspath).replace("\\", "/"):
            item.add_marker(skip)


@pytest.fixture(scope="module")
def target() -> Target:
    """This machine's GPU."""
    cap = gpu_capability()
    assert cap is not None
    return Target(*cap)
