"""bench/report_render.py: docs/results.md from gpu_report's raw JSON (here a small
results directory written by the test), byte-identical when rendered twice."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from bench.report_render import host_by_loading, render, verdict

pytest.importorskip("matplotlib")


def _results(root: Path, *, flaky_original: bool = False, gpu_bytes: float = 2e9) -> Path:
    r = root / "bench" / "results" / "gpu-report"
    (r / "profiles").mkdir(parents=True)
    (r / "profiles" / "mobilenet_v2-infer.json").write_text("{}")
    (r / "profiles" / "mobilenet_v2-infer.seconds.json").write_text('{"LAZY": 150.2, "EAGER": 160}')
    (r / "profiles" / "llama-generate.skipped").write_text(
        json.dumps({"skipped": "transformers is not installed"})
    )
    (r / "machine.json").write_text(json.dumps({
        "gpu": "NVIDIA H200", "gpus": 1, "driver": "580.1", "memory_bytes": 150_000_000_000,
        "cuda_runtime": "13.0", "cpu": "a CPU", "cores": 16, "kernel": "6.18", "glibc": "2.39",
        "python": "3.12.3", "versions": {"torch": "2.11.0"}, "measured_at": "2026-12-02",
        "stack": {},
    }))  # fmt: skip
    lib = "torch/lib/libtorch_cuda.so"
    other = "nvidia/cu13/lib/libcublasLt.so.13"
    sizes = {  # file bytes, host code left, host code removed, functions removed
        "original": {lib: [400, 100, 0, 0], other: [600, 200, 0, 0]},
        "arch": {lib: [200, 100, 0, 0], other: [300, 200, 0, 0]},
        "+profile": {lib: [150, 100, 0, 0], other: [250, 200, 0, 0]},
        "+cpu": {lib: [100, 50, 50, 7], other: [150, 100, 100, 9]},
        "+strip": {lib: [80, 50, 50, 7], other: [150, 100, 100, 9]},
    }
    (r / "sizes").mkdir()
    (r / "sizes" / "mobilenet_v2-infer.json").write_text(json.dumps({
        "workload": "mobilenet_v2-infer",
        "variants": {v: {"seconds": 1.0, "libraries": libs} for v, libs in sizes.items()},
    }))  # fmt: skip
    (r / "analysis").mkdir()
    (r / "analysis" / "mobilenet_v2-infer.json").write_text(json.dumps({
        "workload": "mobilenet_v2-infer", "profile": "x", "loaded": [lib], "kernels_launched": 3,
        "libraries": {
            lib: {"file_bytes": 400, "device_bytes": 300, "elements": 10, "removable": None,
                  "removed": {"wrong-arch": [6, 150], "not-used": [2, 75]}, "host": None},
            other: {"file_bytes": 600, "device_bytes": 100, "elements": 4, "removable": None,
                    "removed": {"superseded": [1, 25]}, "host": None},
        },
    }))  # fmt: skip
    (r / "similarity.json").write_text(json.dumps({
        "workloads": ["mobilenet_v2-infer"],
        "kernels": {"counts": [3], "jaccard": [[1.0]]},
        "functions": {"counts": [100], "jaccard": [[1.0]]},
    }))  # fmt: skip
    rows = []
    for rnd in range(5):
        for mode in ("LAZY", "EAGER"):
            for i, v in enumerate(("original", "arch", "+profile", "+cpu", "+strip")):
                digest = "d"
                if flaky_original and v == "original" and rnd == 4:
                    digest = "e"
                rows.append({
                    "workload": "mobilenet_v2-infer", "variant": v, "mode": mode, "round": rnd,
                    "cache": "cold",
                    # first_s: the original 2.0-2.4 s, +profile 1.9-2.3 s (ranges overlap)
                    "rc": 0, "wall_s": 10.0 - i, "work_s": 1.0, "import_s": 1.5,
                    "first_s": 2.0 + rnd / 10 - (0.1 if v == "+profile" else 0.0),
                    "rss_bytes": 1_000_000_000 - i * 100_000_000, "gpu_process_bytes": gpu_bytes,
                    "gpu_device_bytes": 2e9, "gpu_how": "pid", "gpu_samples": 10,
                    "digest": digest, "detail": {},
                })  # fmt: skip
    (r / "runs.jsonl").write_text("".join(json.dumps(x) + "\n" for x in rows))
    (r / "method.json").write_text('{"cache": "cold", "nvml_period_s": 0.02}')
    return r


def test_render_tables_and_charts(tmp_path: Path) -> None:
    results = _results(tmp_path)
    docs = tmp_path / "docs" / "results.md"
    docs.parent.mkdir()
    render(results, docs)
    text = docs.read_text()
    assert "from the raw JSON in `bench/results/gpu-report/`" in text
    assert "- llama-generate: not run (transformers is not installed)" in text
    assert "- mobilenet_v2-infer: profile (recorded in 160 s EAGER, 150 s LAZY), analysis" in text
    assert "at least 5 of 5 per mode and variant (50 in all)" in text
    # total 1000 -> 500 (arch) -> 230 (+strip); host 300 -> 150 after --cpu, 16 functions
    assert "| +strip | 0.0 MB (-77.0%) |" in text
    assert "0.0 MB (-50.0%, 16)" in text
    # device code 400 B, 14 elements: arch removes 175 B / 7, the profile 75 B / 2
    assert "0.0 MB (-43.8%), 7 (-50.0%)" in text  # arch
    assert "0.0 MB (-62.5%), 5 (-64.3%)" in text  # +profile and after
    assert "| mobilenet_v2-infer | 0.0 MB | 0.0 MB (70.0%) | 0.0 MB (30.0%) |" in text
    # wall time 10 s -> 6 s for +strip, every output identical
    assert "| mobilenet_v2-infer | EAGER | +strip | 5 | 6.00 [6.00-6.00] -40.0% |" in text
    # a change the spread could make alone is marked; an equal median is not
    assert (
        "| +profile | 5 | 8.00 [8.00-8.00] -20.0% | 1.50 [1.50-1.50] +0.0% "
        "| 2.10 [1.90-2.30] -4.5%* |" in text
    )
    assert (
        "| +strip | 5 | 6.00 [6.00-6.00] -40.0% | 1.50 [1.50-1.50] +0.0% | 2.20 [2.00-2.40] +0.0% |"
        in text
    )
    assert "every run was a cold start" in text and "sampled every 20 ms" in text
    assert text.count("| 5/5 |") == 10
    assert "| total file size | -55.0% | -75.0% (ahead) | -77.0% (ahead) |" in text
    assert "| time (EAGER) | -44.6% | -30.0% (behind) | -40.0% (behind) |" in text
    assert (
        "| peak GPU memory (LAZY) | about 0% (H100) | +0.0% (within their range) "
        "| +0.0% (within their range) |" in text
    )
    assert "| time (LAZY) | -8% to -20% (H100) | -30.0% (ahead) |" in text
    assert (
        "slimwheel (+cpu) is ahead on total file size, peak CPU memory (LAZY), time (LAZY);"
        " within their range on peak GPU memory (LAZY); behind on device code, host code," in text
    )
    assert "Host code with `+cpu`: in the 1 libraries the workload loaded" in text
    charts = sorted(p.name for p in (docs.parent / "results").iterdir())
    assert charts == ["gpu_memory.png", "pareto.png", "removed_kind.png", "rss.png",
                      "sizes.png", "time.png"]  # fmt: skip
    before = {p.name: p.read_bytes() for p in (docs.parent / "results").iterdir()}
    render(results, docs)
    assert docs.read_text() == text
    assert {p.name: p.read_bytes() for p in (docs.parent / "results").iterdir()} == before


def test_an_original_that_differs_from_itself_is_reported(tmp_path: Path) -> None:
    results = _results(tmp_path, flaky_original=True)
    docs = tmp_path / "docs" / "results.md"
    docs.parent.mkdir()
    render(results, docs)
    text = docs.read_text()
    assert "original differs between its runs" in text
    assert "| 5/5 |" not in text


def test_charts_of_data_no_longer_there_are_removed(tmp_path: Path) -> None:
    results = _results(tmp_path)
    docs = tmp_path / "docs" / "results.md"
    docs.parent.mkdir()
    render(results, docs)
    assert (docs.parent / "results" / "time.png").exists()
    (results / "runs.jsonl").unlink()  # the runs are measured again
    render(results, docs)
    charts = sorted(p.name for p in (docs.parent / "results").iterdir())
    assert charts == ["pareto.png", "removed_kind.png", "sizes.png"]
    assert "## Time, memory and outputs" not in docs.read_text()
    assert "as in the table above" not in docs.read_text()


@pytest.mark.parametrize(
    ("ours", "theirs", "word"),
    [
        (-60.0, (-55.0, -55.0), "ahead"),
        (-55.04, (-55.0, -55.0), "same"),  # equal as shown, to 0.1%
        (-50.0, (-55.0, -55.0), "behind"),
        (-10.0, (-20.0, -8.0), "within their range"),
        (-7.9, (-20.0, -8.0), "behind"),
        (-0.04, (0.0, 0.0), "same"),
    ],
)
def test_a_change_is_ahead_when_it_removes_more(
    ours: float, theirs: tuple[float, float], word: str
) -> None:
    assert verdict(ours, theirs) == word


def test_a_measure_that_was_zero_gets_no_verdict(tmp_path: Path) -> None:
    results = _results(tmp_path, gpu_bytes=0.0)  # the process held no GPU memory
    docs = tmp_path / "docs" / "results.md"
    docs.parent.mkdir()
    render(results, docs)
    assert "| peak GPU memory (EAGER) | -69.6% | - | - |" in docs.read_text()


def test_host_code_of_loaded_and_never_loaded_libraries() -> None:
    sizes = {"variants": {
        "original": {"libraries": {"a.so": [9, 4_000_000, 0, 0], "b.so": [9, 1_000_000, 0, 0],
                                   "c.so": [9, 2_000_000, 0, 0]}},
        "+cpu": {"libraries": {"a.so": [9, 1_000_000, 3, 1], "b.so": [9, 1_000_000, 0, 0],
                               "c.so": [9, 500_000, 1, 1]}},
    }}  # fmt: skip
    assert host_by_loading(sizes, {"loaded": ["a.so", "c.so"]}) == (
        "Host code with `+cpu`: in the 2 libraries the workload loaded, 6.0 MB -> 1.5 MB "
        "(-75.0%); in the 1 it never loaded, 1.0 MB -> 1.0 MB (+0.0%): `--cpu` removes host "
        "code only from libraries a profile saw run."
    )


def test_committed_results_md_is_rendered_from_the_committed_json(tmp_path: Path) -> None:
    """docs/results.md is never edited by hand: rendering the committed raw JSON
    gives its bytes, and every committed run's output is the original's."""
    from bench.report_render import charts, document, load

    repo = Path(__file__).resolve().parents[2]
    results = repo / "bench" / "results" / "gpu-report"
    data = load(results)
    made = charts(data, tmp_path / "results")
    assert sorted(made) == sorted(p.name for p in (repo / "docs" / "results").glob("*.png"))
    text = document(data, made, "bench/results/gpu-report")
    assert text == (repo / "docs" / "results.md").read_text()
    digests: dict[str, set[str]] = {}
    for line in (results / "runs.jsonl").read_text().splitlines():
        run = json.loads(line)
        assert run["rc"] == 0
        digests.setdefault(run["workload"], set()).add(run["digest"])
    assert all(len(d) == 1 for d in digests.values()), digests


def test_the_host_rules_of_the_measurement_are_named() -> None:
    from bench.report_render import host_rules_text
    from slimwheel.hostcode import MAX_HOST_HOLES
    from slimwheel.layout import DEFAULT_HOST_MIN_HOLE

    now = host_rules_text({"host_holes": [DEFAULT_HOST_MIN_HOLE, MAX_HOST_HOLES]})
    assert now.endswith("(slimwheel's defaults).")
    assert f"from {DEFAULT_HOST_MIN_HOLE >> 10} KiB" in now
    old = host_rules_text({"host_holes": [65536, 256]})
    assert "from 64 KiB, at most 256 per library; slimwheel's defaults are now" in old
    assert "remove more host code than these tables show" in old
    assert "not recorded" in host_rules_text(None)
    assert "not recorded" in host_rules_text({"cache": "cold"})
