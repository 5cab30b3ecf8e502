"""Truncated and byte-mutated libraries: only SlimwheelError, bounded time and memory."""

from __future__ import annotations

import time
import tracemalloc
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from slimwheel.arch import parse_targets
from slimwheel.elf import ElfFile
from slimwheel.errors import SlimwheelError
from slimwheel.fatbin import scan
from slimwheel.inventory import scan_library
from slimwheel.policy import SlimPolicy

# Memory one scan of a ~1 MB fixture may take, decompression included.
PEAK_LIMIT = 64 << 20
TIME_LIMIT = 5.0


@pytest.fixture(scope="module")
def originals(fixture_libs: dict[str, Path]) -> dict[str, bytes]:
    return {n: fixture_libs[n].read_bytes() for n in ("many_speed", "many_size", "rdc", "relr")}


def _interesting_ranges(data: bytes) -> list[tuple[int, int]]:
    """The ELF header, the headers tables, fatbin sections and wrappers."""
    elf = ElfFile(data, "orig")
    ranges = [(0, 64), (elf.header.phoff, elf.header.phoff + 56 * elf.header.phnum)]
    ranges.append((elf.header.shoff, len(data)))
    for s in elf.sections:
        if s.name in (
            ".nv_fatbin",
            "__nv_relfatbin",
            ".nvFatBinSegment",
            ".dynamic",
            ".rela.dyn",
            ".relr.dyn",
        ):
            ranges.append((s.offset, s.offset + s.size))
    layout = scan(elf)
    for _r, e in layout.elements:
        ranges.append((e.offset, e.offset + e.header_size))
    return ranges


def _run(path: Path) -> None:
    tracemalloc.start()
    t0 = time.monotonic()
    try:
        scan_library(path, policy=SlimPolicy(targets=parse_targets(["sm_90"])), kernels=True)
    except SlimwheelError as exc:
        assert str(exc).startswith(str(path)) or str(path) in str(exc)
        assert "\n" not in str(exc)
    finally:
        _, peak = tracemalloc.get_traced_memory()
        tracemalloc.stop()
    assert time.monotonic() - t0 < TIME_LIMIT
    assert peak < PEAK_LIMIT, f"peak {peak} bytes"


FUZZ = settings(
    max_examples=150,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)


@FUZZ
@given(data=st.data())
def test_mutated_libraries(
    originals: dict[str, bytes], tmp_path: Path, data: st.DataObject
) -> None:
    name = data.draw(st.sampled_from(sorted(originals)))
    buf = bytearray(originals[name])
    ranges = _interesting_ranges(bytes(buf))
    for _ in range(data.draw(st.integers(1, 8))):
        lo, hi = data.draw(st.sampled_from(ranges))
        if hi <= lo:
            continue
        pos = data.draw(st.integers(lo, hi - 1))
        width = data.draw(st.sampled_from([1, 2, 4, 8]))
        value = data.draw(st.binary(min_size=width, max_size=width))
        buf[pos : pos + width] = value
    path = tmp_path / f"{name}.so"
    path.write_bytes(bytes(buf))
    _run(path)


@FUZZ
@given(data=st.data())
def test_truncated_libraries(
    originals: dict[str, bytes], tmp_path: Path, data: st.DataObject
) -> None:
    name = data.draw(st.sampled_from(sorted(originals)))
    orig = originals[name]
    cut = data.draw(st.integers(0, len(orig) - 1))
    path = tmp_path / f"{name}-cut.so"
    path.write_bytes(orig[:cut])
    _run(path)


def test_corrupt_payload_is_reported(originals: dict[str, bytes], tmp_path: Path) -> None:
    """A zstd payload with its bytes scrambled fails decompression cleanly."""
    buf = bytearray(originals["many_size"])
    el = next(e for _, e in scan(ElfFile(bytes(buf))).elements if e.compression.value == "zstd")
    start = el.payload_offset + 8
    buf[start : start + 32] = bytes(range(32))
    path = tmp_path / "scrambled.so"
    path.write_bytes(bytes(buf))
    with pytest.raises(SlimwheelError, match=r"scrambled\.so.*element at"):
        scan_library(path, kernels=True)


def test_lz4_size_claim_beyond_format_bound(originals: dict[str, bytes], tmp_path: Path) -> None:
    buf = bytearray(originals["many_speed"])
    el = next(e for _, e in scan(ElfFile(bytes(buf))).elements if e.compression.value == "lz4")
    # uncompressed size field (offset 0x38 of the element header): claim 2 GiB.
    buf[el.offset + 0x38 : el.offset + 0x40] = (2 << 30).to_bytes(8, "little")
    path = tmp_path / "bomb.so"
    path.write_bytes(bytes(buf))
    tracemalloc.start()
    with pytest.raises(SlimwheelError, match=r"over the cap|beyond what LZ4|more than the"):
        scan_library(path, kernels=True)
    _, peak = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    assert peak < PEAK_LIMIT
