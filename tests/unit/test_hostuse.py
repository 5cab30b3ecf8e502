"""hostuse.py: runs of executed pages, and reading the recorder's files."""

from __future__ import annotations

import itertools
import json
import os
from pathlib import Path

from hypothesis import given
from hypothesis import strategies as st

from slimwheel.hostuse import HostUse, collect_host, host_exact, normalize

runs_st = st.lists(st.tuples(st.integers(0, 200), st.integers(1, 20)), max_size=12)


@given(runs_st, st.integers(0, 300 * 4096), st.integers(1, 40 * 4096))
def test_touches_is_any_executed_page_in_range(
    runs: list[tuple[int, int]], start: int, length: int
) -> None:
    use = HostUse(4096, normalize(runs))
    pages = {p for a, n in runs for p in range(a, a + n)}
    want = any(start // 4096 <= p <= (start + length - 1) // 4096 for p in pages)
    assert use.touches(start, start + length) == want


@given(runs_st)
def test_normalize_is_sorted_disjoint_and_keeps_every_page(runs: list[tuple[int, int]]) -> None:
    out = normalize(runs)
    assert {p for a, n in out for p in range(a, a + n)} == {
        p for a, n in runs for p in range(a, a + n)
    }
    for (a, n), (b, _m) in itertools.pairwise(out):
        assert a + n < b  # not even touching


@given(runs_st, runs_st)
def test_union_and_digest(a: list[tuple[int, int]], b: list[tuple[int, int]]) -> None:
    x, y = HostUse(4096, normalize(a)), HostUse(4096, normalize(b))
    assert x.union(y) == y.union(x) == HostUse(4096, normalize(a + b))
    assert (x.digest() == y.digest()) == (x == y)


def _line(path: Path, runs: list[list[int]], *, ino: int | None = None) -> str:
    st_ = os.stat(path)
    dev = f"{os.major(st_.st_dev):02x}:{os.minor(st_.st_dev):02x}"
    return json.dumps(
        {"t": "host", "path": str(path), "dev": dev, "ino": ino or st_.st_ino, "page": 4096,
         "runs": runs}
    )  # fmt: skip


def test_collect_joins_processes_and_survives_cut_lines(tmp_path: Path) -> None:
    lib = tmp_path / "lib.so"
    lib.write_bytes(b"\0" * 65536)
    gone = tmp_path / "replaced.so"
    gone.write_bytes(b"\0" * 4096)
    rec = tmp_path / "rec"
    rec.mkdir()
    mode = '{"t":"host-mode","exact":true}\n'
    (rec / "10-p1.hostpages").write_text(mode + _line(lib, [[1, 2]]) + "\n")
    # A process killed mid-write: its complete lines count, the cut one does not.
    (rec / "11-p2.hostpages").write_text(
        mode + _line(lib, [[5, 1]]) + "\n" + _line(lib, [[9, 1]])[:30]
    )
    # A file replaced since it was recorded (another inode): left out.
    (rec / "12-a3.hostpages").write_text(mode + _line(gone, [[0, 1]], ino=1) + "\n")
    # Hostile lines: skipped, never trusted.
    (rec / "13-p4.hostpages").write_text(
        mode + _line(lib, [[-1, 5]]) + "\n" + _line(lib, [[2**50, 1]]) + "\n" + "[1, 2]\n"
    )
    got = list(collect_host(str(rec)))
    assert [(r.path, r.use.runs, r.processes) for r in got] == [(str(lib), ((1, 2), (5, 1)), 2)]
    assert host_exact(str(rec))
    (rec / "14-p5.hostpages").write_text('{"t":"host-mode","exact":false}\n')
    assert not host_exact(str(rec))
