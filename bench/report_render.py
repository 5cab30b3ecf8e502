"""docs/results.md and its charts, from the raw JSON of bench/gpu_report.py.

Never edit the output by hand: ``python bench/gpu_report.py render`` writes
it again from ``bench/results/gpu-report/``. Same JSON in, same bytes out
(charts without timestamps). What a step has not measured yet is said, not
guessed.
"""

from __future__ import annotations

import json
import statistics
from collections import defaultdict
from pathlib import Path
from typing import Any

from bench.gpu_report import MODES, VARIANTS
from slimwheel.plan import Reason

#: Removed because no target GPU loads them (the rest: unused by the workload's profile).
ARCH_REASONS = tuple(r.value for r in (Reason.WRONG_ARCH, Reason.SUPERSEDED, Reason.PTX_NOT_NEEDED))
# The research tool (Negativa-ML, CUDA 12, T4 and H100), PyTorch MobileNetV2 inference.
GOALS = {
    "total file size": -55.0,
    "device code": -75.0,
    "host code": -72.0,
    "peak CPU memory (EAGER)": -74.6,
    "peak GPU memory (EAGER)": -69.6,
    "time (EAGER)": -44.6,
}
CHART_DIR = "results"


def mb(n: float) -> str:
    return f"{n / 1e6:,.1f} MB"


def pct(new: float, old: float) -> str:
    return f"{(new / old - 1) * 100:+.1f}%" if old else "-"


def load(results: Path) -> dict[str, Any]:
    def each(sub: str) -> dict[str, Any]:
        d = results / sub
        return (
            {p.stem: json.loads(p.read_text()) for p in sorted(d.glob("*.json"))}
            if d.is_dir()
            else {}
        )

    runs = []
    if (results / "runs.jsonl").exists():
        for ln in (results / "runs.jsonl").read_text().splitlines():
            try:
                runs.append(json.loads(ln))
            except ValueError:
                continue  # half a line from a killed run: measured again on resume
    sim = results / "similarity.json"
    machine = results / "machine.json"
    method = results / "method.json"
    return {
        "machine": json.loads(machine.read_text()) if machine.exists() else None,
        "method": json.loads(method.read_text()) if method.exists() else None,
        "profiles": sorted(
            p.stem for p in (results / "profiles").glob("*.json") if "." not in p.stem
        )
        if (results / "profiles").is_dir()
        else [],
        "recording": {
            p.name.split(".")[0]: json.loads(p.read_text())
            for p in (results / "profiles").glob("*.seconds.json")
        }
        if (results / "profiles").is_dir()
        else {},
        "skipped": {
            p.stem: json.loads(p.read_text()) for p in (results / "profiles").glob("*.skipped")
        }
        if (results / "profiles").is_dir()
        else {},
        "analysis": each("analysis"),
        "sizes": each("sizes"),
        "similarity": json.loads(sim.read_text()) if sim.exists() else None,
        "runs": runs,
    }


# -- tables -----------------------------------------------------------------------


def size_rows(sizes: dict[str, Any]) -> dict[str, dict[str, int]]:
    """variant -> totals: file bytes, host code (the executable sections left in the
    files), host code removed and functions removed (from the libraries' notes)."""
    out = {}
    for v, doc in sizes["variants"].items():
        libs = doc["libraries"].values()
        out[v] = {
            "files": len(doc["libraries"]),
            "bytes": sum(x[0] for x in libs),
            "host": sum(x[1] for x in libs),
            "host_removed": sum(x[2] for x in libs),
            "functions_removed": sum(x[3] for x in libs),
        }
    return out


def device_totals(analysis: dict[str, Any]) -> dict[str, int]:
    t: dict[str, int] = defaultdict(int)
    for lib in analysis["libraries"].values():
        t["bytes"] += lib["device_bytes"]
        t["elements"] += lib["elements"]
        for reason, (n, b) in lib["removed"].items():
            kind = (
                "arch"
                if reason in ARCH_REASONS
                else "unused"
                if reason == Reason.NOT_USED.value
                else reason
            )
            t[f"{kind}_elements"] += n
            t[f"{kind}_bytes"] += b
        h = lib["host"]
        if h:
            t["host_seen_bytes"] += h["bytes"]
            t["host_seen_functions"] += h["functions"]
            t["host_seen_removable_functions"] += h["removable_functions"]
    return dict(t)


def table_sizes(data: dict[str, Any]) -> list[str]:
    lines = [
        "| workload | ELF files (loaded) | variant | total file size "
        "| host code (functions removed) "
        "| device code (elements) |",
        "|---|---|---|---|---|---|",
    ]
    for w, sizes in sorted(data["sizes"].items()):
        rows = size_rows(sizes)
        a = data["analysis"].get(w)
        dev = device_totals(a) if a else None
        o = rows["original"]
        for v in VARIANTS:
            r = rows.get(v)
            if r is None:
                continue
            files = f"{r['files']} ({len(a['loaded'])})" if a and v == "original" else ""
            left = r["host"]  # a slimmed file's executable sections are what is left
            host = f"{mb(left)} ({pct(left, o['host'])}"
            host += f", {r['functions_removed']:,})" if r["functions_removed"] else ")"
            if dev is None:
                devc = "-"
            else:
                left_b, left_n = dev["bytes"], dev["elements"]
                if v != "original":
                    left_b -= dev.get("arch_bytes", 0)
                    left_n -= dev.get("arch_elements", 0)
                if v not in ("original", "arch"):
                    left_b -= dev.get("unused_bytes", 0)
                    left_n -= dev.get("unused_elements", 0)
                devc = f"{mb(left_b)} ({pct(left_b, dev['bytes'])}), "
                devc += f"{left_n:,} ({pct(left_n, dev['elements'])})"
            lines.append(
                f"| {w if v == 'original' else ''} | {files} | {v} | {mb(r['bytes'])} "
                f"({pct(r['bytes'], o['bytes'])}) | {host} | {devc} |"
            )
    return lines


def table_largest(data: dict[str, Any]) -> list[str]:
    lines = [
        "| workload | library | " + " | ".join(VARIANTS) + " |",
        "|---" * (len(VARIANTS) + 2) + "|",
    ]
    for w, sizes in sorted(data["sizes"].items()):
        orig = sizes["variants"]["original"]["libraries"]
        name = max(orig, key=lambda k: (orig[k][0], k))
        cells = []
        for v in VARIANTS:
            lib = sizes["variants"].get(v, {}).get("libraries", {}).get(name)
            cells.append(f"{mb(lib[0])} ({pct(lib[0], orig[name][0])})" if lib else "-")
        lines.append(f"| {w} | {name.rsplit('/', 1)[-1]} | " + " | ".join(cells) + " |")
    return lines


def table_removed_kind(data: dict[str, Any]) -> list[str]:
    lines = [
        "| workload | device bytes removed | wrong arch | unused by the workload |",
        "|---|---|---|---|",
    ]
    for w, a in sorted(data["analysis"].items()):
        t = device_totals(a)
        arch, unused = t.get("arch_bytes", 0), t.get("unused_bytes", 0)
        total = arch + unused
        if total:
            lines.append(
                f"| {w} | {mb(total)} | {mb(arch)} ({arch / total:.1%}) "
                f"| {mb(unused)} ({unused / total:.1%}) |"
            )
    return lines


def table_similarity(sim: dict[str, Any], what: str) -> list[str]:
    ws = sim["workloads"]
    lines = ["| " + what + " | " + " | ".join(ws) + " |", "|---" * (len(ws) + 1) + "|"]
    for i, w in enumerate(ws):
        cells = ["-" if x is None else f"{x:.2f}" for x in sim[what]["jaccard"][i]]
        lines.append(f"| {w} ({sim[what]['counts'][i]:,}) | " + " | ".join(cells) + " |")
    return lines


def run_groups(runs: list[dict[str, Any]]) -> dict[tuple[str, str, str], list[dict[str, Any]]]:
    g: dict[tuple[str, str, str], list[dict[str, Any]]] = defaultdict(list)
    for r in runs:
        g[(r["workload"], r["mode"], r["variant"])].append(r)
    return g


def identity(group: list[dict[str, Any]], reference: list[dict[str, Any]]) -> str:
    ref = {r.get("digest") for r in reference if r["rc"] == 0}
    ok = [r for r in group if r["rc"] == 0]
    if len(ref) != 1:
        return "original differs between its runs" if ref else "-"
    (digest,) = ref
    same = sum(1 for r in ok if r["digest"] == digest)
    failed = len(group) - len(ok)
    text = f"{same}/{len(group)}"
    return text + (f" ({failed} failed)" if failed else "")


def values(runs: list[dict[str, Any]], key: str) -> list[float]:
    """``key`` of the runs that succeeded and measured it (no GPU memory without NVML)."""
    return [float(r[key]) for r in runs if r["rc"] == 0 and r.get(key) is not None]


def spread(values: list[float], unit: float, fmt: str) -> str:
    if not values:
        return "-"
    med = statistics.median(values)
    lo, hi = format(min(values) / unit, fmt), format(max(values) / unit, fmt)
    return f"{format(med / unit, fmt)} [{lo}-{hi}]"


COLUMNS = (
    ("wall_s", 1.0, ".2f"),
    ("import_s", 1.0, ".2f"),
    ("first_s", 1.0, ".2f"),
    ("rss_bytes", 1e6, ",.0f"),
    ("gpu_process_bytes", 1e6, ",.0f"),
)


def change(vals: list[float], base: list[float]) -> str:
    """The median's change against ``base``'s, marked ``*`` when the two ranges
    [min-max] overlap: a change the run-to-run spread could make alone."""
    new, old = statistics.median(vals), statistics.median(base)
    overlap = min(vals) <= max(base) and min(base) <= max(vals)
    return pct(new, old) + ("*" if overlap and new != old else "")


def measure(
    ok: list[dict[str, Any]], base: list[dict[str, Any]], key: str, unit: float, fmt: str
) -> str:
    """Median [min-max] of ``key`` over the runs, and the median's change against ``base``."""
    vals = values(ok, key)
    cell = spread(vals, unit, fmt)
    if vals and base:
        old = values(base, key)
        if old:
            cell += " " + change(vals, old)
    return cell


def table_runs(data: dict[str, Any]) -> list[str]:
    g = run_groups(data["runs"])
    lines = [
        "| workload | mode | variant | runs | wall time (s) | import torch (s) "
        "| first CUDA result (s) | peak RSS (MB) | peak GPU memory (MB) "
        "| outputs identical to the original |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for w in sorted({k[0] for k in g}):
        for mode in MODES:
            ref = g.get((w, mode, "original"), [])
            for v in VARIANTS:
                group = g.get((w, mode, v))
                if not group:
                    continue
                ok = [r for r in group if r["rc"] == 0]
                base = [r for r in ref if r["rc"] == 0]
                cells = [
                    measure(ok, base if v != "original" else [], key, unit, fmt)
                    for key, unit, fmt in COLUMNS
                ]
                lines.append(
                    f"| {w} | {mode} | {v} | {len(group)} | "
                    + " | ".join(cells)
                    + f" | {identity(group, ref)} |"
                )
    return lines


#: The research tool's results under lazy loading (H100), as ranges of the change in percent.
#: "About 0%" is taken as within 1% either way.
LAZY_GOALS = {
    "peak CPU memory (LAZY)": ("about 0% (H100)", (-1.0, 1.0)),
    "peak GPU memory (LAZY)": ("about 0% (H100)", (-1.0, 1.0)),
    "time (LAZY)": ("-8% to -20% (H100)", (-20.0, -8.0)),
}


def change_pct(new: float, old: float) -> float | None:
    """The change from ``old`` to ``new`` in percent; None from nothing."""
    return (new / old - 1) * 100 if old else None


def verdict(ours: float, theirs: tuple[float, float]) -> str:
    """Where a change (percent, lower is better) stands against the research tool's
    (lo, hi): ahead below it, behind above it; compared at the 0.1% shown."""
    ours = round(ours, 1)
    lo, hi = theirs
    if ours < lo:
        return "ahead"
    if ours > hi:
        return "behind"
    return "same" if lo == hi else "within their range"


def goals(data: dict[str, Any], workload: str = "mobilenet_v2-infer") -> list[str]:
    """The goals table, each of slimwheel's changes marked ahead or behind, and a
    sentence naming the measures where slimwheel (+cpu) is ahead and behind."""
    lines = [
        "| measure | the research tool | slimwheel (+cpu) | slimwheel (+strip) |",
        "|---|---|---|---|",
    ]
    sizes, a = data["sizes"].get(workload), data["analysis"].get(workload)
    g = run_groups(data["runs"])
    ours: dict[str, dict[str, tuple[float | None, str]]] = defaultdict(dict)  # value, shown
    if sizes:
        rows = size_rows(sizes)
        for v in ("+cpu", "+strip"):
            r = rows.get(v)
            if r:
                o = rows["original"]
                for name, key in (("total file size", "bytes"), ("host code", "host")):
                    ours[name][v] = (change_pct(r[key], o[key]), pct(r[key], o[key]))
    if a:
        t = device_totals(a)
        left = t["bytes"] - t.get("arch_bytes", 0) - t.get("unused_bytes", 0)
        for v in ("+cpu", "+strip"):
            ours["device code"][v] = (change_pct(left, t["bytes"]), pct(left, t["bytes"]))
    for name, key in (
        ("peak CPU memory", "rss_bytes"),
        ("peak GPU memory", "gpu_process_bytes"),
        ("time", "wall_s"),
    ):
        for mode in MODES:
            base = values(g.get((workload, mode, "original"), []), key)
            for v in ("+cpu", "+strip"):
                vals = values(g.get((workload, mode, v), []), key)
                if base and vals:
                    value = change_pct(statistics.median(vals), statistics.median(base))
                    ours[f"{name} ({mode})"][v] = (value, change(vals, base))
    where: dict[str, list[str]] = defaultdict(list)
    for name in [*GOALS, *LAZY_GOALS]:
        if name in GOALS:
            theirs, span = f"{GOALS[name]:+.1f}%", (GOALS[name], GOALS[name])
        else:
            theirs, span = LAZY_GOALS[name]
        cells = []
        for v in ("+cpu", "+strip"):
            if v not in ours[name]:
                cells.append("not measured")
                continue
            value, shown = ours[name][v]
            if value is None:  # nothing to compare with
                cells.append(shown)
                continue
            word = verdict(value, span)
            cells.append(f"{shown} ({word})")
            if v == "+cpu":
                where[word].append(name)
        lines.append(f"| {name} | {theirs} | {cells[0]} | {cells[1]} |")
    if where:
        said = [
            f"{word} on {', '.join(where[word])}"
            for word in ("ahead", "within their range", "same", "behind")
            if where[word]
        ]
        lines += ["", "Against the research tool, slimwheel (+cpu) is " + "; ".join(said) + "."]
    if sizes and a and "+cpu" in sizes["variants"]:
        lines += ["", host_by_loading(sizes, a)]
    return lines


def host_by_loading(sizes: dict[str, Any], analysis: dict[str, Any], variant: str = "+cpu") -> str:
    """A sentence on the host code ``variant`` leaves in the libraries the workload
    loaded and in those it never loaded (``--cpu`` leaves the latter whole)."""
    loaded = set(analysis["loaded"])
    before = sizes["variants"]["original"]["libraries"]
    after = sizes["variants"][variant]["libraries"]
    n = {True: 0, False: 0}
    old = {True: 0, False: 0}
    new = {True: 0, False: 0}
    for rel, row in before.items():
        k = rel in loaded
        n[k] += 1
        old[k] += row[1]
        new[k] += after.get(rel, row)[1]
    return (
        f"Host code with `{variant}`: in the {n[True]} libraries the workload loaded, "
        f"{mb(old[True])} -> {mb(new[True])} ({pct(new[True], old[True])}); in the "
        f"{n[False]} it never loaded, {mb(old[False])} -> {mb(new[False])} "
        f"({pct(new[False], old[False])}): `--cpu` removes host code only from libraries a "
        "profile saw run."
    )


def status(data: dict[str, Any], runs_wanted: int = 5) -> list[str]:
    out = []
    for w in sorted(set(data["profiles"]) | set(data["skipped"])):
        if w in data["skipped"]:
            out.append(f"- {w}: not run ({data['skipped'][w].get('skipped', 'skipped')})")
            continue
        g = run_groups([r for r in data["runs"] if r["workload"] == w])
        n = {(m, v): len(g.get((w, m, v), [])) for m in MODES for v in VARIANTS}
        least = min(n.values())
        rec = data["recording"].get(w)
        parts = ["profile"]
        if rec:
            parts = [
                "profile (recorded in "
                + ", ".join(f"{s:.0f} s {m}" for m, s in sorted(rec.items()))
                + ")"
            ]
        parts += ["analysis"] if w in data["analysis"] else []
        parts += ["sizes"] if w in data["sizes"] else []
        out.append(
            f"- {w}: {', '.join(parts)}; runs: at least {least} of {runs_wanted} per mode "
            f"and variant ({sum(n.values())} in all)"
        )
    return out or ["- nothing measured yet"]


# -- charts -----------------------------------------------------------------------


def charts(data: dict[str, Any], where: Path) -> list[str]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    made = []

    def save(fig: Any, name: str) -> None:
        where.mkdir(parents=True, exist_ok=True)
        fig.tight_layout()
        fig.savefig(where / name, dpi=110, metadata={"Software": None})
        plt.close(fig)
        made.append(name)

    sizes = data["sizes"]
    if sizes:
        ws = sorted(sizes)
        fig, ax = plt.subplots(figsize=(9, 4))
        width = 0.8 / len(VARIANTS)
        for i, v in enumerate(VARIANTS):
            ys = [size_rows(sizes[w]).get(v, {}).get("bytes", 0) / 1e9 for w in ws]
            ax.bar([k + i * width for k in range(len(ws))], ys, width, label=v)
        ax.set_xticks([k + 0.4 - width / 2 for k in range(len(ws))], ws, rotation=15)
        ax.set_ylabel("GB of ELF files")
        ax.set_title("Total file size of the stack's libraries per variant")
        ax.legend()
        save(fig, "sizes.png")
        w = "mobilenet_v2-infer" if "mobilenet_v2-infer" in sizes else ws[0]
        orig = sizes[w]["variants"]["original"]["libraries"]
        last = sizes[w]["variants"].get("+strip", sizes[w]["variants"]["original"])["libraries"]
        removed = sorted(((orig[k][0] - last[k][0], k) for k in orig), reverse=True)
        removed = [(b, k) for b, k in removed if b > 0][:25]
        if removed:
            total = sum(orig[k][0] - last[k][0] for k in orig)
            fig, ax = plt.subplots(figsize=(9, 4.5))
            ax.bar(range(len(removed)), [b / 1e6 for b, _k in removed])
            ax.set_xticks(
                range(len(removed)),
                [k.rsplit("/", 1)[-1] for _b, k in removed],
                rotation=75,
                fontsize=7,
            )
            ax.set_ylabel("MB removed (original -> +strip)")
            cum, run = [], 0
            for b, _k in removed:
                run += b
                cum.append(100 * run / total)
            ax2 = ax.twinx()
            ax2.plot(range(len(removed)), cum, color="black", marker=".")
            ax2.set_ylabel("% of all bytes removed (cumulative)")
            ax2.set_ylim(0, 100)
            ax.set_title(f"Bytes removed per library, {w} (Pareto)")
            save(fig, "pareto.png")
    if data["analysis"]:
        ws = sorted(data["analysis"])
        t = [device_totals(data["analysis"][w]) for w in ws]
        fig, ax = plt.subplots(figsize=(8, 3.5))
        arch = [x.get("arch_bytes", 0) / 1e6 for x in t]
        unused = [x.get("unused_bytes", 0) / 1e6 for x in t]
        ax.bar(ws, arch, label="wrong arch")
        ax.bar(ws, unused, bottom=arch, label="unused by the workload")
        ax.set_ylabel("MB of device code removed")
        ax.tick_params(axis="x", rotation=15)
        ax.legend()
        save(fig, "removed_kind.png")
    g = run_groups(data["runs"])
    if g:
        ws = sorted({k[0] for k in g})
        for key, unit, label, name in (
            ("wall_s", 1, "wall time (s)", "time.png"),
            ("rss_bytes", 1e6, "peak RSS (MB)", "rss.png"),
            ("gpu_process_bytes", 1e6, "peak GPU memory (MB)", "gpu_memory.png"),
        ):
            if not any(values(rs, key) for rs in g.values()):
                continue  # not measured (GPU memory without NVML)
            fig, axes = plt.subplots(1, len(MODES), figsize=(11, 4), sharey=True)
            width = 0.8 / len(VARIANTS)
            for ax, mode in zip(axes, MODES, strict=True):
                for i, v in enumerate(VARIANTS):
                    meds, lo, hi = [], [], []
                    for w in ws:
                        vals = [x / unit for x in values(g.get((w, mode, v), []), key)]
                        m = statistics.median(vals) if vals else 0.0
                        meds.append(m)
                        lo.append(m - min(vals) if vals else 0.0)
                        hi.append(max(vals) - m if vals else 0.0)
                    ax.bar(
                        [k + i * width for k in range(len(ws))],
                        meds,
                        width,
                        yerr=[lo, hi],
                        capsize=2,
                        label=v,
                    )
                ax.set_xticks(
                    [k + 0.4 - width / 2 for k in range(len(ws))], ws, rotation=20, fontsize=7
                )
                ax.set_title(f"CUDA_MODULE_LOADING={mode}")
            axes[0].set_ylabel(label + ", median and range")
            axes[0].legend(fontsize=7)
            save(fig, name)
    return made


# -- the document -----------------------------------------------------------------


def cache_text(data: dict[str, Any]) -> str:
    """What the page cache held when a run started (gpu_report.py evicts first)."""
    kinds = sorted({str(r.get("cache", "not recorded")) for r in data["runs"]})
    said = {
        "cold": "every run was a cold start: the variant's files were evicted from the"
        " page cache (POSIX_FADV_DONTNEED) just before it, so its time includes reading"
        " them from disk",
    }
    text = "; ".join(said.get(k, f"page cache: {k}") for k in kinds)
    return (
        "Page cache: " + text + ". Python and the packages outside torch/ and nvidia/ were"
        " cached for every variant alike. (The state matters: the kernel maps a file just"
        " written in large write() calls from large folios, many pages per fault, so the same"
        " pages touched read as more RSS.)"
    )


def host_rules_text(method: dict[str, Any] | None) -> str:
    """Which holes ``+cpu`` took in host code, and whether slimwheel's defaults differ now."""
    from slimwheel.policy import host_rules

    rules = (method or {}).get("host_holes")
    if rules is None:
        return "The host-code rules of `+cpu` (smallest hole, holes per library) were not recorded."
    smallest, most = rules
    text = (
        f"`+cpu` took out runs of removed host code from {smallest >> 10} KiB, at most"
        f" {most:,} per library"
    )
    now_smallest, now_most = host_rules()
    if [smallest, most] == [now_smallest, now_most]:
        return text + " (slimwheel's defaults)."
    return (
        text + f"; slimwheel's defaults are now {now_smallest >> 10} KiB and"
        f" {now_most:,}, which remove more host code than these tables show"
        " (`bench/bench_host_holes.py` measures how much)."
    )


def document(data: dict[str, Any], chart_names: list[str], results_rel: str) -> str:
    m = data["machine"]
    m_ = data["method"]
    out = [
        "# slimwheel on a GPU: sizes, memory, time",
        "",
        f"Generated by `python bench/gpu_report.py render` from the raw JSON in `{results_rel}/`;"
        " do not edit by hand. The measurements come from `python bench/gpu_report.py run` on the"
        " machine below (it resumes where a budget stopped it).",
        "",
        "## Machine",
        "",
    ]
    if m:
        out += [
            f"- GPU: {m['gpu']} ({m['gpus']}x, {mb(m['memory_bytes'])}), driver {m['driver']}, "
            f"CUDA runtime {m['cuda_runtime']}",
            f"- CPU: {m['cpu']}, {m['cores']} cores; Linux {m['kernel']}, glibc {m['glibc']}, "
            f"Python {m['python']}",
            "- " + ", ".join(f"{k} {v}" for k, v in sorted(m["versions"].items())),
            f"- measured {m['measured_at']}",
        ]
    else:
        out.append("- not measured yet")
    out += ["", "## What has been measured", "", *status(data), ""]
    if data["sizes"]:
        out += [
            "## Sizes per workload (the research tool's Tables 2 and 3)",
            "",
            "ELF files of the copied torch/ and nvidia/ packages; host code is their executable"
            " sections; device code is the fatbin elements (`slimwheel inspect`). Each slim"
            " variant adds to the one before it: `arch` keeps what the driver loads on this GPU,"
            " `+profile` drops what the workload's profile never used, `+cpu` removes the host"
            " functions it never ran, `+strip` the debug info and static symbol tables. "
            + host_rules_text(m_),
            "",
            *table_sizes(data),
            "",
            "The largest library alone:",
            "",
            *table_largest(data),
            "",
        ]
    if data["analysis"]:
        out += [
            "## Device code removed: wrong arch or unused (their Figure 7)",
            "",
            *table_removed_kind(data),
            "",
        ]
    if data["similarity"]:
        out += [
            "## How much workloads share (their Table 4)",
            "",
            "Jaccard similarity of the kernels launched (count in brackets):",
            "",
            *table_similarity(data["similarity"], "kernels"),
            "",
            "and of the host functions run:",
            "",
            *table_similarity(data["similarity"], "functions"),
            "",
        ]
    if data["runs"]:
        out += [
            "## Time, memory and outputs",
            "",
            "Each run is a fresh process; variants interleaved. Median [min-max], and the"
            " change of the median against the original; `*` marks a change whose range"
            " overlaps the original's, one the run-to-run spread could make alone. Peak RSS"
            " from wait4; peak GPU memory from NVML for the process"
            + (f", sampled every {m_['nvml_period_s'] * 1000:.0f} ms" if m_ else "")
            + ". Outputs are the digest of logits, the loss curve and final weights, or the"
            " generated tokens.",
            "",
            cache_text(data),
            "",
            *table_runs(data),
            "",
        ]
    if data["sizes"] or data["runs"]:
        out += [
            "## Against the research tool's goals (PyTorch MobileNetV2 inference)",
            "",
            "The research tool's numbers are from its paper (CUDA 12, a T4 and an H100);"
            " slimwheel's from the machine above. A change is ahead when it removes more.",
            "",
            *goals(data),
            "",
        ]
        if data["runs"]:
            out += [
                "Times and memory are medians against the original's; `*`: the two ranges"
                " overlap, as in the table above.",
                "",
            ]
    if chart_names:
        out += ["## Charts", ""]
        out += [f"![{n[:-4]}]({CHART_DIR}/{n})" for n in chart_names]
        out.append("")
    out += [
        "## Commands",
        "",
        "```sh",
        "pip install nvidia-ml-py transformers   # NVML; the language model (else skipped)",
        "python bench/gpu_report.py run --budget 540   # repeat until it prints 'all steps done'",
        "python bench/gpu_report.py render",
        "```",
        "",
    ]
    return "\n".join(out)


def render(results: Path, docs: Path) -> None:
    data = load(results)
    where = docs.parent / CHART_DIR
    made = charts(data, where)
    for stale in sorted(where.glob("*.png")) if where.is_dir() else []:
        if stale.name not in made:  # a chart of data no longer there
            stale.unlink()
    try:
        rel = str(results.resolve().relative_to(docs.resolve().parent.parent))
    except ValueError:
        rel = str(results)
    docs.write_text(document(data, made, rel))
    print(f"wrote {docs} and {len(made)} charts")
