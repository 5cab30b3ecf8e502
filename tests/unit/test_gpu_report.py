"""bench/gpu_report.py's bookkeeping, without a GPU: resuming, the budget, Jaccard."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from bench.gpu_report import Clock, OutOfTime, _jaccard, append_line


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
