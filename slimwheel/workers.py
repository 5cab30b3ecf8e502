"""Work spread over processes: one library per task, results in order."""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator
from concurrent.futures import ProcessPoolExecutor
from concurrent.futures.process import BrokenProcessPool
from typing import Any

from .errors import SlimwheelError
from .files import install_sigbus_guard


class WorkerDied(SlimwheelError):
    """A process of the pool ended without a result."""


@contextlib.contextmanager
def worker_pool(
    jobs: int,
) -> Iterator[Callable[[Callable[..., Any], list[tuple[Any, ...]]], list[Any]]]:
    """``run(fn, argument tuples)`` -> results in order; a SlimwheelError is
    returned in its result's place (so every problem can be reported)."""

    call = _call_in_worker
    if jobs <= 1:
        yield lambda fn, argv: [call(fn, a) for a in argv]
        return
    import multiprocessing

    ctx = multiprocessing.get_context("spawn")
    with ProcessPoolExecutor(max_workers=jobs, mp_context=ctx) as pool:

        def run(fn: Callable[..., Any], argv: list[tuple[Any, ...]]) -> list[Any]:
            if len(argv) <= 1:
                return [call(fn, a) for a in argv]
            futures = [pool.submit(_call_in_worker, fn, a) for a in argv]
            try:
                return [f.result() for f in futures]
            except BrokenProcessPool:
                for f in futures:
                    f.cancel()
                raise WorkerDied(
                    "a worker process died (killed, or out of memory); nothing was replaced, "
                    "what it left is cleaned by the next run"
                ) from None

        yield run


def _call_in_worker(fn: Callable[..., Any], a: tuple[Any, ...]) -> Any:
    install_sigbus_guard()
    try:
        return fn(*a)
    except SlimwheelError as exc:
        return exc
