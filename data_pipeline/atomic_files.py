"""Atomic writes, the one way every stage writes a file: temporary name, fsync, rename, fsync of the folder.

A reader never sees half a file, and a crash leaves either the old file or the new one. Shards, manifests,
checkpoints, exports and configs all go through :func:`atomic_path` (or the helpers built on it).
"""

from __future__ import annotations

import os
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any


def fsync_dir(path: str | os.PathLike) -> None:
    """Make a rename inside ``path`` durable."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def publish(tmp: str | os.PathLike, final: str | os.PathLike) -> Path:
    """fsync ``tmp``, rename it to ``final`` (same folder), fsync the folder; returns ``final``."""
    with open(tmp, "rb+") as f:
        os.fsync(f.fileno())
    os.replace(tmp, final)
    fsync_dir(Path(final).parent)
    return Path(final)


@contextmanager
def atomic_path(final: str | os.PathLike) -> Iterator[Path]:
    """A temporary path beside ``final`` to write to; on success it becomes ``final``, on error it is removed.

    >>> with atomic_path(out / "model.safetensors") as tmp:
    ...     save_file(tensors, tmp)
    """
    final = Path(final)
    final.parent.mkdir(parents=True, exist_ok=True)
    fd, name = tempfile.mkstemp(prefix=f".{final.name}.", suffix=".tmp", dir=final.parent)
    os.close(fd)
    tmp = Path(name)
    try:
        yield tmp
        publish(tmp, final)
    finally:
        tmp.unlink(missing_ok=True)


def write_text_atomic(path: str | os.PathLike, text: str) -> Path:
    with atomic_path(path) as tmp:
        tmp.write_text(text)
    return Path(path)


def torch_save_atomic(obj: Any, path: str | os.PathLike) -> Path:
    """``torch.save`` through :func:`atomic_path`."""
    import torch

    with atomic_path(path) as tmp:
        torch.save(obj, tmp)
    return Path(path)


def is_temporary_of(name: str, final_name: str) -> bool:
    """Whether file ``name`` is a leftover temporary of :func:`atomic_path` for ``final_name``."""
    return name.startswith(f".{final_name}.") and name.endswith(".tmp")
