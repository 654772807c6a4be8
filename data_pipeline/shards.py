"""Write structures into webdataset ``.tar`` shards, one shard at a time, atomically.

A shard is written under a temporary name and renamed only when complete, so a crash never leaves a
half shard that looks whole. Shard names: ``{source}-{domain}-{split}-{index:06d}.tar``; beside each, its
per-sample atom counts (``{...}.natoms.npy``, :mod:`data_pipeline.atom_counts`), written just before it.
"""

from __future__ import annotations

import hashlib
import re
from collections import Counter
from collections.abc import Callable
from pathlib import Path

import webdataset as wds
from ase.data import chemical_symbols

from data_pipeline.atom_counts import SUFFIX as ATOM_COUNTS_SUFFIX
from data_pipeline.atomic_files import output_folder, publish, writing
from data_pipeline.manifest import ShardInfo, with_atom_counts_file
from data_pipeline.sample_codec import encode_sample
from data_pipeline.schema import DOMAINS, Structure
from data_pipeline.splits import SPLITS

TMP_SUFFIX = ".tmp"
# Tar member timestamps are fixed so that the same records always give byte-identical shards (same sha256).
MEMBER_MTIME = 0  # an int: a float mtime makes tarfile add a PAX header (1 KB) to every member


def shard_name(source: str, domain: str, split: str, index: int) -> str:
    return f"{source}-{domain}-{split}-{index:06d}.tar"


def shard_pattern(source: str, suffix: str = ".tar") -> re.Pattern[str]:
    """File names of ``source``'s finished shards (``{source}-{domain}-{split}-{index:06d}.tar``), or of their
    atom-counts files with ``suffix=".natoms.npy"``."""
    return re.compile(
        rf"^{re.escape(source)}-({'|'.join(DOMAINS)})-({'|'.join(SPLITS)})-\d{{6}}{re.escape(suffix)}$"
    )


def atom_counts_pattern(source: str) -> re.Pattern[str]:
    return shard_pattern(source, ATOM_COUNTS_SUFFIX)


def sha256_of(path: str | Path, chunk: int = 1 << 20) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            h.update(block)
    return h.hexdigest()


class ShardWriter:
    """Writes the shards of one (source, domain, split) stream; ``on_shard`` is told of each finished shard.

    >>> with ShardWriter(out, source="g2", domain="molecule", split="train", shard_size=500) as w:
    ...     for s in structures:
    ...         w.write(s)
    """

    def __init__(
        self,
        out_dir: str | Path,
        *,
        source: str,
        domain: str,
        split: str,
        shard_size: int,
        start_index: int = 0,
        on_shard: Callable[[ShardInfo], None] | None = None,
    ) -> None:
        if shard_size < 1:
            raise ValueError(f"shard_size must be >= 1, got {shard_size}")
        self.out_dir = output_folder(out_dir)
        self.source, self.domain, self.split = source, domain, split
        self.shard_size = shard_size
        self.index = start_index
        self.on_shard = on_shard
        self.finished: list[ShardInfo] = []
        self.finished_keys: list[str] = []  # record keys of the last finished shard, in member order
        self._tar: wds.TarWriter | None = None
        self._tmp: Path | None = None
        self._reset_stats()

    def _reset_stats(self) -> None:
        self._natoms: list[int] = []
        self._keys: list[str] = []
        self._elements: Counter = Counter()
        self._levels: Counter = Counter()
        self._labels: Counter = Counter()

    def _open(self) -> None:
        final = self.out_dir / shard_name(self.source, self.domain, self.split, self.index)
        self._tmp = final.with_name(final.name + TMP_SUFFIX)
        with writing(final):
            self._tar = wds.TarWriter(str(self._tmp), mtime=MEMBER_MTIME)

    def write(self, s: Structure) -> None:
        if s.domain != self.domain or s.split != self.split:
            raise ValueError(
                f"{s.key}: ({s.domain}, {s.split}) written to a ({self.domain}, {self.split}) shard"
            )
        if self._tar is None:
            self._open()
        with writing(self._final()):
            self._tar.write(encode_sample(s, f"{len(self._natoms):09d}"))
        self._natoms.append(s.num_atoms)
        self._keys.append(s.key)
        self._elements.update(chemical_symbols[int(z)] for z in s.atomic_numbers)
        self._levels[s.level_of_theory] += 1
        for name in ("energy", "forces", "stress"):
            if getattr(s, name) is not None:
                self._labels[name] += 1
        if len(self._natoms) >= self.shard_size:
            self._finish()

    def _finish(self) -> None:
        assert self._tar is not None and self._tmp is not None
        final = self._final()
        with writing(final):
            self._tar.close()
        info = ShardInfo(
            path=final.name,
            domain=self.domain,
            split=self.split,
            source=self.source,
            num_samples=len(self._natoms),
            num_atoms=sum(self._natoms),
            natoms=list(self._natoms),
            elements=dict(self._elements),
            levels_of_theory=dict(self._levels),
            labels=dict(self._labels),
            bytes=self._tmp.stat().st_size,
            sha256=sha256_of(self._tmp),
        )
        info = with_atom_counts_file(self.out_dir, info)
        with writing(final):
            publish(self._tmp, final)
        self._tar, self._tmp = None, None
        self.finished_keys = self._keys
        self._reset_stats()
        self.index += 1
        self.finished.append(info)
        if self.on_shard is not None:
            self.on_shard(info)

    def _final(self) -> Path:
        """The name the shard in progress gets when it is complete."""
        assert self._tmp is not None
        return self._tmp.with_name(self._tmp.name[: -len(TMP_SUFFIX)])

    def close(self) -> list[ShardInfo]:
        """Finish the last (partial) shard; returns every shard this writer finished."""
        if self._tar is not None and self._natoms:
            self._finish()
        return self.finished

    def abort(self) -> None:
        """Drop the shard in progress (its temporary file), keeping the finished ones."""
        if self._tar is not None:
            try:
                self._tar.close()
            except OSError:  # the disk that failed the write may fail the close too; the file goes anyway
                pass
            if self._tmp is not None:
                self._tmp.unlink(missing_ok=True)
        self._tar, self._tmp = None, None

    def __enter__(self) -> ShardWriter:
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        if exc_type is None:
            self.close()
        else:
            self.abort()
