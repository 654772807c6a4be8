"""An ordered, bounded map over spawn-context worker processes that run one thread each.

Results come back in input order; at most ``max_in_flight`` items are submitted and not yet yielded, so
an input stream of any length never sits in memory. Thread limits are set in each worker before the
numerical libraries (tblite, OpenMM, torch) are imported: with two OpenMP threads per process on a
two-core machine GFN2-xTB runs tens of times slower.
"""

from __future__ import annotations

import multiprocessing
import os
from collections import deque
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import Future, ProcessPoolExecutor
from typing import Any, TypeVar

T = TypeVar("T")
R = TypeVar("R")

THREAD_VARIABLES: tuple[str, ...] = (
    "OMP_NUM_THREADS",
    "MKL_NUM_THREADS",
    "OPENBLAS_NUM_THREADS",
    "OPENMM_CPU_THREADS",
    "NUMEXPR_NUM_THREADS",
)


def default_workers() -> int:
    """Cores this process may use."""
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)


def limit_threads() -> None:
    """One thread for every numerical library loaded from now on in this process."""
    for name in THREAD_VARIABLES:
        os.environ[name] = "1"


def _start_worker(initializer: Callable[..., None] | None, initargs: tuple) -> None:
    limit_threads()
    if initializer is not None:
        initializer(*initargs)


def ordered_process_map(
    fn: Callable[[T], R],
    items: Iterable[T],
    *,
    workers: int,
    initializer: Callable[..., None] | None = None,
    initargs: tuple = (),
    max_in_flight: int | None = None,
) -> Iterator[R]:
    """``fn(item)`` for every item, computed in ``workers`` processes, yielded in input order.

    ``fn`` and ``initializer`` must be importable module-level functions (spawn pickles them by name).
    Leaving the generator early cancels the work not yet started.
    """
    if workers < 1:
        raise ValueError(f"workers must be >= 1, got {workers}")
    limit = max_in_flight or 4 * workers
    pool = ProcessPoolExecutor(
        max_workers=workers,
        mp_context=multiprocessing.get_context("spawn"),
        initializer=_start_worker,
        initargs=(initializer, initargs),
    )
    pending: deque[Future[Any]] = deque()
    try:
        for item in items:
            pending.append(pool.submit(fn, item))
            if len(pending) >= limit:
                yield pending.popleft().result()
        while pending:
            yield pending.popleft().result()
    finally:
        pool.shutdown(wait=True, cancel_futures=True)
