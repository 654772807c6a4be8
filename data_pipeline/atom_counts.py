"""Per-sample atom counts of a shard, in a small ``.npy`` file beside it (``NAME.natoms.npy`` for ``NAME.tar``).

The manifest lists each count file's size and sha256 with its shard, and the stream's plan reads the counts
of a shard only when a reader slot reads that shard: a corpus of 100M structures keeps them out of the
manifest (2 bytes per structure on disk, none in memory until needed). The array is 1-D, one entry per
sample in member order, ``uint16`` (``uint32`` when a structure has 65,536 atoms or more).
"""

from __future__ import annotations

import hashlib
import io
from collections import OrderedDict
from collections.abc import Sequence

import numpy as np

from data_pipeline.corpus_location import corpus_file_url, read_corpus_file
from data_pipeline.schema import BadInputError

SUFFIX = ".natoms.npy"
CACHE_BYTES = 64 << 20  # counts kept in memory per process: 32M structures' worth at 2 bytes each


def atom_counts_name(shard_path: str) -> str:
    """``x-molecule-train-000000.tar`` → ``x-molecule-train-000000.natoms.npy``."""
    stem = shard_path[: -len(".tar")] if shard_path.endswith(".tar") else shard_path
    return stem + SUFFIX


def encode_atom_counts(natoms: Sequence[int]) -> bytes:
    """The ``.npy`` bytes of the counts, as small an unsigned type as holds them."""
    counts = np.asarray(natoms, dtype=np.int64)
    dtype = np.uint16 if counts.size == 0 or counts.max() < 1 << 16 else np.uint32
    buffer = io.BytesIO()
    np.save(buffer, counts.astype(dtype), allow_pickle=False)
    return buffer.getvalue()


def decode_atom_counts(
    data: bytes, *, where: str, num_samples: int, num_atoms: int, sha256: str | None = None
) -> np.ndarray:
    """The counts in ``data`` (the file ``where``), checked against what the manifest says of its shard."""
    if sha256 is not None and hashlib.sha256(data).hexdigest() != sha256:
        raise BadInputError(
            f"checksum mismatch ({len(data)} bytes): the atom counts file is damaged or from another "
            "build; re-run the source's `atomfm data ingest` to write it again",
            path=where,
        )
    try:
        counts = np.load(io.BytesIO(data), allow_pickle=False)
    except (ValueError, OSError, EOFError) as err:
        raise BadInputError(f"unreadable atom counts file ({err})", path=where) from None
    if counts.ndim != 1 or counts.dtype.kind != "u":
        raise BadInputError(
            f"expected a 1-D unsigned integer array, got {counts.dtype} of shape {counts.shape}", path=where
        )
    if len(counts) != num_samples or int(counts.sum(dtype=np.int64)) != num_atoms:
        raise BadInputError(
            f"{len(counts)} atom counts summing to {int(counts.sum(dtype=np.int64))}, but the manifest lists "
            f"{num_samples} samples with {num_atoms} atoms",
            path=where,
        )
    return counts


_cache: OrderedDict[tuple[str, str], np.ndarray] = OrderedDict()
_cached_bytes = 0


def load_atom_counts(corpus: str, name: str, *, num_samples: int, num_atoms: int, sha256: str) -> np.ndarray:
    """The checked counts of count file ``name`` of the corpus (folder or URL); the most recently used ones, up
    to :data:`CACHE_BYTES`, stay in memory (a slot that splits a domain by sample reads every shard's counts)."""
    global _cached_bytes
    key = (corpus, name)
    if key in _cache:
        _cache.move_to_end(key)
        return _cache[key]
    where = corpus_file_url(corpus, name)
    data = read_corpus_file(corpus, name)
    if data is None:
        raise BadInputError(
            "missing: the shard's atom counts file is not there; `atomfm data inspect` checks the corpus, "
            "and re-running the source's `atomfm data ingest` writes it again",
            path=where,
        )
    counts = decode_atom_counts(
        data, where=where, num_samples=num_samples, num_atoms=num_atoms, sha256=sha256
    )
    _cache[key] = counts
    _cached_bytes += counts.nbytes
    while _cached_bytes > CACHE_BYTES and len(_cache) > 1:
        _cached_bytes -= _cache.popitem(last=False)[1].nbytes
    return counts
