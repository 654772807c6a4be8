"""One writer per folder: an exclusive ``flock`` on a lock file inside it, held while a command writes there.

Ingest holds a corpus folder's lock, training its run folder's. The kernel releases the lock when the holder
exits, however it exits (a SIGKILL included), so a stale lock file never blocks the next run.
"""

from __future__ import annotations

import fcntl
import os
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from data_pipeline.atomic_files import writing
from data_pipeline.schema import BadInputError


@contextmanager
def folder_lock(folder: str | os.PathLike, name: str, busy: str) -> Iterator[None]:
    """Hold ``folder/name`` exclusively; if another process holds it, :class:`BadInputError` says ``busy`` and
    that process's id."""
    path = Path(folder) / name
    with writing(path):
        handle = open(path, "a+")
    with handle:
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            handle.seek(0)
            holder = handle.read().strip()
            raise BadInputError(
                busy + (f" (process {holder} holds {path.name})" if holder else ""), path=str(folder)
            ) from None
        try:
            handle.seek(0)
            handle.truncate()
            handle.write(str(os.getpid()))
            handle.flush()
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)
