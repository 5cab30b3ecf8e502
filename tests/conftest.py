from __future__ import annotations

import os
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

from tests.fixtures.builds import BUILDS, build
from tests.helpers import CACHE, extract_member, local_wheel


@pytest.fixture(scope="session")
def fixture_libs(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """Every fixture library of tests/fixtures/builds.py, built once per session.

    SLIMWHEEL_FIXTURE_CACHE names a directory to keep them across sessions.
    """
    keep = os.environ.get("SLIMWHEEL_FIXTURE_CACHE")
    where = Path(keep) if keep else tmp_path_factory.mktemp("fixtures")
    where.mkdir(parents=True, exist_ok=True)
    with ThreadPoolExecutor(max_workers=os.cpu_count() or 2) as pool:
        built = dict(zip(BUILDS, pool.map(lambda b: build(b, where), BUILDS.values()), strict=True))
    return built


@pytest.fixture(scope="session")
def real_libs() -> Path:
    """Directory for libraries extracted from the local CUDA wheels."""
    d = CACHE / "libs"
    d.mkdir(parents=True, exist_ok=True)
    return d


@pytest.fixture(scope="session")
def curand_lib(real_libs: Path) -> Path:
    return extract_member(local_wheel("nvidia-curand==10.4.0.35"), "libcurand.so.10", real_libs)


@pytest.fixture(scope="session")
def curand_aarch64_lib(real_libs: Path) -> Path:
    d = real_libs / "aarch64"
    d.mkdir(exist_ok=True)
    wheel = local_wheel("nvidia-curand==10.4.0.35", platform="manylinux_2_27_aarch64")
    return extract_member(wheel, "libcurand.so.10", d)


@pytest.fixture(scope="session")
def linalg_lib(real_libs: Path) -> Path:
    wheel = local_wheel("torch==2.14.1")
    return extract_member(wheel, "libtorch_cuda_linalg.so", real_libs)
