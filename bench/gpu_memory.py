"""Peak GPU memory of a process, from the driver (NVML through nvidia-ml-py), sampled.

A thread polls every ``period_s`` while the process runs and keeps the
largest value of:

- ``process``: the memory NVML attributes to the process (its pid, or, in a
  PID namespace where NVML reports host pids, every compute process on the
  GPUs when none was there before it started);
- ``device``: memory used on the GPUs minus what was used before the start.

The first is the process's own memory (context, loaded modules, allocator
pools); the second also sees what the driver keeps for it elsewhere.
"""

from __future__ import annotations

import threading
import time
from types import TracebackType
from typing import Any

import pynvml  # type: ignore[import-not-found, unused-ignore]


class GpuMemory:
    def __init__(self, period_s: float) -> None:
        pynvml.nvmlInit()
        self.handles = [
            pynvml.nvmlDeviceGetHandleByIndex(i) for i in range(pynvml.nvmlDeviceGetCount())
        ]
        self.period_s = period_s
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self.pid = 0
        self.process = 0
        self.device = 0
        self.how = ""
        self.samples = 0
        self._baseline = 0
        self._others = False

    def _procs(self) -> list[Any]:
        out: list[Any] = []
        for h in self.handles:
            out += pynvml.nvmlDeviceGetComputeRunningProcesses(h)
        return out

    def _used(self) -> int:
        return sum(int(pynvml.nvmlDeviceGetMemoryInfo(h).used) for h in self.handles)

    def watch(self, pid: int) -> GpuMemory:
        self.pid, self.process, self.device, self.samples, self.how = pid, 0, 0, 0, ""
        self._baseline = self._used()
        self._others = bool(self._procs())
        self._stop.clear()
        self._thread = threading.Thread(target=self._loop, daemon=True)
        self._thread.start()
        return self

    def _loop(self) -> None:
        while True:
            self._sample()
            if self._stop.wait(self.period_s):
                self._sample()
                return

    def _sample(self) -> None:
        procs = self._procs()
        mine = [p for p in procs if p.pid == self.pid]
        if mine:
            how = "pid"
        elif procs and not self._others:
            mine, how = procs, "all compute processes (pid not visible to NVML)"
        else:
            how = ""
        used = sum(int(p.usedGpuMemory or 0) for p in mine)
        if used > self.process:
            self.process, self.how = used, how
        self.device = max(self.device, self._used() - self._baseline)
        self.samples += 1

    def __enter__(self) -> GpuMemory:
        return self

    def __exit__(
        self, t: type[BaseException] | None, e: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.stop()

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join()
            self._thread = None

    @staticmethod
    def describe() -> dict[str, Any]:
        pynvml.nvmlInit()
        h = pynvml.nvmlDeviceGetHandleByIndex(0)
        name = pynvml.nvmlDeviceGetName(h)
        return {
            "gpu": name.decode() if isinstance(name, bytes) else name,
            "gpus": pynvml.nvmlDeviceGetCount(),
            "driver": _text(pynvml.nvmlSystemGetDriverVersion()),
            "memory_bytes": int(pynvml.nvmlDeviceGetMemoryInfo(h).total),
            "measured_at": time.strftime("%Y-%m-%d", time.gmtime()),
        }


def _text(v: Any) -> str:
    return v.decode() if isinstance(v, bytes) else str(v)
