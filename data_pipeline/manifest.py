"""The manifest: what every shard of a corpus holds, readable before a byte of a shard is read.

Layout (version 2), every file beside the shards:

- ``manifest.json``: small; the format and version, the corpus totals as of its last write, one record per
  source (the options it ran with, its runs, what it skipped) and the name of each source's shard list.
  Ingest writes it when a run starts and when it ends, atomically, never once per shard.
- ``SOURCE.shards.jsonl``: the source's shard list, one JSON line per finished shard (path, domain, split,
  sample and atom counts, elements, levels of theory, labels, bytes, sha256, and its atom-counts file), with
  ingest's resume checkpoint of the shard's stream. Ingest appends a line (and fsyncs) as each shard is
  published; a line cut short by a crash is not a listed shard.
- ``SHARD.natoms.npy`` beside each shard: the per-sample atom counts (:mod:`data_pipeline.atom_counts`), read
  lazily by whoever plans batches.

Version 1 corpora (everything, per-sample counts included, inline in ``manifest.json``) still read; the next
ingest into one, or ``atomfm data upgrade DIR``, rewrites it as version 2 (the shards stay as they are). The
corpus totals are derived from the shard entries, never trusted from the file.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import re
from bisect import insort
from collections import Counter
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np

from data_pipeline.atom_counts import atom_counts_name, encode_atom_counts, load_atom_counts
from data_pipeline.atomic_files import write_bytes_atomic, write_text_atomic, writing
from data_pipeline.config_mapping import from_mapping
from data_pipeline.corpus_location import corpus_file_url, is_remote, read_corpus_file
from data_pipeline.schema import BadInputError

log = logging.getLogger(__name__)

MANIFEST_NAME = "manifest.json"
FORMAT = "atomfm-corpus"
VERSION = 2
READABLE_VERSIONS = (1, 2)
SHARD_LIST_SUFFIX = ".shards.jsonl"
_SHARD_INDEX = re.compile(r"-(\d{6})\.tar$")


@dataclass
class AtomCountsFile:
    """A shard's per-sample atom counts file: name (beside the shard), size and sha256."""

    path: str
    bytes: int
    sha256: str


@dataclass
class ShardInfo:
    """One shard's entry in the manifest.

    Version 2 entries name their atom-counts file (``natoms_file``) and carry the largest count
    (``max_atoms``); version 1 entries hold the counts inline (``natoms``).
    """

    path: str
    domain: str
    split: str
    source: str
    num_samples: int
    num_atoms: int
    elements: dict[str, int]
    levels_of_theory: dict[str, int]
    labels: dict[str, int]  # structures carrying energy / forces / stress
    bytes: int
    sha256: str
    max_atoms: int | None = None
    natoms_file: AtomCountsFile | None = None
    natoms: list[int] | None = None

    @classmethod
    def from_dict(
        cls, d: Any, *, source: str | None = None, prefix: str = "", version: int = VERSION
    ) -> ShardInfo:
        """From a manifest entry: every field present and of its type, the counts consistent."""
        info = _plain_entry(d, version)
        if info is None:  # something is off: from_mapping says what, naming the field
            info = from_mapping(cls, d, source=source, prefix=prefix)
        where = f"{prefix}." if prefix else ""
        for name in ("num_samples", "num_atoms", "bytes"):
            if getattr(info, name) < 0:
                raise BadInputError(f"negative count {getattr(info, name)}", path=source, field=where + name)
        if version == 1:
            if info.natoms is None:
                raise BadInputError(
                    "missing: a version 1 entry lists its atom counts", path=source, field=where + "natoms"
                )
            if len(info.natoms) != info.num_samples or sum(info.natoms) != info.num_atoms:
                raise BadInputError(
                    f"{len(info.natoms)} per-sample atom counts summing to {sum(info.natoms)}, but num_samples "
                    f"{info.num_samples} and num_atoms {info.num_atoms}",
                    path=source,
                    field=where + "natoms",
                )
            return replace(info, max_atoms=max(info.natoms, default=0))
        for name in ("natoms_file", "max_atoms"):
            if getattr(info, name) is None:
                raise BadInputError(f"missing: set {where}{name}", path=source, field=where + name)
        if info.natoms is not None:
            raise BadInputError(
                "a version 2 entry keeps its atom counts in its natoms_file, not inline",
                path=source,
                field=where + "natoms",
            )
        if info.natoms_file.bytes < 0:
            raise BadInputError("negative size", path=source, field=where + "natoms_file.bytes")
        return info

    def to_dict(self) -> dict[str, Any]:
        """The version 2 entry (needs the atom-counts file: see :func:`write_manifest`)."""
        if self.natoms_file is None:
            raise ValueError(f"{self.path}: no atom-counts file yet (write the manifest with write_manifest)")
        d = asdict(self)
        del d["natoms"]
        return d

    def atom_counts(self, corpus: str | os.PathLike) -> np.ndarray:
        """Atoms of each sample, in member order: inline (version 1) or from the atom-counts file, checked."""
        if self.natoms is not None:
            return np.asarray(self.natoms, dtype=np.int64)
        assert self.natoms_file is not None
        return load_atom_counts(
            os.fspath(corpus),
            self.natoms_file.path,
            num_samples=self.num_samples,
            num_atoms=self.num_atoms,
            sha256=self.natoms_file.sha256,
        )


_TEXT_FIELDS = ("path", "domain", "split", "source", "sha256")
_COUNT_FIELDS = ("num_samples", "num_atoms", "bytes")
_TALLY_FIELDS = ("elements", "levels_of_theory", "labels")
_ENTRY_FIELDS = {
    1: {*_TEXT_FIELDS, *_COUNT_FIELDS, *_TALLY_FIELDS, "natoms"},
    2: {*_TEXT_FIELDS, *_COUNT_FIELDS, *_TALLY_FIELDS, "max_atoms", "natoms_file"},
}


def _plain_entry(d: Any, version: int) -> ShardInfo | None:
    """The entry, built directly when it has exactly its version's fields, each of its exact type (every entry
    ingest writes); None otherwise. A manifest of 20k shards reads in a fraction of from_mapping's time."""
    if type(d) is not dict or d.keys() != _ENTRY_FIELDS[version]:
        return None
    if not all(type(d[k]) is str for k in _TEXT_FIELDS) or not all(type(d[k]) is int for k in _COUNT_FIELDS):
        return None
    for name in _TALLY_FIELDS:
        tally = d[name]
        if type(tally) is not dict or not all(type(k) is str and type(v) is int for k, v in tally.items()):
            return None
    fields = {k: d[k] for k in (*_TEXT_FIELDS, *_COUNT_FIELDS, *_TALLY_FIELDS)}  # d is freshly parsed JSON
    if version == 1:
        natoms = d["natoms"]
        if type(natoms) is not list or not all(type(n) is int for n in natoms):
            return None
        return ShardInfo(**fields, natoms=natoms)
    counts_file = d["natoms_file"]
    if (
        type(d["max_atoms"]) is not int
        or type(counts_file) is not dict
        or counts_file.keys() != {"path", "bytes", "sha256"}
        or type(counts_file["path"]) is not str
        or type(counts_file["bytes"]) is not int
        or type(counts_file["sha256"]) is not str
    ):
        return None
    return ShardInfo(**fields, max_atoms=d["max_atoms"], natoms_file=AtomCountsFile(**counts_file))


@dataclass
class StreamCheckpoint:
    """Ingest's resume point after a shard: records of its (domain, split) stream settled, label failures so far."""

    position: int
    label_skipped: dict[str, int] = field(default_factory=dict)


@dataclass
class Manifest:
    """All shards of one corpus, plus per-source ingest records and ingest's resume checkpoints.

    resume: shard path → the checkpoint (``position``, ``label_skipped``) of its stream after that shard.
    """

    shards: list[ShardInfo] = field(default_factory=list)
    sources: dict[str, dict[str, Any]] = field(default_factory=dict)
    resume: dict[str, dict[str, Any]] = field(default_factory=dict)
    version: int = VERSION

    def select(
        self, *, domain: str | None = None, split: str | None = None, source: str | None = None
    ) -> list[ShardInfo]:
        """Shards matching every given filter, in manifest order."""
        return [
            s
            for s in self.shards
            if (domain is None or s.domain == domain)
            and (split is None or s.split == split)
            and (source is None or s.source == source)
        ]

    def source_names(self) -> list[str]:
        """Every source with a record or a shard, sorted."""
        return sorted(set(self.sources) | {s.source for s in self.shards})

    def summary(self) -> dict[str, Any]:
        """Corpus totals derived from the shard entries."""
        domains: dict[str, Counter] = {}
        elements: Counter = Counter()
        levels: Counter = Counter()
        labels: Counter = Counter()
        for s in self.shards:
            d = domains.setdefault(s.domain, Counter())
            d["structures"] += s.num_samples
            d["atoms"] += s.num_atoms
            d[f"split.{s.split}"] += s.num_samples
            elements.update(s.elements)
            levels.update(s.levels_of_theory)
            labels.update(s.labels)
        splits: Counter = Counter()
        for s in self.shards:
            splits[s.split] += s.num_samples
        skipped: Counter = Counter()
        for rec in self.sources.values():
            skipped.update(rec.get("skipped", {}))
        return {
            "num_shards": len(self.shards),
            "num_structures": sum(s.num_samples for s in self.shards),
            "num_atoms": sum(s.num_atoms for s in self.shards),
            "domains": {k: dict(v) for k, v in sorted(domains.items())},
            "splits": dict(sorted(splits.items())),
            "elements": dict(sorted(elements.items(), key=lambda kv: -kv[1])),
            "levels_of_theory": dict(sorted(levels.items())),
            "labels": dict(labels),
            "skipped": dict(skipped),
        }

    def to_dict(self) -> dict[str, Any]:
        """``manifest.json`` (version 2): totals, source records and the shard lists' names."""
        return {
            "format": FORMAT,
            "version": VERSION,
            "corpus": self.summary(),
            "sources": {name: _stored_record(rec) for name, rec in self.sources.items()},
            "shard_lists": {name: shard_list_name(name) for name in self.source_names()},
        }


def _stored_record(record: dict[str, Any]) -> dict[str, Any]:
    """A source record as ``manifest.json`` keeps it: its resume checkpoints live in its shard list."""
    return {k: v for k, v in record.items() if k != "streams"}


def manifest_path(corpus: str | Path) -> Path:
    return Path(corpus) / MANIFEST_NAME


def shard_list_name(source: str) -> str:
    return source + SHARD_LIST_SUFFIX


def shard_index(path: str) -> int:
    """``x-molecule-train-000012.tar`` → 12."""
    match = _SHARD_INDEX.search(path)
    if match is None:
        raise BadInputError("shard name does not end in -NNNNNN.tar", path=path, field="path")
    return int(match.group(1))


def read_manifest(corpus: str | os.PathLike) -> Manifest:
    """Read a corpus's manifest (folder or URL, version 1 or 2); a missing or damaged one is a
    :class:`BadInputError` naming the file and, for a wrong entry, the line and field."""
    corpus = os.fspath(corpus)
    where = corpus_file_url(corpus, MANIFEST_NAME)
    data = read_corpus_file(corpus, MANIFEST_NAME)
    if data is None:
        raise BadInputError(
            "no manifest.json: is this a corpus folder written by `atomfm data ingest`?", path=where
        )
    try:
        text = data.decode()
        del data  # a version 1 manifest of 10M structures is ~90 MB: hold it once, not as bytes and text
        raw = json.loads(text)
    except ValueError as err:  # UnicodeDecodeError is a ValueError
        raise BadInputError(f"unreadable manifest ({err})", path=where) from None
    del text
    if not isinstance(raw, dict):
        raise BadInputError(f"expected a JSON object, got a {type(raw).__name__}", path=where)
    if raw.get("format") != FORMAT:
        raise BadInputError(
            f"not an atomfm corpus manifest (format={raw.get('format')!r})", path=where, field="format"
        )
    version = raw.get("version", 1)
    if version not in READABLE_VERSIONS:
        raise BadInputError(
            f"manifest version {version!r}; this atomfm reads versions {', '.join(map(str, READABLE_VERSIONS))}: "
            "update atomfm",
            path=where,
            field="version",
        )
    sources = raw.get("sources", {})
    if not isinstance(sources, dict) or not all(isinstance(r, dict) for r in sources.values()):
        raise BadInputError("expected {source name: record object}", path=where, field="sources")
    if version == 1:
        return _read_version_1(raw, sources, where)
    lists = raw.get("shard_lists", {})
    if not isinstance(lists, dict) or not all(isinstance(v, str) for v in lists.values()):
        raise BadInputError("expected {source name: shard list file name}", path=where, field="shard_lists")
    manifest = Manifest(sources=sources)
    for source, name in sorted(lists.items()):
        for info, checkpoint in read_shard_list(corpus, source, name):
            manifest.shards.append(info)
            if checkpoint is not None:
                manifest.resume[info.path] = asdict(checkpoint)
    manifest.shards.sort(key=lambda s: s.path)
    return manifest


def _read_version_1(raw: dict[str, Any], sources: dict[str, Any], where: str) -> Manifest:
    entries = raw.get("shards", [])
    if not isinstance(entries, list):
        raise BadInputError(f"expected a list, got a {type(entries).__name__}", path=where, field="shards")
    shards = [
        ShardInfo.from_dict(d, source=where, prefix=f"shards[{i}]", version=1) for i, d in enumerate(entries)
    ]
    resume = {}
    for info in shards:  # the source record's checkpoints: the k-th of a stream is after its shard k
        checkpoints = sources.get(info.source, {}).get("streams", {}).get(f"{info.domain}-{info.split}", [])
        k = shard_index(info.path)
        if isinstance(checkpoints, list) and k < len(checkpoints):
            resume[info.path] = checkpoints[k]
    return Manifest(shards=shards, sources=sources, resume=resume, version=1)


def read_shard_list(corpus: str, source: str, name: str) -> list[tuple[ShardInfo, StreamCheckpoint | None]]:
    """The entries of source ``source``'s shard list ``name``; a last line cut short (an ingest killed while
    appending it) is not an entry."""
    where = corpus_file_url(corpus, name)
    data = read_corpus_file(corpus, name)
    if data is None:
        raise BadInputError(
            f"missing: manifest.json lists this file as the shard list of source {source!r}", path=where
        )
    try:
        text = data.decode()
    except UnicodeDecodeError as err:
        raise BadInputError(f"unreadable shard list ({err})", path=where) from None
    del data
    *lines, unfinished = text.split("\n")
    del text
    if unfinished:
        log.warning("%s: ignoring its last line, cut short by an interrupted ingest", where)
    entries = []
    for n, line in enumerate(lines, start=1):
        prefix = f"line {n}"
        try:
            raw = json.loads(line)
        except ValueError as err:
            raise BadInputError(f"not a JSON line ({err})", path=where, field=prefix) from None
        if not isinstance(raw, dict) or not set(raw) <= {"shard", "resume"}:
            raise BadInputError('expected {"shard": {...}, "resume": {...}}', path=where, field=prefix)
        info = ShardInfo.from_dict(raw.get("shard"), source=where, prefix=f"{prefix}.shard")
        if info.source != source:
            raise BadInputError(
                f"a shard of source {info.source!r} in the list of source {source!r}",
                path=where,
                field=f"{prefix}.shard.source",
            )
        checkpoint = raw.get("resume")
        if checkpoint is not None:
            checkpoint = from_mapping(StreamCheckpoint, checkpoint, source=where, prefix=f"{prefix}.resume")
        entries.append((info, checkpoint))
    return entries


def _shard_line(info: ShardInfo, checkpoint: dict[str, Any] | None) -> str:
    line: dict[str, Any] = {"shard": info.to_dict()}
    if checkpoint is not None:
        line["resume"] = checkpoint
    return json.dumps(line, separators=(",", ":")) + "\n"


def with_atom_counts_file(corpus: str | Path, info: ShardInfo) -> ShardInfo:
    """The entry with its counts in an atom-counts file beside the shard (written atomically if inline)."""
    if info.natoms is None:
        return info
    data = encode_atom_counts(info.natoms)
    name = atom_counts_name(info.path)
    write_bytes_atomic(Path(corpus) / name, data)
    counts_file = AtomCountsFile(name, len(data), hashlib.sha256(data).hexdigest())
    return replace(info, natoms=None, natoms_file=counts_file, max_atoms=max(info.natoms, default=0))


def write_shard_list(corpus: str | Path, manifest: Manifest, source: str) -> Path:
    """Rewrite source ``source``'s shard list from the manifest, atomically (ingest: once per run)."""
    lines = [_shard_line(s, manifest.resume.get(s.path)) for s in manifest.select(source=source)]
    return write_text_atomic(Path(corpus) / shard_list_name(source), "".join(lines))


def append_shard(
    corpus: str | Path, manifest: Manifest, info: ShardInfo, checkpoint: dict[str, Any] | None
) -> None:
    """List a just-published shard: one line appended to its source's shard list and fsynced (the list must
    exist: :func:`write_shard_list`), and the entry added to ``manifest`` in path order."""
    path = Path(corpus) / shard_list_name(info.source)
    line = _shard_line(info, checkpoint)
    with writing(path), open(path, "a") as f:
        f.write(line)
        f.flush()
        os.fsync(f.fileno())
    insort(manifest.shards, info, key=lambda s: s.path)
    if checkpoint is not None:
        manifest.resume[info.path] = checkpoint


def write_manifest_index(corpus: str | Path, manifest: Manifest) -> Path:
    """Write ``manifest.json`` alone, atomically; the shard lists it names must be on disk already."""
    return write_text_atomic(manifest_path(corpus), json.dumps(manifest.to_dict(), indent=1))


def write_manifest(corpus: str | Path, manifest: Manifest) -> Path:
    """Write the whole manifest as version 2: atom-counts files of entries that hold their counts inline, every
    shard list, then ``manifest.json`` (each atomically; until the last rename the old manifest stands)."""
    if is_remote(os.fspath(corpus)):
        raise BadInputError(
            "a corpus behind a URL is read-only here: write it locally and upload it", path=str(corpus)
        )
    manifest.shards = sorted(
        (with_atom_counts_file(corpus, s) for s in manifest.shards), key=lambda s: s.path
    )
    for source in manifest.source_names():
        write_shard_list(corpus, manifest, source)
    manifest.version = VERSION
    return write_manifest_index(corpus, manifest)
