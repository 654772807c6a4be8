"""Wall-clock timing shared by the benchmark scripts (run as `python benchmarks/<script>.py`)."""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable

import torch


def seconds_per_call(fn: Callable[[], object], device: torch.device, repeat: int) -> float:
    """Mean seconds of ``fn()`` over ``repeat`` calls after one warm-up call, synchronising CUDA around them."""
    fn()
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    start = time.perf_counter()
    for _ in range(repeat):
        fn()
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    return (time.perf_counter() - start) / repeat


def median_seconds_per_call(
    fn: Callable[[], object], device: torch.device, repeat: int, first: list[float] | None = None
) -> float:
    """Median seconds of ``fn()`` over ``repeat`` calls after one warm-up call (``repeat`` 0: the one call,
    timed), synchronising CUDA around each: robust to the other jobs of a shared machine. ``first``, when
    given, receives the warm-up call's seconds (where a compiled model compiles)."""

    def timed() -> float:
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        start = time.perf_counter()
        fn()
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        return time.perf_counter() - start

    warm_up = timed()
    if first is not None:
        first.append(warm_up)
    return statistics.median([timed() for _ in range(repeat)]) if repeat else warm_up
