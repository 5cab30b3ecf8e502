"""bench/gpu_report.py's bookkeeping, without a GPU: resuming, the budget, Jaccard,
the page cache."""

from __future__ import annotations

import ctypes
import json
import mmap
import os
from pathlib import Path

import pytest

from bench.gpu_report import Clock, OutOfTime, _jaccard, append_line, evict


def test_jaccard_from_pairwise_intersections() -> None:
    # A = {1,2,3}, B = {2,3,4,5}, C = {}: |A&B| = 2, |A|B| = 5
    inter = [[3, 2, 0], [2, 4, 0], [0, 0, 0]]
    j = _jaccard(inter)
    assert j[0][1] == j[1][0] == 0.4
    assert j[0][0] == j[1][1] == 1.0
    assert j[2][2] is None and j[0][2] == 0.0


def test_a_step_that_does_not_fit_the_budget_is_not_started() -> None:
    clock = Clock(budget=100.0)
    with clock.step("run", "a run"):
        pass
    clock.seen["run"] = 150.0  # the longest run seen so far
    with pytest.raises(OutOfTime, match="a second run"), clock.step("run", "a second run"):
        raise AssertionError("started")


def test_a_half_written_line_is_ended_and_skipped(tmp_path: Path) -> None:
    runs = tmp_path / "runs.jsonl"
    runs.write_text('{"workload": "a", "variant": "original", "mode": "LAZY", "round": 0}\n{"work')
    append_line(runs, {"workload": "a", "variant": "arch", "mode": "LAZY", "round": 0})
    lines = runs.read_text().splitlines()
    assert len(lines) == 3 and lines[1] == '{"work'
    assert json.loads(lines[2])["variant"] == "arch"


def _resident_pages(path: Path) -> int:
    """Pages of ``path`` in the page cache (mincore(2) on a shared mapping)."""
    libc = ctypes.CDLL(None, use_errno=True)
    size = path.stat().st_size
    pages = (size + mmap.PAGESIZE - 1) // mmap.PAGESIZE
    with open(path, "r+b") as f, mmap.mmap(f.fileno(), size) as mm:
        buf = (ctypes.c_char * size).from_buffer(mm)
        vec = (ctypes.c_ubyte * pages)()
        try:
            rc = libc.mincore(ctypes.c_void_p(ctypes.addressof(buf)), ctypes.c_size_t(size), vec)
            assert rc == 0, os.strerror(ctypes.get_errno())
        finally:
            del buf
    return sum(v & 1 for v in vec)


def test_evict_drops_written_files_from_the_page_cache(tmp_path: Path) -> None:
    lib = tmp_path / "venv" / "lib" / "libbig.so"
    lib.parent.mkdir(parents=True)
    lib.write_bytes(os.urandom(4 << 20))  # just written: cached, dirty
    (tmp_path / "venv" / "lib" / "link.so").symlink_to(lib)
    os.mkfifo(tmp_path / "venv" / "fifo")  # never opened (it would block)
    if _resident_pages(lib) == 0:
        pytest.skip("this filesystem does not keep the file in the page cache")
    assert evict(tmp_path / "venv") == 1
    if _resident_pages(lib) == 1024:
        pytest.skip("a filesystem without eviction (tmpfs)")
    assert _resident_pages(lib) == 0


def test_results_measured_another_way_are_refused(tmp_path: Path) -> None:
    from argparse import Namespace

    from bench.gpu_report import Report

    report = Report(Namespace(
        results=str(tmp_path / "r"), workdir=str(tmp_path / "w"), runs=5, jobs=1,
        workloads="mobilenet_v2-infer", budget=100.0, arch="sm_90", parallel=1, device="cpu",
    ))  # fmt: skip
    report.method()
    report.method()  # resuming
    method = tmp_path / "r" / "method.json"
    assert json.loads(method.read_text()) == {
        "cache": "cold",
        "nvml_period_s": 0.02,
        "host_holes": [16 << 10, 1024],
    }
    method.write_text('{"cache": "cold", "nvml_period_s": 0.005}')  # an older way
    with pytest.raises(SystemExit, match=r"measured with .*0\.005.* use another --results"):
        report.method()
    # +cpu made with other host-code rules (the 64 KiB, 256 of the committed report)
    method.write_text('{"cache": "cold", "nvml_period_s": 0.02, "host_holes": [65536, 256]}')
    with pytest.raises(SystemExit, match=r"measured with .*65536.* use another --results"):
        report.method()
