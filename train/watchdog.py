"""Hang detection: a rank that makes no progress in a phase of a step (most often a collective that another
rank never joins) reports it and exits, instead of the job waiting until the scheduler's limit.

The trainer marks each phase of a step (``with watchdog.phase("the loss all-reduce", step)``); a daemon thread
checks the time spent in the current phase. Past ``timeout_s`` it prints one line naming this rank, the step and
the phase, and ends the process with :data:`HUNG_EXIT` (the launcher then stops the other ranks, or restarts
the job with ``--max-restarts``). The rank that hangs reports itself in its own phase; the ranks waiting for it
report the collective they wait in.
"""

from __future__ import annotations

import os
import sys
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager

HUNG_EXIT = 4  # the exit code of a process that the watchdog ended


class StepWatchdog:
    """Ends this process when one phase of a step lasts longer than ``timeout_s`` (None: never)."""

    def __init__(self, timeout_s: float | None, rank: int) -> None:
        self.timeout_s, self.rank = timeout_s, rank
        self._phase: tuple[str, int, float] | None = None  # (what, step, since)
        self._stopped = threading.Event()
        self._thread: threading.Thread | None = None
        if timeout_s is not None:
            self._thread = threading.Thread(target=self._watch, name="atomfm-watchdog", daemon=True)
            self._thread.start()

    @contextmanager
    def phase(self, what: str, step: int) -> Iterator[None]:
        """Time ``what`` (e.g. "the gradient all-reduce") at ``step``; phases do not nest."""
        self._phase = (what, step, time.monotonic())
        try:
            yield
        finally:
            self._phase = None

    def close(self) -> None:
        self._stopped.set()

    def _watch(self) -> None:
        period = min(1.0, self.timeout_s / 10)
        while not self._stopped.wait(period):
            current = self._phase
            if current is None:
                continue
            what, step, since = current
            stuck = time.monotonic() - since
            if stuck > self.timeout_s:
                sys.stderr.write(
                    f"atomfm train: rank {self.rank} made no progress for {stuck:.0f} s at step {step}, in "
                    f"{what} (limit distributed.collective_timeout_s={self.timeout_s:g} s); a collective that "
                    "waits this long has a rank that does not join it: that rank reports its own phase, or it "
                    f"died. Stopping this process (exit code {HUNG_EXIT}).\n"
                )
                sys.stderr.flush()
                sys.stdout.flush()
                os._exit(HUNG_EXIT)
