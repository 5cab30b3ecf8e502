"""The research tool's measurements on a GPU, for slimwheel: sizes, memory, time, identity.

    python bench/gpu_report.py run [--results DIR] [--workdir DIR] [--runs 5]
                                   [--budget SECONDS] [--workloads A,B,...] [--jobs N]
    python bench/gpu_report.py render [--results DIR] [--docs docs/results.md]
    python bench/gpu_report.py smoke [--runs 2]   # the workloads alone, unslimmed

``run`` needs an NVIDIA GPU, the installed torch + nvidia-* stack and
nvidia-ml-py. It never touches the installed environment: it copies torch/
and nvidia/ into venvs under ``--workdir`` (tests/gpu/test_slim_env_gpu.py's
``venv_copy``) and slims the copies with ``slimwheel slim-env``, in these
variants:

    original | arch (--arch native) | +profile (the workload's profile)
    | +cpu (the profile with --cpu) | +strip (the same with --strip)

``original`` and ``arch`` are shared by the workloads; the other three are
made per workload from its own profile, as the research tool slims per
workload. The steps, each written to ``--results`` when it is done, so a run
stopped by ``--budget`` (or killed) resumes where it stopped:

1. ``machine.json``: GPU, driver, CPU, kernel, torch, the stack's fingerprint
   (results of another stack are refused);
2. ``profiles/W.json``: ``slimwheel profile`` (device and host code) of
   workload W under LAZY and under EAGER, merged;
3. ``analysis/W.json``: ``slimwheel inspect --arch native --profile --cpu
   --elements`` of the original, per library: device code bytes and
   elements, removed ones by reason (wrong arch or unused: the research
   tool's Figure 7), host code and functions; ``similarity.json``: Jaccard
   similarity of the kernels launched and the host functions run between
   workloads (their Table 4);
4. ``sizes/W.json``: file bytes, host code and removed host code per library
   in each variant, and slim-env's seconds;
5. ``runs.jsonl``: each workload in each variant under
   ``CUDA_MODULE_LOADING=LAZY`` and ``EAGER``, ``--runs`` rounds, variants
   interleaved (their order rotates per round): wall time, time to the first
   CUDA result, peak RSS (wait4), peak GPU memory from NVML (bench/gpu_memory.py),
   the outputs' digest. One line per run, appended and synced.

The page cache is part of what a run measures: the kernel maps a file just
written in large write() calls (a slimmed library: slimwheel writes 8 MB at a
time) from large folios, many pages per fault, so the same pages touched read
as more RSS (bench/bench_page_cache.py: ``import torch`` maps 6.7 MB of
libtorch_cuda.so's text after a cold start, 20.2 MB right after slim-env). So every run
starts from the same state, a cold start: the variant's files are evicted
(``POSIX_FADV_DONTNEED``) just before it. ``method.json`` records how runs are
measured (with the host-code rules of ``--cpu``: the smallest hole and the most
holes per library); a results directory measured another way is refused.

``render`` turns the raw JSON into ``docs/results.md`` and PNG charts
(bench/report_render.py, matplotlib); it runs anywhere.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import platform
import shutil
import stat
import subprocess
import sys
import time
from collections.abc import Iterator
from concurrent.futures import ProcessPoolExecutor, ThreadPoolExecutor
from pathlib import Path
from typing import Any, ClassVar

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

WORKLOADS = (
    "mobilenet_v2-infer",
    "mobilenet_v2-train",
    "transformer-infer",
    "transformer-train",
    "llama-generate",
)
VARIANTS = ("original", "arch", "+profile", "+cpu", "+strip")
MODES = ("LAZY", "EAGER")
FLAGS = {
    "arch": (),
    "+profile": ("--profile", "{profile}"),
    "+cpu": ("--profile", "{profile}", "--cpu"),
    "+strip": ("--profile", "{profile}", "--cpu", "--strip"),
}
RUNNER = REPO / "bench" / "report_workloads.py"
DEFAULT_RESULTS = REPO / "bench" / "results" / "gpu-report"
SKIPPED = 3  # report_workloads.py's exit status for a workload whose library is missing
NVML_PERIOD_S = 0.02  # the GPU memory sampler's period (bench/gpu_memory.py)


class OutOfTime(Exception):
    """The budget does not allow the next step: the next invocation resumes."""


class Clock:
    """Starts a step only if its estimate (the longest seen for its kind) fits."""

    # seen on the H200 (16 cores, torch 2.11): a run 8-19 s, a recording 150 s or more
    DEFAULTS: ClassVar[dict[str, float]] = {
        "copy": 20.0,
        "slim": 45.0,
        "profile": 240.0,
        "analysis": 240.0,
        "run": 20.0,
    }

    def __init__(self, budget: float) -> None:
        self.deadline = time.monotonic() + budget
        self.seen: dict[str, float] = {}

    @contextlib.contextmanager
    def step(self, kind: str, what: str) -> Iterator[None]:
        guess = self.seen.get(kind, self.DEFAULTS[kind])
        if time.monotonic() + guess > self.deadline:
            raise OutOfTime(f"next: {what} (about {guess:.0f} s)")
        start = time.monotonic()
        print(f"[{time.strftime('%H:%M:%S')}] {what}", flush=True)
        yield
        took = time.monotonic() - start
        self.seen[kind] = max(self.seen.get(kind, 0.0), took)


def write_json(path: Path, doc: Any) -> None:
    """Atomically (slimwheel's own writer): a step's file exists only when the step is done."""
    from slimwheel.write import atomic_output

    path.parent.mkdir(parents=True, exist_ok=True)
    with atomic_output(path) as f:
        f.write(json.dumps(doc, indent=1, sort_keys=True).encode() + b"\n")


def slimwheel(*args: str) -> str:
    proc = subprocess.run(
        [sys.executable, "-m", "slimwheel", *args], capture_output=True, text=True, cwd=REPO
    )
    if proc.returncode != 0:
        raise SystemExit(f"slimwheel {' '.join(args)}: {proc.stderr.strip()[-3000:]}")
    return proc.stdout


class Report:
    def __init__(self, args: argparse.Namespace) -> None:
        self.results = Path(args.results)
        self.work = Path(args.workdir)
        self.runs = args.runs
        self.jobs = str(args.jobs)
        self.workloads = [w for w in args.workloads.split(",") if w]
        for w in self.workloads:
            if w not in WORKLOADS:
                raise SystemExit(f"unknown workload {w!r}; one of {', '.join(WORKLOADS)}")
        self.clock = Clock(args.budget)
        self.arch = args.arch
        self.parallel = args.parallel
        self.device = args.device
        self.store = self.work / "store"
        from slimwheel.write import clean_debris

        for d in (self.results, *(self.results / s for s in ("profiles", "analysis", "sizes"))):
            clean_debris(d)  # what a killed run's atomic writes left
        clean_debris(self.results / "profiles" / "parts")

    # -- environments -----------------------------------------------------------

    def env_dir(self, variant: str, workload: str) -> Path:
        if variant in ("original", "arch"):
            return self.work / variant
        return self.work / workload / variant.lstrip("+")

    def env(self, variant: str, workload: str) -> tuple[Path, Path]:
        """(python, site-packages) of a variant, made (copied, slimmed) when missing."""
        from tests.gpu.test_slim_env_gpu import venv_copy
        from tests.helpers import venv_purelib

        where = self.env_dir(variant, workload)
        py = where / "venv" / "bin" / "python"
        ready = where / "ready.json"
        if ready.exists():
            return py, venv_purelib(py)
        shutil.rmtree(where, ignore_errors=True)
        with self.clock.step("copy", f"copy the installed stack to {where}"):
            py, site = venv_copy(where)
        seconds = 0.0
        if variant != "original":
            profile = str(self.results / "profiles" / f"{workload}.json")
            opts = [f.format(profile=profile) for f in FLAGS[variant]]
            with self.clock.step("slim", f"slim-env {variant} for {workload}"):
                t = time.monotonic()
                # No backups (these copies are never restored); a store per workload,
                # removed with its environments (slimmed libraries are GBs each).
                store = self.store if variant == "arch" else self.work / workload / "store"
                slimwheel("slim-env", "--arch", self.arch, *opts, "--python", str(py),
                          "--store", str(store), "--jobs", self.jobs, "--no-backup")  # fmt: skip
                seconds = round(time.monotonic() - t, 1)
        with self.clock.step("copy", f"write back {where}"):
            os.sync()  # the copy's pages, not the first run's time (evict syncs too)
        write_json(ready, {"variant": variant, "seconds": seconds})
        return py, site

    def drop_envs(self, workload: str) -> None:
        shutil.rmtree(self.work / workload, ignore_errors=True)

    # -- 1. machine -------------------------------------------------------------

    def machine(self) -> None:
        from slimwheel.store import file_sha256
        from tests.gpu.test_torch_stack_gpu import installed_site

        site = installed_site()
        key = [site / "torch/lib/libtorch_cuda.so", site / "nvidia/cu13/lib/libcublasLt.so.13"]
        fingerprint = {str(p.relative_to(site)): file_sha256(p) for p in key if p.exists()}
        path = self.results / "machine.json"
        if path.exists():
            old = json.loads(path.read_text())
            if old["stack"] != fingerprint:
                raise SystemExit(
                    f"{path}: results of another stack ({old['stack']}); use another --results"
                )
            return
        import torch  # type: ignore[import-not-found, unused-ignore]

        cpu = next(
            (
                ln.split(":", 1)[1].strip()
                for ln in Path("/proc/cpuinfo").read_text().splitlines()
                if ln.startswith("model name")
            ),
            platform.processor(),
        )
        versions = {}
        for dist in ("torch", "torchvision", "transformers", "nvidia-cublas", "nvidia-cudnn-cu13"):
            with contextlib.suppress(Exception):
                from importlib.metadata import version

                versions[dist] = version(dist)
        write_json(
            path,
            {
                **(gpu_description() if self.device == "cuda" else no_gpu()),
                "cpu": cpu,
                "cores": os.cpu_count(),
                "kernel": platform.release(),
                "glibc": platform.libc_ver()[1],
                "python": platform.python_version(),
                "cuda_runtime": torch.version.cuda,
                "versions": versions,
                "stack": fingerprint,
            },
        )

    # -- 2. profiles ------------------------------------------------------------

    def profiles(self, workloads: list[str]) -> None:
        """Every missing recording (workload x mode), ``--parallel`` at a time: a
        recording can take minutes (with host recording each library's code is read
        again from disk, page by page) and uses the GPU little. Recordings running
        side by side stay page-exact: with userfaultfd write-protect a fault maps only
        its own page, whatever another process cached. Each part is kept in
        ``profiles/parts/`` as it finishes; a workload's two parts are then merged."""
        todo = []
        for w in workloads:
            path = self.results / "profiles" / f"{w}.json"
            if path.exists() or path.with_suffix(".skipped").exists():
                continue
            todo += [(w, m) for m in MODES if not self.part(w, m).exists()]
        for i in range(0, len(todo), self.parallel):  # one step per wave: the budget holds
            wave = todo[i : i + self.parallel]
            py, _site = self.env("original", workloads[0])
            names = ", ".join(f"{w} {m}" for w, m in wave)
            with (
                self.clock.step("profile", f"record {names} side by side"),
                ThreadPoolExecutor(max_workers=len(wave)) as ex,
            ):
                jobs = [ex.submit(self.record, py, w, m) for w, m in wave]
                for w, mode, result in (j.result() for j in jobs):
                    self.recorded(w, mode, result)
        for w in workloads:
            path = self.results / "profiles" / f"{w}.json"
            parts = [self.part(w, m) for m in MODES]
            if path.exists() or not all(x.exists() for x in parts):
                continue
            slimwheel("profile", "merge", *map(str, parts), "-o", str(path))  # atomic
            for x in parts:
                x.unlink()

    def part(self, workload: str, mode: str) -> Path:
        return self.results / "profiles" / "parts" / f"{workload}-{mode}.json"

    def record(self, py: Path, workload: str, mode: str) -> tuple[str, str, dict[str, Any]]:
        part = self.part(workload, mode)
        part.parent.mkdir(parents=True, exist_ok=True)
        out = self.work / f"{workload}-{mode}.out.json"
        tmp = part.with_name(f".{part.name}.tmp")
        cmd = [sys.executable, "-m", "slimwheel", "profile", "-o", str(tmp), "--",
               str(py), str(RUNNER), workload, "--out", str(out),
               "--device", self.device]  # fmt: skip
        t = time.monotonic()
        proc = subprocess.run(
            cmd, env=dict(os.environ, CUDA_MODULE_LOADING=mode), capture_output=True, text=True,
            cwd=REPO,
        )  # fmt: skip
        result: dict[str, Any] = {"rc": proc.returncode, "seconds": round(time.monotonic() - t, 1)}
        if proc.returncode == SKIPPED:
            result["skipped"] = json.loads(out.read_text())
        elif proc.returncode != 0:
            result["error"] = proc.stderr[-3000:]
        else:
            os.replace(tmp, part)
        return workload, mode, result

    def recorded(self, workload: str, mode: str, result: dict[str, Any]) -> None:
        path = self.results / "profiles" / f"{workload}.json"
        if "skipped" in result:
            write_json(path.with_suffix(".skipped"), result["skipped"])
            return
        if "error" in result:
            raise SystemExit(f"profile {workload} {mode}: {result['error']}")
        seconds_file = self.results / "profiles" / f"{workload}.seconds.json"
        seconds = json.loads(seconds_file.read_text()) if seconds_file.exists() else {}
        seconds[mode] = result["seconds"]
        write_json(seconds_file, seconds)

    def available(self, workload: str) -> bool:
        return not (self.results / "profiles" / f"{workload}.skipped").exists()

    # -- 3. analysis ------------------------------------------------------------

    def analysis(self, workloads: list[str]) -> None:
        todo = [w for w in workloads if not (self.results / "analysis" / f"{w}.json").exists()]
        sim = self.results / "similarity.json"
        if not todo and sim.exists():
            return
        _py, site = self.env("original", workloads[0])
        with self.clock.step(
            "analysis", f"inspect the original for {', '.join(todo) or '-'}; similarity"
        ):
            with ProcessPoolExecutor(max_workers=min(len(todo) or 1, os.cpu_count() or 1)) as ex:
                jobs = [(str(site), str(self.results), w, self.arch) for w in todo]
                docs = ex.map(_analyse, jobs)
                for w, doc in zip(todo, docs, strict=True):
                    write_json(self.results / "analysis" / f"{w}.json", doc)
            write_json(sim, similarity(site, self.results, workloads, int(self.jobs)))

    # -- 4. sizes, 5. runs ------------------------------------------------------

    def sizes(self, workload: str) -> None:
        from bench.bench_hostcode import library_sizes

        path = self.results / "sizes" / f"{workload}.json"
        if path.exists():
            return
        doc: dict[str, Any] = {"workload": workload, "variants": {}}
        for v in VARIANTS:
            _py, site = self.env(v, workload)
            ready = json.loads((self.env_dir(v, workload) / "ready.json").read_text())
            doc["variants"][v] = {"seconds": ready["seconds"], "libraries": library_sizes(site)}
        write_json(path, doc)

    def done_runs(self) -> set[tuple[str, str, str, int]]:
        path = self.results / "runs.jsonl"
        done = set()
        if path.exists():
            for line in path.read_text().splitlines():
                with contextlib.suppress(ValueError, KeyError):
                    r = json.loads(line)
                    done.add((r["workload"], r["variant"], r["mode"], r["round"]))
        return done

    def method(self) -> None:
        """How runs are measured, fixed for a results directory (``method.json``)."""
        path = self.results / "method.json"
        from slimwheel.policy import host_rules

        # +cpu and +strip take holes in host code by slimwheel's default rules
        doc = {"cache": "cold", "nvml_period_s": NVML_PERIOD_S, "host_holes": host_rules()}
        if path.exists():
            old = json.loads(path.read_text())
            if old != doc:
                raise SystemExit(
                    f"{path}: these results were measured with {old}, not {doc};"
                    " use another --results"
                )
            return
        write_json(path, doc)

    def measure(self, workload: str) -> None:
        self.method()
        done = self.done_runs()
        gpu = None
        if self.device == "cuda":
            from bench.gpu_memory import GpuMemory

            gpu = GpuMemory(period_s=NVML_PERIOD_S)
        for rnd in range(self.runs):
            order = VARIANTS[rnd % len(VARIANTS) :] + VARIANTS[: rnd % len(VARIANTS)]
            for mode in MODES:
                for v in order:
                    if (workload, v, mode, rnd) in done:
                        continue
                    py, _site = self.env(v, workload)
                    with self.clock.step("run", f"{workload} {v} {mode} round {rnd + 1}"):
                        evict(self.env_dir(v, workload))  # a cold start
                        row = run_once(py, workload, mode, gpu, self.device)
                    row.update(workload=workload, variant=v, mode=mode, round=rnd, cache="cold")
                    append_line(self.results / "runs.jsonl", row)

    def run(self) -> None:
        self.machine()
        self.profiles(self.workloads)
        ready = [w for w in self.workloads if self.available(w)]
        self.analysis(ready)
        for w in ready:
            self.sizes(w)
            self.measure(w)
            self.drop_envs(w)


def gpu_description() -> dict[str, Any]:
    from bench.gpu_memory import GpuMemory

    return GpuMemory.describe()


def no_gpu() -> dict[str, Any]:
    day = time.strftime("%Y-%m-%d", time.gmtime())
    return {"gpu": "none (--device cpu)", "gpus": 0, "driver": "-", "memory_bytes": 0,
            "measured_at": day}  # fmt: skip


def evict(root: Path) -> int:
    """Write back, then drop from the page cache, every regular file under ``root``
    (symlinks not followed, FIFOs never opened); returns how many files. Pages
    a process still maps stay, so call it between runs."""
    os.sync()
    count = 0
    for dirpath, _dirs, files in os.walk(root):
        for name in files:
            path = os.path.join(dirpath, name)
            with contextlib.suppress(OSError):
                if not stat.S_ISREG(os.lstat(path).st_mode):
                    continue
                fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK)
                try:
                    os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
                    count += 1
                finally:
                    os.close(fd)
    return count


def append_line(path: Path, row: dict[str, Any]) -> None:
    """One line, synced; a line a killed run left half-written is ended first (and
    then skipped by readers: that run is measured again)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a+b") as f:
        if f.tell():
            f.seek(-1, os.SEEK_END)
            if f.read(1) != b"\n":
                f.write(b"\n")
        f.write(json.dumps(row, sort_keys=True).encode() + b"\n")
        f.flush()
        os.fsync(f.fileno())


def run_once(py: Path, workload: str, mode: str, gpu: Any, device: str = "cuda") -> dict[str, Any]:
    """One fresh process: its wall time, peak RSS and GPU memory, and what it reported."""
    out = Path(os.environ.get("TMPDIR", "/tmp")) / f"slimwheel-report-{os.getpid()}.json"
    out.unlink(missing_ok=True)
    env = {
        k: v
        for k, v in os.environ.items()
        if k not in ("CUDA_INJECTION64_PATH", "LD_AUDIT", "LD_PRELOAD")
    }
    env["CUDA_MODULE_LOADING"] = mode
    load = os.getloadavg()[0]
    t0 = time.time()
    env["SLIMWHEEL_REPORT_T0"] = repr(t0)
    err = out.with_suffix(".err")
    with open(err, "wb") as errf:  # a file, not a pipe: a chatty process never blocks
        proc = subprocess.Popen(
            [str(py), str(RUNNER), workload, "--out", str(out), "--device", device],
            env=env,
            stdout=subprocess.DEVNULL,
            stderr=errf,
        )
        with gpu.watch(proc.pid) if gpu is not None else contextlib.nullcontext():
            _pid, status, usage = os.wait4(proc.pid, 0)
    wall = time.time() - t0
    rc = os.waitstatus_to_exitcode(status)
    stderr = err.read_text(errors="replace")
    err.unlink()
    row: dict[str, Any] = {
        "rc": rc,
        "wall_s": round(wall, 4),
        "rss_bytes": usage.ru_maxrss * 1024,
        # where the wall time went: on the CPUs, or waiting (disk: major faults; the
        # driver; other processes: the load average before the run)
        "cpu_s": round(usage.ru_utime + usage.ru_stime, 3),
        "major_faults": usage.ru_majflt,
        "load_before": round(load, 2),
        "gpu_process_bytes": gpu.process if gpu else None,
        "gpu_device_bytes": gpu.device if gpu else None,
        "gpu_how": gpu.how if gpu else None,
        "gpu_samples": gpu.samples if gpu else None,
    }
    if rc == 0:
        rep = json.loads(out.read_text())
        row.update(
            first_s=rep["first_s"], import_s=rep["import_s"], work_s=rep["work_s"],
            digest=rep["digest"], detail=rep["detail"],
        )  # fmt: skip
    else:
        row["error"] = stderr.strip().splitlines()[-1][:500] if stderr.strip() else f"exit {rc}"
    out.unlink(missing_ok=True)
    return row


# -- analysis helpers (run in worker processes) ---------------------------------


def _analyse(job: tuple[str, str, str, str]) -> dict[str, Any]:
    site, results, workload, arch = job
    profile = Path(results) / "profiles" / f"{workload}.json"
    doc = json.loads(
        slimwheel(
            "inspect",
            site,
            "--arch",
            arch,
            "--profile",
            str(profile),
            "--cpu",
            "--elements",
            "--json",
            "-q",
        )
    )
    libs: dict[str, Any] = {}
    for lib in doc["libraries"]:
        removed: dict[str, list[int]] = {}
        for el in lib.get("element_list") or []:
            if not el["keep"]:
                r = removed.setdefault(el["reason"], [0, 0])
                r[0] += 1
                r[1] += el["stored_bytes"] + el["header_bytes"]
        libs[lib["name"]] = {
            "file_bytes": lib["file_bytes"],
            "device_bytes": lib["device_code_bytes"],
            "elements": lib["elements"],
            "removed": removed,
            "removable": lib["removable"],
            "host": lib["host_code"],
        }
    prof = json.loads(profile.read_text())
    loaded = sorted(
        {
            e["site_relative"]
            for e in prof["libraries"]
            if e.get("site_relative")
            and e["site_relative"].startswith(("torch/", "nvidia/"))
            and e.get("host")
        }
    )
    return {
        "workload": workload,
        "profile": profile.name,
        "libraries": libs,
        "loaded": loaded,
        "kernels_launched": sum(len(e.get("kernels") or []) for e in prof["libraries"]),
    }


def _functions(job: tuple[str, list[Any]]) -> list[list[int]]:
    """For one library: pairwise |A & B| of the functions each workload ran (the
    diagonal holds |A|)."""
    from slimwheel.elf import open_elf
    from slimwheel.hostcode import executed_functions
    from slimwheel.hostuse import HostUse

    path, hosts = job
    uses = [HostUse.from_json(h, path) if h else HostUse(4096, ()) for h in hosts]
    with open_elf(path) as elf:
        sets = executed_functions(elf, uses)
    return [[len(a & b) for b in sets] for a in sets]


def _jaccard(inter: list[list[int]]) -> list[list[float | None]]:
    n = len(inter)
    out: list[list[float | None]] = []
    for i in range(n):
        row: list[float | None] = []
        for j in range(n):
            union = inter[i][i] + inter[j][j] - inter[i][j]
            row.append(round(inter[i][j] / union, 4) if union else None)
        out.append(row)
    return out


def similarity(site: Path, results: Path, workloads: list[str], jobs: int) -> dict[str, Any]:
    profiles = [json.loads((results / "profiles" / f"{w}.json").read_text()) for w in workloads]
    kernels = [
        {(e["sha256"], k) for e in p["libraries"] for k in e.get("kernels") or []} for p in profiles
    ]
    kinter = [[len(a & b) for b in kernels] for a in kernels]
    by_sha: dict[str, tuple[str, list[Any]]] = {}
    for i, p in enumerate(profiles):
        for e in p["libraries"]:
            rel = e.get("site_relative")
            if not e.get("host") or not rel or not (site / rel).is_file():
                continue
            entry = by_sha.setdefault(e["sha256"], (str(site / rel), [None] * len(profiles)))
            entry[1][i] = e["host"]
    n = len(workloads)
    finter = [[0] * n for _ in range(n)]
    with ProcessPoolExecutor(max_workers=jobs) as ex:
        for m in ex.map(_functions, sorted(by_sha.values(), key=lambda e: e[0])):
            for i in range(n):
                for j in range(n):
                    finter[i][j] += m[i][j]
    return {
        "workloads": workloads,
        "kernels": {"counts": [kinter[i][i] for i in range(n)], "jaccard": _jaccard(kinter)},
        "functions": {"counts": [finter[i][i] for i in range(n)], "jaccard": _jaccard(finter)},
    }


def smoke(workloads: list[str], runs: int, device: str) -> int:
    """Each workload ``runs`` times per mode in the running (installed) Python, nothing
    slimmed: does it run, is its output the same every time, what does a run cost.
    Exit status 1 if a run failed or a digest differed."""
    gpu = None
    if device == "cuda":
        from bench.gpu_memory import GpuMemory

        gpu = GpuMemory(period_s=NVML_PERIOD_S)
    bad = 0
    for w in workloads:
        digests = set()
        for mode in MODES:
            for i in range(runs):
                r = run_once(Path(sys.executable), w, mode, gpu, device)
                digests.add(r.get("digest"))
                mem = f"{r['gpu_process_bytes'] / 2**20:,.0f} MB ({r['gpu_how']})" if gpu else "-"
                print(f"{w} {mode} {i + 1}: rc {r['rc']}, {r['wall_s']:.1f} s, first CUDA "
                      f"result {r.get('first_s', '-')} s, RSS {r['rss_bytes'] / 2**20:,.0f} MB, "
                      f"GPU {mem}, digest {(r.get('digest') or r.get('error', ''))[:16]}",
                      flush=True)  # fmt: skip
                bad += r["rc"] != 0 and r["rc"] != SKIPPED
        if len(digests) > 1:
            print(f"{w}: outputs differ between runs or modes")
            bad += 1
    return 1 if bad else 0


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    sub = ap.add_subparsers(dest="command", required=True)
    r = sub.add_parser("run")
    r.add_argument("--results", default=str(DEFAULT_RESULTS))
    r.add_argument("--workdir", default="/tmp/slimwheel-report")
    r.add_argument("--runs", type=int, default=5)
    r.add_argument("--budget", type=float, default=540.0, help="seconds; then stop to resume")
    r.add_argument("--workloads", default=",".join(WORKLOADS))
    r.add_argument("--jobs", type=int, default=os.cpu_count() or 1)
    r.add_argument("--parallel", type=int, default=5, help="recordings run side by side")
    r.add_argument("--arch", default="native", help="what slim-env keeps (another GPU: sm_90)")
    r.add_argument(
        "--device", default="cuda", help="cpu: a dry run of the steps without a GPU (no NVML)"
    )
    s = sub.add_parser("smoke", help="the workloads on the installed stack, nothing slimmed")
    s.add_argument("--runs", type=int, default=2, help="per mode")
    s.add_argument("--workloads", default=",".join(WORKLOADS))
    s.add_argument("--device", default="cuda")
    d = sub.add_parser("render")
    d.add_argument("--results", default=str(DEFAULT_RESULTS))
    d.add_argument("--docs", default=str(REPO / "docs" / "results.md"))
    args = ap.parse_args()
    if args.command == "smoke":
        raise SystemExit(smoke([w for w in args.workloads.split(",") if w], args.runs, args.device))
    if args.command == "render":
        from bench.report_render import render

        render(Path(args.results), Path(args.docs))
        return
    try:
        Report(args).run()
    except OutOfTime as exc:
        print(f"stopped for the budget; run again to resume. {exc}")
        return
    print("all steps done")


if __name__ == "__main__":
    main()
