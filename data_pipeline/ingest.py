"""`atomfm data ingest`: structure files → validated, split, labelled records → webdataset shards + manifest.

One call ingests one *source* into a corpus folder; several sources make one corpus. Per record:
validate → split by hashing the group id → key uniqueness check → (resume skip) → label → shard. The
manifest is rewritten atomically after every finished shard, so an interrupted run's manifest lists
exactly its complete shards. Re-running with the same inputs and options resumes: finished shards are
verified (sha256) and kept, and their records are skipped per (domain, split) stream before labelling.
Different inputs or options, or ``rebuild=True``, rebuild the source: its entries leave the manifest
first, then its files are deleted, so the manifest never lists a missing file.
"""

from __future__ import annotations

import argparse
import fcntl
import glob
import hashlib
import json
import logging
import os
import re
import sys
import tarfile
from collections import Counter, deque
from collections.abc import Iterable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field, replace
from datetime import datetime, timezone
from itertools import chain
from pathlib import Path
from typing import Any

from tqdm import tqdm

from data_pipeline.labels import LABELLERS, label_structures
from data_pipeline.manifest import Manifest, ShardInfo, manifest_path, read_manifest, write_manifest
from data_pipeline.readers import READERS, ReaderOptions, read_structures, supported_suffixes
from data_pipeline.readers.sources import split_name
from data_pipeline.schema import DOMAINS, BadInputError, Structure, validate
from data_pipeline.shards import TMP_SUFFIX, ShardWriter, sha256_of
from data_pipeline.splits import DEFAULT_FRACTIONS, SPLITS, assign_split, check_fractions, parse_fractions

log = logging.getLogger(__name__)

SOURCE_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.+-]*$")
LOCK_NAME = ".ingest.lock"
_SHARD_INDEX = re.compile(r"-(\d{6})\.tar$")


def shard_pattern(source: str) -> re.Pattern[str]:
    """File names of ``source``'s finished shards (``{source}-{domain}-{split}-{index:06d}.tar``)."""
    return re.compile(rf"^{re.escape(source)}-({'|'.join(DOMAINS)})-({'|'.join(SPLITS)})-\d{{6}}\.tar$")


def check_source_name(source: str) -> str:
    if not SOURCE_NAME.match(source or ""):
        raise BadInputError(
            f"source name {source!r} must start with a letter or digit and contain only "
            "letters, digits and _ . + -",
            field="source",
        )
    return source


def options_fingerprint(options: dict[str, Any], inputs: Any) -> str:
    """SHA-256 of the canonical JSON of what decides a source's shards: options and a description of the inputs."""
    text = json.dumps({"options": options, "inputs": inputs}, sort_keys=True, default=str)
    return hashlib.sha256(text.encode()).hexdigest()


@contextmanager
def corpus_lock(out_dir: Path) -> Iterator[None]:
    """Hold the corpus folder's ingest lock: one ingest writes a corpus at a time (released on any exit, even kill)."""
    with open(out_dir / LOCK_NAME, "a") as handle:
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise BadInputError(
                "another `atomfm data ingest` is writing this corpus; wait for it to finish",
                path=str(out_dir),
            ) from None
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def _now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="seconds")


def _stream_name(domain: str, split: str) -> str:
    return f"{domain}-{split}"


def _shard_index(path: str) -> int:
    match = _SHARD_INDEX.search(path)
    if match is None:
        raise BadInputError("shard name does not end in -NNNNNN.tar", path=path, field="path")
    return int(match.group(1))


def _shard_is_intact(out_dir: Path, info: ShardInfo) -> bool:
    path = out_dir / info.path
    return path.is_file() and path.stat().st_size == info.bytes and sha256_of(path) == info.sha256


def _remove_strays(out_dir: Path, manifest: Manifest, source: str) -> None:
    """Delete what an interrupted run can leave: temporary shards and manifests, and this source's unlisted shards."""
    listed = {s.path for s in manifest.shards}
    pattern = shard_pattern(source)
    for path in sorted(out_dir.iterdir()):
        name = path.name
        stray_tmp = name.endswith(".tar" + TMP_SUFFIX) or name.startswith(
            f".{manifest_path(out_dir).name}.tmp-"
        )
        unlisted = pattern.match(name) is not None and name not in listed
        if path.is_file() and (stray_tmp or unlisted):
            log.warning("removing %s left by an interrupted ingest", path)
            path.unlink()


def _corpus_keys(out_dir: Path, manifest: Manifest, *, exclude_source: str) -> dict[str, str]:
    """key → source for every structure of the corpus's other sources, read from their shards' JSON members."""
    owners: dict[str, str] = {}
    for info in manifest.shards:
        if info.source == exclude_source:
            continue
        path = out_dir / info.path
        try:
            with tarfile.open(path) as tar:
                for member in tar:
                    if member.isfile() and member.name.endswith(".json"):
                        owners[json.loads(tar.extractfile(member).read())["key"]] = info.source
        except (OSError, tarfile.TarError, ValueError, KeyError) as err:
            raise BadInputError(
                f"cannot read the keys of this shard of source {info.source!r} ({err}); "
                f"`atomfm data inspect` shows the damage, and re-running {info.source!r}'s ingest repairs it",
                path=str(path),
            ) from None
    return owners


@dataclass
class _Stream:
    """One (domain, split) stream of a source: its writer and where a resumed run picks up.

    position: records that reached labelling in this stream so far (resumed ones included).
    checkpoints: per finished shard, the position after its last record and the label failures before it.
    """

    domain: str
    split: str
    resume_skip: int = 0
    position: int = 0
    label_skipped: Counter = field(default_factory=Counter)
    checkpoints: list[dict[str, Any]] = field(default_factory=list)
    writer: ShardWriter | None = None
    committed_position: int = 0


class _SourceIngest:
    """The state of one ingest run of one source; commits the manifest after every finished shard."""

    def __init__(
        self,
        out_dir: Path,
        manifest: Manifest,
        record: dict[str, Any],
        *,
        source: str,
        domain: str | None,
        label: str,
        shard_size: int,
        skip_bad: bool,
        workers: int | None,
        seed: int,
        fractions: tuple[float, float, float],
        skipped: Counter,
        progress: bool,
    ) -> None:
        self.out_dir, self.manifest, self.record = out_dir, manifest, record
        self.source, self.domain, self.label = source, domain, label
        self.shard_size, self.skip_bad, self.workers = shard_size, skip_bad, workers
        self.seed, self.fractions = seed, fractions
        self.skipped = skipped
        self.progress = progress
        self.streams: dict[str, _Stream] = {}
        self.other_keys = _corpus_keys(out_dir, manifest, exclude_source=source)
        self.own_keys: set[str] = set()
        self.pending: deque[tuple[str, _Stream, int]] = deque()
        self.label_counter: Counter = Counter()
        self.label_counted: Counter = Counter()
        self.run = {"started": _now(), "finished": None, "resumed": 0, "labelled": 0, "written": 0}
        record.setdefault("runs", []).append(self.run)
        for name, checkpoints in record.get("streams", {}).items():
            domain_name, split = name.rsplit("-", 1)
            stream = self._stream(domain_name, split)
            stream.checkpoints = list(checkpoints)
            if checkpoints:
                stream.resume_skip = checkpoints[-1]["position"]
                stream.label_skipped = Counter(checkpoints[-1]["label_skipped"])

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
                shard_size=self.shard_size,
                start_index=len(stream.checkpoints),
                on_shard=lambda info, s=stream: self._commit(s, info),
            )
        return stream.writer

    def _skip(self, reason: str, err: BadInputError) -> None:
        if not self.skip_bad:
            raise err
        log.warning("skipped (%s): %s", reason, err)
        self.skipped[reason] += 1

    def _commit(self, stream: _Stream, info: ShardInfo) -> None:
        stream.checkpoints.append(
            {"position": stream.committed_position, "label_skipped": dict(stream.label_skipped)}
        )
        self.manifest.shards.append(info)
        self.write(status="running")

    def total_skipped(self) -> Counter:
        total = Counter(self.skipped)
        for stream in self.streams.values():
            total.update(stream.label_skipped)
        return total

    def write(self, *, status: str) -> None:
        """Refresh this source's record from its shards and rewrite the manifest atomically."""
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
        self.manifest.shards.sort(key=lambda s: s.path)
        write_manifest(self.out_dir, self.manifest)

    def _prepared(self, structures: Iterable[Structure]) -> Iterator[Structure]:
        """Validated, split, unique records that still need a shard (resumed ones are skipped here)."""
        for s in structures:
            try:
                s = validate(s if self.domain is None else replace(s, domain=self.domain))
            except BadInputError as err:
                self._skip(err.field or "record", err)
                continue
            group = s.group_id or s.key
            s = replace(s, group_id=group, split=assign_split(group, self.seed, self.fractions))
            if s.key in self.other_keys:
                self._skip(
                    "duplicate key",
                    BadInputError(
                        f"key already in the corpus from source {self.other_keys[s.key]!r}; "
                        f"source {self.source!r} cannot add it again",
                        record=s.key,
                        field="key",
                    ),
                )
                continue
            if s.key in self.own_keys:
                self._skip(
                    "duplicate key",
                    BadInputError(f"key appears twice in source {self.source!r}", record=s.key, field="key"),
                )
                continue
            self.own_keys.add(s.key)
            stream = self._stream(s.domain, s.split)
            stream.position += 1
            if stream.position <= stream.resume_skip:
                self.run["resumed"] += 1
                continue
            self.pending.append((s.key, stream, stream.position))
            self.run["labelled"] += 1
            yield s

    def _labelled(self, records: Iterator[Structure]) -> Iterator[Structure]:
        if self.label == "none":
            return records
        return label_structures(
            records,
            self.label,
            workers=self.workers,
            skip_bad=self.skip_bad,
            counter=self.label_counter,
            progress=False,
        )

    def _settle(self, until_key: str | None) -> tuple[_Stream, int] | None:
        """Pop pending records up to ``until_key`` (None: all); the ones popped before it failed labelling."""
        failed: list[_Stream] = []
        found = None
        while self.pending:
            key, stream, position = self.pending.popleft()
            if key == until_key:
                found = (stream, position)
                break
            failed.append(stream)
        if until_key is not None and found is None:
            raise RuntimeError(f"the labeller returned {until_key!r}, which it was not given")
        reasons = self.label_counter - self.label_counted
        self.label_counted = Counter(self.label_counter)
        causes = sorted(reasons.elements())
        for i, stream in enumerate(failed):
            stream.label_skipped[causes[i] if i < len(causes) else "label failed"] += 1
        return found

    def ingest(self, structures: Iterable[Structure]) -> None:
        self.write(status="running")
        bar = tqdm(
            desc=f"ingest {self.source}", unit=" structures", disable=not self.progress, file=sys.stderr
        )
        try:
            for s in self._labelled(self._prepared(structures)):
                stream, position = self._settle(s.key)
                stream.committed_position = position
                self._writer(stream).write(s)
                self.run["written"] += 1
                bar.update()
            self._settle(None)
            for stream in self.streams.values():
                stream.committed_position = stream.position
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
    """Unlist shards (manifest written first), then delete their files."""
    names = {s.path for s in doomed}
    manifest.shards = [s for s in manifest.shards if s.path not in names]
    write_manifest(out_dir, manifest)
    for name in sorted(names):
        (out_dir / name).unlink(missing_ok=True)


def _resume_point(out_dir: Path, manifest: Manifest, source: str, record: dict[str, Any]) -> bool:
    """Keep the source's intact leading shards per stream, drop the rest; True if every listed shard was kept."""
    checkpoints = record.get("streams", {})
    by_stream: dict[str, list[ShardInfo]] = {}
    for info in manifest.select(source=source):
        by_stream.setdefault(_stream_name(info.domain, info.split), []).append(info)
    kept_checkpoints: dict[str, list[dict[str, Any]]] = {}
    doomed: list[ShardInfo] = []
    for name, shards in by_stream.items():
        shards.sort(key=lambda s: _shard_index(s.path))
        known = checkpoints.get(name, [])
        keep = 0
        while (
            keep < len(shards)
            and keep < len(known)
            and _shard_index(shards[keep].path) == keep
            and _shard_is_intact(out_dir, shards[keep])
        ):
            keep += 1
        for info in shards[keep:]:
            log.warning("shard %s is damaged or out of order: it will be written again", info.path)
        doomed.extend(shards[keep:])
        if keep:
            kept_checkpoints[name] = known[:keep]
    record["streams"] = kept_checkpoints
    if doomed:
        record["status"] = "running"
        _drop_shards(out_dir, manifest, doomed)
    return not doomed


def ingest_structures(
    structures: Iterable[Structure],
    out_dir: str | Path,
    *,
    source: str,
    domain: str | None = None,
    label: str = "none",
    shard_size: int = 1000,
    skip_bad: bool = False,
    workers: int | None = None,
    seed: int = 0,
    split_fractions: Sequence[float] = DEFAULT_FRACTIONS,
    rebuild: bool = False,
    inputs: Any = None,
    skipped: Counter | None = None,
    progress: bool = True,
) -> dict[str, Any]:
    """Shard ``structures`` into the corpus ``out_dir`` as ``source``; returns the source's manifest record.

    domain: overrides every record's domain.   label: a method of :func:`label_structures` or ``"none"``
    (keep the labels records carry).   inputs: JSON-serialisable description of where the structures come
    from (files, sizes, reader options); with the options it makes the fingerprint that decides between
    resuming and rebuilding.   skipped: counter the caller's readers count their skipped records in; it
    is stored with this source's own skips.
    """
    out = Path(out_dir)
    check_source_name(source)
    fractions = check_fractions(split_fractions)
    if domain is not None and domain not in DOMAINS:
        raise BadInputError(
            f"unknown domain {domain!r}; expected one of {', '.join(DOMAINS)}", field="domain"
        )
    if shard_size < 1:
        raise BadInputError(f"shard size must be >= 1, got {shard_size}", field="shard_size")
    if label != "none" and label not in LABELLERS:
        raise BadInputError(
            f"unknown label method {label!r}; expected none or one of {', '.join(LABELLERS)}", field="label"
        )
    options = {
        "domain": domain,
        "label": label,
        "shard_size": shard_size,
        "seed": seed,
        "split_fractions": list(fractions),
    }
    fingerprint = options_fingerprint(options, inputs)
    out.mkdir(parents=True, exist_ok=True)
    with corpus_lock(out):
        manifest = read_manifest(out) if manifest_path(out).is_file() else Manifest()
        _remove_strays(out, manifest, source)
        record = manifest.sources.get(source)
        if record is not None and (rebuild or record.get("fingerprint") != fingerprint):
            log.warning(
                "rebuilding source %r (%s)", source, "--rebuild" if rebuild else "inputs or options changed"
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
            record = {"fingerprint": fingerprint, "options": options, "inputs": inputs, "streams": {}}
        run = _SourceIngest(
            out,
            manifest,
            record,
            source=source,
            domain=domain,
            label=label,
            shard_size=shard_size,
            skip_bad=skip_bad,
            workers=workers,
            seed=seed,
            fractions=fractions,
            skipped=Counter() if skipped is None else skipped,
            progress=progress,
        )
        run.ingest(structures)
        return record


def _has_glob(text: str) -> bool:
    return any(c in text for c in "*?[")


def _is_known_format(path: Path) -> bool:
    return path.name.lower().endswith(supported_suffixes())


def resolve_inputs(inputs: Sequence[str]) -> list[Path]:
    """Files named by INPUT arguments: files as given, folders searched recursively for known formats, globs."""
    files: list[Path] = []
    for arg in inputs:
        if _has_glob(arg):
            found = [Path(p) for p in sorted(glob.glob(arg, recursive=True))]
            found = [p for p in found if p.is_file() and _is_known_format(p)]
            if not found:
                raise BadInputError("the pattern matches no structure file of a known format", path=arg)
        elif Path(arg).is_dir():
            found = [p for p in sorted(Path(arg).rglob("*")) if p.is_file() and _is_known_format(p)]
            if not found:
                raise BadInputError("the folder holds no structure file of a known format", path=arg)
        elif not Path(arg).is_file():
            raise BadInputError("no such file or folder", path=arg)
        elif not _is_known_format(Path(arg)):
            raise BadInputError(
                f"unknown file format; supported: {', '.join(READERS)} "
                "(text formats also with .gz, .bz2, .xz)",
                path=arg,
                field="suffix",
            )
        else:
            found = [Path(arg)]
        files.extend(found)
    unique: dict[Path, Path] = {}
    for f in files:
        unique.setdefault(f.resolve(), f)
    return list(unique.values())


def key_prefixes(files: Sequence[Path], source: str) -> dict[Path, str]:
    """First part of each file's record keys: ``source`` for one file; for several, ``source/`` plus the
    file's path below their common folder without its format suffix (``mols/set1/water``), so keys stay unique."""
    if len(files) == 1:
        return {files[0]: source}
    resolved = [f.resolve() for f in files]
    common = Path(os.path.commonpath([r.parent for r in resolved]))
    prefixes = {}
    for f, r in zip(files, resolved, strict=True):
        relative = r.relative_to(common)
        prefixes[f] = "/".join([source, *relative.parent.parts, split_name(relative)[0]])
    return prefixes


def default_source_name(inputs: Sequence[str]) -> str:
    """The source name when none is given: the first INPUT's file stem or folder name (a glob: its folder)."""
    arg = inputs[0]
    if _has_glob(arg):
        arg = re.split(r"[*?\[]", arg, maxsplit=1)[0].rstrip("/") or "."
    path = Path(arg).resolve()
    name = path.name if path.is_dir() else split_name(path)[0]
    return check_source_name(re.sub(r"[^A-Za-z0-9_.+-]", "_", name))


def _describe_inputs(files: list[Path], options: ReaderOptions) -> dict[str, Any]:
    reader = {k: v for k, v in asdict(options).items() if k != "skip_bad"}
    described = []
    for f in files:
        stat = f.stat()
        described.append({"path": str(f.resolve()), "bytes": stat.st_size, "mtime_ns": stat.st_mtime_ns})
    return {"files": described, "reader": reader}


def _print_record(source: str, out_dir: str, record: dict[str, Any]) -> None:
    print(
        f"source {source}: {record['structures']} structures, {record['atoms']} atoms in "
        f"{record['shards']} shards → {out_dir}"
    )
    for name, count in record["domains"].items():
        print(f"  {name:<10} {count:>10}")
    print("  splits: " + ", ".join(f"{k} {v}" for k, v in record["splits"].items()))
    if record["skipped"]:
        print(f"  skipped {sum(record['skipped'].values())} records:")
        for reason, count in record["skipped"].items():
            print(f"    {count:>8}  {reason}")
    last = record["runs"][-1]
    if last["resumed"]:
        print(f"  last run resumed after {last['resumed']} records already done, and wrote {last['written']}")


def main(args: argparse.Namespace) -> int:
    """The `atomfm data ingest` command."""
    try:
        files = resolve_inputs(args.inputs)
        source = check_source_name(args.source) if args.source else default_source_name(args.inputs)
        fractions = parse_fractions(args.split_fractions)
        options = ReaderOptions(
            protein_models=args.protein_models,
            altloc=args.altloc,
            keep_water=args.keep_water,
            keep_ligands=args.keep_ligands,
            skip_bad=args.skip_bad,
        )
        counter: Counter = Counter()
        prefixes = key_prefixes(files, source)
        structures = chain.from_iterable(
            read_structures(f, domain=args.domain, options=options, source=prefixes[f], counter=counter)
            for f in files
        )
        record = ingest_structures(
            structures,
            args.out,
            source=source,
            domain=args.domain,
            label=args.label,
            shard_size=args.shard_size,
            skip_bad=args.skip_bad,
            workers=args.workers,
            seed=args.seed,
            split_fractions=fractions,
            rebuild=args.rebuild,
            inputs=_describe_inputs(files, options),
            skipped=counter,
        )
    except BadInputError as err:
        print(f"atomfm data ingest: error: {err}", file=sys.stderr)
        return 2
    _print_record(source, args.out, record)
    return 0
