"""Atomic writes, the one way every stage writes a file: temporary name, fsync, rename, fsync of the folder.

A reader never sees half a file, and a crash leaves either the old file or the new one. Shards, manifests,
checkpoints, exports and configs all go through :func:`atomic_path` (or the helpers built on it). A folder
that cannot be written (a file in the way, no permission, a full disk) is an :class:`OutputError` naming the
path and why, never a bare ``OSError``: :func:`output_folder` checks a folder before a run writes to it, and
:func:`writing` turns the errors of a write into that message.
"""

from __future__ import annotations

import errno
import os
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from data_pipeline.schema import BadInputError

# What to do about the errors a write can meet, by errno.
WRITE_ADVICE = {
    errno.ENOSPC: "the disk is full: free space (or choose a folder on another disk) and run again",
    errno.EDQUOT: "the disk quota is exhausted: free space and run again",
    errno.EFBIG: "the file grew past the size limit of this process or file system",
    errno.EROFS: "the file system is read-only: choose a writable folder",
    errno.EACCES: "permission denied: choose a folder you can write to",
    errno.EPERM: "permission denied: choose a folder you can write to",
    errno.ENOTDIR: "a file stands where a folder is needed: choose another path",
    errno.EEXIST: "a file stands where a folder is needed: choose another path",
}


class OutputError(BadInputError):
    """A path cannot be written: which path, what the system said, and what to do."""

    def __init__(self, message: str, *, path: str) -> None:
        super().__init__(message, path=path)
        self.args = (f"{path}: {message}",)


def output_error(path: str | os.PathLike, err: OSError) -> OutputError:
    advice = WRITE_ADVICE.get(err.errno or 0, "")
    reason = err.strerror or type(err).__name__
    return OutputError(f"cannot write ({reason})" + (f": {advice}" if advice else ""), path=str(path))


@contextmanager
def writing(path: str | os.PathLike) -> Iterator[None]:
    """Turn an ``OSError`` raised while writing ``path`` into an :class:`OutputError` naming it."""
    try:
        yield
    except OSError as err:
        raise output_error(path, err) from None


def output_folder(path: str | os.PathLike) -> Path:
    """Create folder ``path`` (and its parents) to write into, or name why it cannot be one."""
    folder = Path(path)
    blocker = next((p for p in [folder, *folder.parents] if p.exists() and not p.is_dir()), None)
    if blocker == folder:
        raise OutputError("is a file, not a folder: choose another output folder", path=str(folder))
    if blocker is not None:
        raise OutputError(
            f"lies under {blocker}, which is a file: choose another output folder", path=str(folder)
        )
    with writing(folder):
        folder.mkdir(parents=True, exist_ok=True)
    if not os.access(folder, os.W_OK | os.X_OK):
        raise OutputError(f"cannot write (permission denied): {WRITE_ADVICE[errno.EACCES]}", path=str(folder))
    return folder


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
    output_folder(final.parent)
    with writing(final):
        fd, name = tempfile.mkstemp(prefix=f".{final.name}.", suffix=".tmp", dir=final.parent)
        os.close(fd)
    tmp = Path(name)
    try:
        with writing(final):
            yield tmp
            publish(tmp, final)
    finally:
        tmp.unlink(missing_ok=True)


def write_text_atomic(path: str | os.PathLike, text: str) -> Path:
    with atomic_path(path) as tmp:
        tmp.write_text(text)
    return Path(path)


def write_bytes_atomic(path: str | os.PathLike, data: bytes) -> Path:
    with atomic_path(path) as tmp:
        tmp.write_bytes(data)
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
