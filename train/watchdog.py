"""Hang detection: a rank that makes no progress in a phase of a step (most often a collective that another
rank never joins) reports it and exits, instead of the job waiting until the scheduler's limit.

The trainer marks each phase of a step (``with watchdog.phase("the loss all-reduce", step)``); a daemon thread
checks the time spent in the current phase. Past ``timeout_s`` it prints one line naming this rank, the step and
the phase, and ends the process with :data:`HUNG_EXIT` (the launcher then stops the other ranks, or restarts
the job with ``--max-restarts``). The rank that hangs reports itself in its own phase; the ranks waiting for it
report the collective they wait in.

A rank that dies (the hung one, ended by its watchdog, or one that crashed) closes its connections, and a
collective that another rank waits in then fails at once, often before that rank's own limit: the phase turns
that failure into :class:`PeerLostError`, which names this rank, the step, the phase and how long it waited,
so each rank still says where it was, whichever of the two limits came first.
"""

from __future__ import annotations

import os
import re
import sys
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager

HUNG_EXIT = 4  # the exit code of a process that the watchdog ended, or that lost a peer rank

# what a collective's error says when the process at the other end has gone (gloo's TCP pairs, NCCL, the store)
_PEER_GONE = ("connection closed by peer", "connection reset by peer", "broken pipe", "connection refused")


def _first_sentence(err: BaseException) -> str:
    """The backend's message without its source location ("[.../pair.cc:553] ") and its advice."""
    text = (str(err).strip() or type(err).__name__).splitlines()[0]
    text = re.sub(r"^\[[^\]]*\]\s*", "", text)
    return text.split(". ")[0].rstrip(".")[:200]


class PeerLostError(RuntimeError):
    """A collective failed inside a watched phase because another rank went away."""


def is_peer_loss(err: RuntimeError) -> bool:
    """Whether ``err`` is a collective failing because the rank at the other end has gone."""
    import torch.distributed as dist

    return isinstance(err, dist.DistNetworkError) or any(mark in str(err).lower() for mark in _PEER_GONE)


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
        since = time.monotonic()
        self._phase = (what, step, since)
        try:
            yield
        except RuntimeError as err:
            if not is_peer_loss(err):
                raise
            waited = time.monotonic() - since
            raise PeerLostError(
                f"rank {self.rank} lost a peer rank after {waited:.0f} s at step {step}, in {what} "
                f"({_first_sentence(err)}): another rank died or was stopped; its own line, in this log or "
                "its own, says where it was, unless it was killed"
            ) from None
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
