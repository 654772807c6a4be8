"""Ingest structures into a corpus: validated, split, labelled records → webdataset shards + manifest.

One call ingests one *source* into a corpus folder; several sources make one corpus. Per record:
validate → split by hashing the group id → key uniqueness check (against the corpus's key index,
:mod:`data_pipeline.key_index`) → (resume skip) → label → shard. Each finished shard (and its atom-counts
file) is published, its keys indexed, then one line appended to the source's shard list, so an interrupted
run's manifest lists exactly its complete shards; ``manifest.json`` itself is written only when a run starts
and ends. Re-running with the same inputs and options resumes: finished shards are verified (sha256) and
kept, and their records are skipped per (domain, split) stream before labelling. Different inputs or
options, or ``rebuild=True``, rebuild the source: its entries leave the manifest first, then its files are
deleted, so the manifest never lists a missing file. A version 1 corpus is upgraded to version 2 first. The
command line, `atomfm data ingest`, is :mod:`data_pipeline.ingest_cli`.
"""

from __future__ import annotations

import hashlib
import json
import logging
import re
import sys
from collections import Counter
from collections.abc import Iterable, Iterator, Sequence
from contextlib import AbstractContextManager, closing
from dataclasses import dataclass, field, replace
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from tqdm import tqdm

from data_pipeline.atom_counts import decode_atom_counts
from data_pipeline.atomic_files import is_temporary_of, output_folder
from data_pipeline.folder_lock import folder_lock
from data_pipeline.key_index import KeyIndex
from data_pipeline.labels import LABELLERS, LabelOutcome, label_outcomes
from data_pipeline.manifest import (
    SHARD_LIST_SUFFIX,
    Manifest,
    ShardInfo,
    append_shard,
    manifest_path,
    read_manifest,
    shard_index,
    write_manifest,
    write_manifest_index,
    write_shard_list,
)
from data_pipeline.schema import DOMAINS, BadInputError, Structure, validate
from data_pipeline.shards import TMP_SUFFIX, ShardWriter, atom_counts_pattern, sha256_of, shard_pattern
from data_pipeline.splits import DEFAULT_FRACTIONS, assign_split, check_fractions

log = logging.getLogger(__name__)

SOURCE_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.+-]*$")
LOCK_NAME = ".ingest.lock"


def check_source_name(source: str) -> str:
    if not SOURCE_NAME.match(source or ""):
        raise BadInputError(
            f"source name {source!r} must start with a letter or digit and contain only "
            "letters, digits and _ . + -",
            field="source",
        )
    return source


@dataclass(frozen=True)
class IngestOptions:
    """How one source is ingested; checked when made (a bad value is a :class:`BadInputError` naming it).

    domain: overrides every record's domain.   label: a method of :func:`label_outcomes` or ``"none"``
    (keep the labels records carry).   workers: labelling processes (default: number of cores).
    inputs: JSON-serialisable description of where the structures come from (files, sizes, reader
    options); with :meth:`shard_options` it makes the fingerprint that decides between resuming and
    rebuilding. Its ``files`` list (``[{"path": ...}, ...]``, as `atomfm data ingest` writes it) names the input
    files: a changed fingerprint that would drop a file the source was built from is refused (another input
    of the same name) unless ``rebuild``.   rebuild: rebuild the source even when the fingerprint is unchanged.
    """

    source: str
    domain: str | None = None
    label: str = "none"
    shard_size: int = 1000
    skip_bad: bool = False
    workers: int | None = None
    seed: int = 0
    split_fractions: Sequence[float] = DEFAULT_FRACTIONS
    rebuild: bool = False
    inputs: Any = None
    progress: bool = True

    def __post_init__(self) -> None:
        check_source_name(self.source)
        object.__setattr__(self, "split_fractions", check_fractions(self.split_fractions))
        if self.domain is not None and self.domain not in DOMAINS:
            raise BadInputError(
                f"unknown domain {self.domain!r}; expected one of {', '.join(DOMAINS)}", field="domain"
            )
        if self.shard_size < 1:
            raise BadInputError(f"shard size must be >= 1, got {self.shard_size}", field="shard_size")
        if self.label != "none" and self.label not in LABELLERS:
            raise BadInputError(
                f"unknown label method {self.label!r}; expected none or one of {', '.join(LABELLERS)}",
                field="label",
            )

    def shard_options(self) -> dict[str, Any]:
        """The options that decide what the shards hold, as the source's manifest record lists them."""
        return {
            "domain": self.domain,
            "label": self.label,
            "shard_size": self.shard_size,
            "seed": self.seed,
            "split_fractions": list(self.split_fractions),
        }

    def fingerprint(self) -> str:
        """SHA-256 of the canonical JSON of the shard options and the description of the inputs."""
        text = json.dumps(
            {"options": self.shard_options(), "inputs": self.inputs}, sort_keys=True, default=str
        )
        return hashlib.sha256(text.encode()).hexdigest()


def corpus_lock(out_dir: Path) -> AbstractContextManager[None]:
    """Hold the corpus folder's ingest lock: one ingest writes a corpus at a time (released on any exit, even kill)."""
    return folder_lock(
        out_dir, LOCK_NAME, "another `atomfm data ingest` is writing this corpus; wait for it to finish"
    )


def _now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="seconds")


def _stream_name(domain: str, split: str) -> str:
    return f"{domain}-{split}"


def _shard_is_intact(out_dir: Path, info: ShardInfo) -> bool:
    """The shard and its atom-counts file are on disk as listed (size, sha256, counts)."""
    path = out_dir / info.path
    if not (path.is_file() and path.stat().st_size == info.bytes and sha256_of(path) == info.sha256):
        return False
    if info.natoms_file is None:
        return True
    counts = out_dir / info.natoms_file.path
    if not counts.is_file():
        return False
    try:
        decode_atom_counts(
            counts.read_bytes(),
            where=str(counts),
            num_samples=info.num_samples,
            num_atoms=info.num_atoms,
            sha256=info.natoms_file.sha256,
        )
    except BadInputError:
        return False
    return True


def _remove_strays(out_dir: Path, manifest: Manifest, source: str) -> None:
    """Delete what an interrupted run can leave: temporary shards, atom-counts files, shard lists and manifests,
    and this source's unlisted shards and atom-counts files."""
    listed = {s.path for s in manifest.shards} | {
        s.natoms_file.path for s in manifest.shards if s.natoms_file
    }
    patterns = (shard_pattern(source), atom_counts_pattern(source))
    manifest_name = manifest_path(out_dir).name
    for path in sorted(out_dir.iterdir()):
        name = path.name
        stray_tmp = (
            name.endswith(".tar" + TMP_SUFFIX)
            or name.startswith(f".{manifest_name}.tmp-")  # write_manifest's temporary before atomic_path
            or is_temporary_of(name, manifest_name)
            or (name.startswith(".") and name.endswith(".tmp") and SHARD_LIST_SUFFIX in name)
            or (
                name.startswith(".")
                and name.endswith(".tmp")
                and atom_counts_pattern(source).match(name[1:].rsplit(".", 2)[0])
            )
        )
        unlisted = any(p.match(name) for p in patterns) and name not in listed
        if path.is_file() and (stray_tmp or unlisted):
            log.warning("removing %s left by an interrupted ingest", path)
            path.unlink()


@dataclass
class _Stream:
    """One (domain, split) stream of a source: its writer and where a resumed run picks up.

    to_resume: records still to pass over when they are read, as already in this stream's kept shards.
    position: records of this stream whose labelling has settled so far (resumed ones included).
    checkpoints: per finished shard, the position after its last record and the label failures before it.
    """

    domain: str
    split: str
    to_resume: int = 0
    position: int = 0
    label_skipped: Counter = field(default_factory=Counter)
    checkpoints: list[dict[str, Any]] = field(default_factory=list)
    writer: ShardWriter | None = None


class _SourceIngest:
    """The state of one ingest run of one source; lists each finished shard as it is published."""

    def __init__(
        self,
        out_dir: Path,
        manifest: Manifest,
        record: dict[str, Any],
        options: IngestOptions,
        skipped: Counter,
        keys: KeyIndex,
    ) -> None:
        self.out_dir, self.manifest, self.record = out_dir, manifest, record
        self.options, self.source = options, options.source
        self.skipped = skipped
        self.streams: dict[str, _Stream] = {}
        self.keys = keys
        self.own_keys: set[str] = set()
        self.run = {"started": _now(), "finished": None, "resumed": 0, "labelled": 0, "written": 0}
        record.setdefault("runs", []).append(self.run)
        # the source's listed shards all have checkpoints here (_resume_point keeps no other)
        for info in sorted(manifest.select(source=self.source), key=lambda s: shard_index(s.path)):
            self._stream(info.domain, info.split).checkpoints.append(manifest.resume[info.path])
        for stream in self.streams.values():
            if stream.checkpoints:
                stream.to_resume = stream.position = stream.checkpoints[-1]["position"]
                stream.label_skipped = Counter(stream.checkpoints[-1]["label_skipped"])

    def _stream(self, domain: str, split: str) -> _Stream:
        name = _stream_name(domain, split)
        if name not in self.streams:
            self.streams[name] = _Stream(domain, split)
        return self.streams[name]

    def _writer(self, stream: _Stream) -> ShardWriter:
        if stream.writer is None:
            stream.writer = ShardWriter(
                self.out_dir,
                source=self.source,
                domain=stream.domain,
                split=stream.split,
                shard_size=self.options.shard_size,
                start_index=len(stream.checkpoints),
                on_shard=lambda info, s=stream: self._commit(s, info),
            )
        return stream.writer

    def _skip(self, counter: Counter, reason: str, err: BadInputError) -> None:
        """Raise ``err``, or with ``skip_bad`` log it and count it in ``counter[reason]``."""
        if not self.options.skip_bad:
            raise err
        log.warning("skipped (%s): %s", reason, err)
        counter[reason] += 1

    def _commit(self, stream: _Stream, info: ShardInfo) -> None:
        """A shard was published: index its keys, then list it (one line appended to the source's list)."""
        checkpoint = {"position": stream.position, "label_skipped": dict(stream.label_skipped)}
        stream.checkpoints.append(checkpoint)
        assert stream.writer is not None
        self.keys.add(info, stream.writer.finished_keys)
        append_shard(self.out_dir, self.manifest, info, checkpoint)

    def total_skipped(self) -> Counter:
        total = Counter(self.skipped)
        for stream in self.streams.values():
            total.update(stream.label_skipped)
        return total

    def write(self, *, status: str) -> None:
        """Refresh this source's record from its shards and write ``manifest.json`` atomically (the shard lists
        are on disk already)."""
        shards = self.manifest.select(source=self.source)
        domains: Counter = Counter()
        splits: Counter = Counter()
        for s in shards:
            domains[s.domain] += s.num_samples
            splits[s.split] += s.num_samples
        self.record.update(
            status=status,
            shards=len(shards),
            structures=sum(s.num_samples for s in shards),
            atoms=sum(s.num_atoms for s in shards),
            domains=dict(sorted(domains.items())),
            splits=dict(sorted(splits.items())),
            skipped=dict(sorted(self.total_skipped().items())),
            streams={name: s.checkpoints for name, s in sorted(self.streams.items()) if s.checkpoints},
        )
        self.manifest.sources[self.source] = self.record
        write_manifest_index(self.out_dir, self.manifest)

    def _prepared(self, structures: Iterable[Structure]) -> Iterator[Structure]:
        """Validated, split, unique records that still need a shard (resumed ones are skipped here)."""
        domain, seed, fractions = self.options.domain, self.options.seed, self.options.split_fractions
        for s in structures:
            try:
                s = validate(s if domain is None else replace(s, domain=domain))
            except BadInputError as err:
                self._skip(self.skipped, err.field or "record", err)
                continue
            group = s.group_id or s.key
            s = replace(s, group_id=group, split=assign_split(group, seed, fractions))
            owner = self.keys.owner(s.key)
            if owner is not None and owner != self.source:
                self._skip(
                    self.skipped,
                    "duplicate key",
                    BadInputError(
                        f"key already in the corpus from source {owner!r}; "
                        f"source {self.source!r} cannot add it again",
                        record=s.key,
                        field="key",
                    ),
                )
                continue
            if s.key in self.own_keys:
                self._skip(
                    self.skipped,
                    "duplicate key",
                    BadInputError(f"key appears twice in source {self.source!r}", record=s.key, field="key"),
                )
                continue
            self.own_keys.add(s.key)
            stream = self._stream(s.domain, s.split)
            if stream.to_resume:
                stream.to_resume -= 1
                self.run["resumed"] += 1
                continue
            self.run["labelled"] += 1
            yield s

    def _outcomes(self, records: Iterator[Structure]) -> Iterator[LabelOutcome]:
        """One outcome per record, in order; with ``label="none"`` every record stands as it is."""
        if self.options.label == "none":
            return (LabelOutcome(s, structure=s) for s in records)
        return label_outcomes(records, self.options.label, workers=self.options.workers, progress=False)

    def ingest(self, structures: Iterable[Structure]) -> None:
        write_shard_list(self.out_dir, self.manifest, self.source)  # exists before manifest.json names it
        self.write(status="running")
        bar = tqdm(
            desc=f"ingest {self.source}",
            unit=" structures",
            disable=not self.options.progress,
            file=sys.stderr,
        )
        try:
            with closing(self._outcomes(self._prepared(structures))) as outcomes:
                for outcome in outcomes:
                    stream = self._stream(outcome.record.domain, outcome.record.split)
                    stream.position += 1
                    if not outcome.ok:
                        self._skip(stream.label_skipped, outcome.failure.field, outcome.failure)
                        continue
                    self._writer(stream).write(outcome.structure)
                    self.run["written"] += 1
                    bar.update()
            for stream in self.streams.values():
                if stream.writer is not None:
                    stream.writer.close()
        except BaseException:
            for stream in self.streams.values():
                if stream.writer is not None:
                    stream.writer.abort()
            raise
        finally:
            bar.close()
        self.run["finished"] = _now()
        self.write(status="complete")


def _drop_shards(out_dir: Path, manifest: Manifest, doomed: list[ShardInfo]) -> None:
    """Unlist shards (their sources' shard lists and manifest.json written first), then delete their files."""
    names = {s.path for s in doomed}
    manifest.shards = [s for s in manifest.shards if s.path not in names]
    for name in names:
        manifest.resume.pop(name, None)
    for source in sorted({s.source for s in doomed}):
        write_shard_list(out_dir, manifest, source)
    write_manifest_index(out_dir, manifest)
    for info in sorted(doomed, key=lambda s: s.path):
        (out_dir / info.path).unlink(missing_ok=True)
        if info.natoms_file is not None:
            (out_dir / info.natoms_file.path).unlink(missing_ok=True)


def _resume_point(out_dir: Path, manifest: Manifest, source: str, record: dict[str, Any]) -> bool:
    """Keep the source's intact leading shards per stream (those with a resume checkpoint), drop the rest; True
    if every listed shard was kept."""
    by_stream: dict[str, list[ShardInfo]] = {}
    for info in manifest.select(source=source):
        by_stream.setdefault(_stream_name(info.domain, info.split), []).append(info)
    doomed: list[ShardInfo] = []
    for shards in by_stream.values():
        shards.sort(key=lambda s: shard_index(s.path))
        keep = 0
        while (
            keep < len(shards)
            and shards[keep].path in manifest.resume
            and shard_index(shards[keep].path) == keep
            and _shard_is_intact(out_dir, shards[keep])
        ):
            keep += 1
        for info in shards[keep:]:
            log.warning("shard %s is damaged or out of order: it will be written again", info.path)
        doomed.extend(shards[keep:])
    if doomed:
        record["status"] = "running"
        _drop_shards(out_dir, manifest, doomed)
    return not doomed


def input_files(inputs: Any) -> list[str]:
    """The input file paths an ``inputs`` description names (its ``files`` list), or none."""
    files = inputs.get("files") if isinstance(inputs, dict) else None
    if not isinstance(files, list):
        return []
    return [str(f["path"]) for f in files if isinstance(f, dict) and "path" in f]


def _refuse_to_drop_inputs(out: Path, source: str, record: dict[str, Any], inputs: Any) -> None:
    """A rebuild of ``source`` from ``inputs`` would delete the records of a file it was built from that these
    inputs do not include (a different file with the same stem): refuse, naming both."""
    before, now = input_files(record.get("inputs")), input_files(inputs)
    dropped = [path for path in before if path not in now]
    if before and now and dropped:
        raise BadInputError(
            f"source {source!r} already holds {record.get('structures', 0)} structures read from "
            f"{', '.join(dropped)}; this ingest reads {', '.join(now)}, and rebuilding the source would delete "
            "them. Name these inputs a source of their own (--source NAME), or pass --rebuild to replace them",
            path=str(out),
            field="source",
        )


def ingest_structures(
    structures: Iterable[Structure],
    out_dir: str | Path,
    options: IngestOptions | None = None,
    *,
    skipped: Counter | None = None,
    **fields: Any,
) -> dict[str, Any]:
    """Shard ``structures`` into the corpus ``out_dir`` as one source; returns the source's manifest record.

    ``options``, or its fields as keywords (``source="g2", label="xtb"``; given beside ``options``, they
    replace its fields).   skipped: counter the caller's readers count their skipped records in; it is
    stored with this source's own skips.
    """
    options = IngestOptions(**fields) if options is None else replace(options, **fields)
    source = options.source
    fingerprint = options.fingerprint()
    out = output_folder(out_dir)
    with corpus_lock(out):
        manifest = read_manifest(out) if manifest_path(out).is_file() else Manifest()
        if manifest.version < 2:
            log.warning("upgrading the corpus manifest to version 2 (atom counts beside the shards)")
            write_manifest(out, manifest)
        _remove_strays(out, manifest, source)
        record = manifest.sources.get(source)
        if record is not None and not options.rebuild and record.get("fingerprint") != fingerprint:
            _refuse_to_drop_inputs(out, source, record, options.inputs)
        if record is not None and (options.rebuild or record.get("fingerprint") != fingerprint):
            log.warning(
                "rebuilding source %r (%s)",
                source,
                "--rebuild" if options.rebuild else "inputs or options changed",
            )
            doomed = manifest.select(source=source)
            del manifest.sources[source]
            _drop_shards(out, manifest, doomed)
            record = None
        if record is not None:
            intact = _resume_point(out, manifest, source, record)
            if intact and record.get("status") == "complete":
                log.warning(
                    "source %r is complete and its shards are intact: nothing to do "
                    "(rebuild it to read its inputs again)",
                    source,
                )
                return record
        else:
            if manifest.select(
                source=source
            ):  # shards listed without a source record: not ingest's, replace them
                _drop_shards(out, manifest, manifest.select(source=source))
            record = {
                "fingerprint": fingerprint,
                "options": options.shard_options(),
                "inputs": options.inputs,
                "streams": {},
            }
        with KeyIndex(out) as keys:
            keys.sync(manifest)
            run = _SourceIngest(
                out, manifest, record, options, Counter() if skipped is None else skipped, keys
            )
            run.ingest(structures)
        return record
