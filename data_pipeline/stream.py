"""The stream: webdataset shards in, packed torch_geometric batches out, resumable at the exact next batch.

Per rank there are ``max(1, num_workers)`` readers (DataLoader worker processes, or the main process when
``num_workers=0``). Each reader follows its sample plan (``data_pipeline.stream_plan``: shard and sample
split, shuffle buffer, domain mix, packing by atoms, all from the manifest and the seed), fetches the raw
samples (``data_pipeline.shard_reader``), decodes them, builds each graph with its neighbour list, splits a
batch further when it breaks ``max_edges``, and hands batches over with a report: its position in the plan
and what it skipped. The main process delivers batches in a fixed round-robin order over the readers,
whatever order the worker processes finish in, and keeps the positions and counts; that is the state.
Resuming replays each reader's plan (no shard is read for that) and continues with the next batch. Resuming
on another number of ranks or workers (:meth:`StructureStream.load_resharded`) replays every old reader's plan
to find what each epoch has already delivered, and the new readers share out the rest of it.
"""

from __future__ import annotations

import dataclasses
import hashlib
import itertools
import logging
import os
from collections import Counter, deque
from collections.abc import Generator, Iterator, Mapping
from dataclasses import asdict, dataclass, field, fields
from typing import Any

import torch
from torch.utils.data import DataLoader, IterableDataset, get_worker_info
from torch_geometric.data import Batch, Data

from data_pipeline.config_mapping import from_mapping
from data_pipeline.graph import structure_to_graph
from data_pipeline.mixing import domain_probabilities
from data_pipeline.packing import pack_by_atoms
from data_pipeline.sample_codec import decode_sample
from data_pipeline.schema import BadInputError
from data_pipeline.shard_reader import ShardReader
from data_pipeline.stream_plan import (
    DeliveredSamples,
    ReaderSlot,
    SamplePlan,
    SampleRef,
    ShardEntry,
    ShardRead,
    load_shard_table,
    shard_reads_in_epoch,
    splits_by_shard,
)
from data_pipeline.vocab import LEVELS_OF_THEORY
from data_pipeline.wire import from_wire, to_wire

log = logging.getLogger(__name__)

STATE_FORMAT = "atomfm-stream-state"
STATE_VERSION = 1
LOGGED_KEYS = 100
REPLAY_PREFIX = "replay:"  # the mixing key of a replay corpus's domain (``replay:molecule``)
# Stream settings that enter the resume fingerprint through what they decide rather than as themselves.
SETUP_DERIVED = {
    "corpus": "shards",  # the shards' names, sample counts and sha256
    "domain_weights": "probabilities",
    "temperature": "probabilities",
    "num_workers": "readers",
    "replay_corpus": "shards",
    "replay_fraction": "probabilities",
    "replay_domain_weights": "probabilities",
}
LAYOUT = ("rank", "world_size", "readers")  # what a resume on another layout may change (load_resharded)


@dataclass
class StreamConfig:
    """Stream settings; ``from_dict`` (e.g. a YAML section) rejects unknown keys by name."""

    corpus: list[str] | str = field(  # corpus folders, each with a manifest.json (one folder: a string)
        metadata={
            "missing": "no corpus given: set it to one or more corpus folders (each with a manifest.json)"
        }
    )
    split: str = "train"
    domain_weights: dict[str, float] | None = None  # per-structure mix; None: temperature over corpus sizes
    temperature: float = 1.0  # p_d ∝ n_d^(1/T)
    max_atoms: int = 2048  # per batch; a larger structure gets a batch of its own (or is skipped, below)
    max_edges: int | None = None
    max_structures: int | None = None
    cutoff: float = 6.0  # Å, neighbour-list cutoff
    shuffle_buffer: int = 1000  # samples per domain and reader
    seed: int = 0
    repeat: bool = True  # endless (a new shuffle every pass) vs one pass (every sample exactly once)
    num_workers: int = 2  # DataLoader worker processes per rank (0: read in the main process)
    skip_oversize: bool = False  # drop structures over max_atoms / max_edges instead of batching them alone
    levels_of_theory: list[str] | None = (
        None  # vocabulary levels are indexed in (the trainer sets the model's)
    )
    properties: list[str] = field(default_factory=list)  # structure properties batches carry (``properties``)
    atom_labels: list[str] = field(default_factory=list)  # per-atom classes batches carry (``atom_labels``)
    replay_corpus: list[str] = field(default_factory=list)  # corpora replayed beside ``corpus`` (fine-tuning)
    replay_fraction: float = 0.0  # the expected share of structures drawn from ``replay_corpus``
    replay_split: str = "train"
    replay_domain_weights: dict[str, float] | None = None  # the replayed domains' mix (None: temperature)

    def __post_init__(self) -> None:
        if isinstance(self.corpus, str | os.PathLike):
            self.corpus = [self.corpus]
        if not isinstance(self.corpus, list | tuple) or not self.corpus:
            raise BadInputError("expected a corpus folder or a non-empty list of them", field="corpus")
        self.corpus = [os.fspath(c) for c in self.corpus]
        _require(isinstance(self.split, str) and self.split != "", "split", "expected a split name")
        if self.domain_weights is not None:
            _require(isinstance(self.domain_weights, Mapping), "domain_weights", "expected {domain: weight}")
            for name, weight in self.domain_weights.items():
                _require(_is_number(weight), f"domain_weights.{name}", f"expected a number, got {weight!r}")
            self.domain_weights = {str(k): float(v) for k, v in self.domain_weights.items()}
        _require(_is_number(self.temperature) and self.temperature > 0, "temperature", "must be > 0")
        _require(_is_number(self.cutoff) and self.cutoff > 0, "cutoff", "must be > 0 Å")
        for name, minimum in (("max_atoms", 1), ("shuffle_buffer", 0), ("seed", 0), ("num_workers", 0)):
            value = getattr(self, name)
            _require(
                _is_int(value) and value >= minimum, name, f"expected an integer >= {minimum}, got {value!r}"
            )
        for name in ("max_edges", "max_structures"):
            value = getattr(self, name)
            _require(
                value is None or (_is_int(value) and value >= 1),
                name,
                f"expected null or >= 1, got {value!r}",
            )
        for name in ("repeat", "skip_oversize"):
            _require(isinstance(getattr(self, name), bool), name, "expected true or false")
        if isinstance(self.replay_corpus, str | os.PathLike):
            self.replay_corpus = [self.replay_corpus]
        self.replay_corpus = [os.fspath(c) for c in self.replay_corpus]
        _require(
            _is_number(self.replay_fraction) and 0.0 <= self.replay_fraction < 1.0,
            "replay_fraction",
            f"expected a fraction in [0, 1), got {self.replay_fraction!r}",
        )
        _require(
            not (self.replay_fraction > 0 and not self.replay_corpus),
            "replay_corpus",
            "replay_fraction is set but no replay corpus is named",
        )

    @classmethod
    def from_dict(cls, d: Mapping[str, Any], *, source: str | None = None) -> StreamConfig:
        """Settings from a mapping; ``source`` (the config file) is named in every error."""
        return from_mapping(cls, d, source=source)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass
class StreamStats:
    """What a rank's stream delivered and skipped; worker processes' counts included."""

    batches: int = 0
    structures: int = 0
    atoms: int = 0
    edges: int = 0
    oversize: int = 0  # structures over max_atoms or max_edges (batched alone, or skipped with skip_oversize)
    skipped_samples: dict[str, int] = field(default_factory=dict)  # reason -> count
    skipped_shards: int = 0  # damaged shards (tar errors, truncation) that cost this rank samples
    skipped_keys: list[str] = field(default_factory=list)  # "shard#member (key)" of the latest skips

    def skip(self, reason: str, where: str) -> None:
        self.skipped_samples[reason] = self.skipped_samples.get(reason, 0) + 1
        self.skipped_keys = [*self.skipped_keys, where][-LOGGED_KEYS:]

    def add(self, other: StreamStats) -> None:
        for name in ("batches", "structures", "atoms", "edges", "oversize", "skipped_shards"):
            setattr(self, name, getattr(self, name) + getattr(other, name))
        for reason, n in other.skipped_samples.items():
            self.skipped_samples[reason] = self.skipped_samples.get(reason, 0) + n
        self.skipped_keys = [*self.skipped_keys, *other.skipped_keys][-LOGGED_KEYS:]

    def count(self, batch: Batch) -> None:
        self.batches += 1
        self.structures += batch.num_graphs
        self.atoms += batch.num_nodes
        self.edges += batch.edge_index.shape[1]

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> StreamStats:
        return cls(**{f.name: d[f.name] for f in fields(cls) if f.name in d})


@dataclass
class _ReaderReport:
    """Sent with each batch: the reader's position after it and what it skipped on the way."""

    reader: int
    progress: tuple[int, int]  # (planned batches finished, edge-split parts of the next one delivered)
    done: bool
    stats: StreamStats
    part_samples: tuple[tuple[int, int, int], ...] = ()  # (epoch, shard, member) of a part sent mid-batch


class StructureStream:
    """Iterable of torch_geometric ``Batch`` objects (fields in ``docs/batch.md``) for one rank.

    ``rank`` and ``world_size`` default to torch.distributed's when a process group is initialised, else
    0 and 1. ``state_dict()`` is per rank: save each rank's. ``stats`` counts what this rank delivered and
    skipped. With ``repeat=False`` each ``iter()`` is one epoch (the next one after a complete pass).
    """

    def __init__(self, cfg: StreamConfig, rank: int | None = None, world_size: int | None = None) -> None:
        self.cfg = cfg
        self.rank, self.world_size = _resolve_rank(rank, world_size)
        self.table: list[ShardEntry] = load_shard_table(cfg.corpus, cfg.split)
        self.probabilities = _probabilities(self.table, cfg.domain_weights, cfg.temperature, "domain_weights")
        if cfg.replay_corpus and cfg.replay_fraction > 0:
            replayed = load_shard_table(cfg.replay_corpus, cfg.replay_split)
            share = _probabilities(
                replayed, cfg.replay_domain_weights, cfg.temperature, "replay_domain_weights"
            )
            f = cfg.replay_fraction
            self.probabilities = {d: p * (1.0 - f) for d, p in self.probabilities.items()} | {
                REPLAY_PREFIX + d: p * f for d, p in share.items()
            }
            self.table += [dataclasses.replace(e, domain=REPLAY_PREFIX + e.domain) for e in replayed]
        self.stats = StreamStats()
        self.epoch = 0
        self.delivered = DeliveredSamples.for_table(self.table)  # under earlier layouts (load_resharded)
        self._start_epoch()
        self._check_atom_counts()
        slots = self.world_size * self.num_readers
        split_by = {
            d: "shard" if splits_by_shard(self.table, d, slots) else "sample"
            for d, p in self.probabilities.items()
            if p > 0
        }
        log.info(
            "stream over %d shards: p=%s, rank %d/%d, %d readers, split by %s",
            len(self.table),
            {d: round(p, 4) for d, p in self.probabilities.items()},
            self.rank,
            self.world_size,
            self.num_readers,
            split_by,
        )

    @property
    def num_readers(self) -> int:
        """Readers per rank: the DataLoader workers, or the main process alone."""
        return max(1, self.cfg.num_workers)

    def _epoch_reads(self) -> Iterator[ShardRead]:
        """Every shard read of this rank's readers in the current epoch."""
        slots = self.world_size * self.num_readers
        for reader in range(self.num_readers):
            slot = ReaderSlot(self.rank * self.num_readers + reader, slots)
            for domain, p in self.probabilities.items():
                if p > 0:
                    yield from shard_reads_in_epoch(
                        self.table, domain, self.epoch, self.cfg.seed, slot, delivered=self.delivered
                    )

    def structures_per_epoch(self) -> int:
        """Structures this rank reads in one pass over its share (before skips), from the manifest alone."""
        return sum(len(read.members) for read in self._epoch_reads())

    def _check_atom_counts(self) -> None:
        """Read the atom counts of the shards this rank reads first (a missing or damaged count file is a
        :class:`BadInputError` naming it, here rather than in a worker process)."""
        for shard in sorted({read.shard for read in self._epoch_reads()}):
            self.table[shard].natoms()

    def __iter__(self) -> Iterator[Batch]:
        """The rest of the current epoch (all of it after a complete one); endless with ``repeat``."""
        resumed = (
            any(self._done)
            or any(p != (0, 0) for p in self._progress)
            or self.delivered.mask(self.epoch)
            is not None  # this rank's rest of a resharded epoch may be empty
        )
        readers = _Readers(
            self.cfg,
            self.table,
            self.probabilities,
            rank=self.rank,
            world_size=self.world_size,
            epoch=self.epoch,
            progress=list(self._progress),
            done=list(self._done),
            delivered=self.delivered,
        )
        if self.cfg.num_workers == 0:
            reports: Iterator[tuple[Batch | None, _ReaderReport]] = readers.reports(0)
        else:
            # each batch crosses from its worker as one pickled message (data_pipeline/wire.py)
            loader = DataLoader(
                readers, batch_size=None, num_workers=self.cfg.num_workers, collate_fn=to_wire
            )
            reports = map(from_wire, loader)
        delivered = yield from self._in_reader_order(reports)
        if not delivered and resumed and not self.cfg.repeat:
            yield from self  # resumed after the last batch of an epoch: go on with the next one

    def _in_reader_order(
        self, reports: Iterator[tuple[Batch | None, _ReaderReport]]
    ) -> Generator[Batch, None, int]:
        """Round robin over the readers from ``_next_reader``, whatever order the workers deliver in.

        Returns the number of batches delivered.
        """
        waiting: dict[int, deque] = {k: deque() for k in range(self.num_readers)}
        delivered = 0
        starving = _Starvation(self)
        while not all(self._done):
            k = self._next_reader
            while not waiting[k]:
                try:
                    batch, report = next(reports)
                except StopIteration:
                    raise RuntimeError(
                        f"stream reader {k} of rank {self.rank} stopped before its end"
                    ) from None
                waiting[report.reader].append((batch, report))
            batch, report = waiting[k].popleft()
            self._progress[k] = report.progress
            self._done[k] = report.done
            self._partial[k] = [*self._partial[k], *report.part_samples] if report.progress[1] else []
            self.stats.add(report.stats)
            self._next_reader = self._reader_after(k)
            starving.after(batch, report.stats)
            if batch is not None:
                self.stats.count(batch)
                delivered += 1
                yield batch
        if self.cfg.repeat:
            log.warning("rank %d has no samples to repeat: its readers' shares are empty", self.rank)
            return delivered
        self.delivered.epochs.pop(self.epoch, None)
        self.epoch += 1
        self._start_epoch()
        return delivered

    def _reader_after(self, k: int) -> int:
        for step in range(1, self.num_readers + 1):
            j = (k + step) % self.num_readers
            if not self._done[j]:
                return j
        return k

    def _start_epoch(self) -> None:
        self._progress: list[tuple[int, int]] = [(0, 0)] * self.num_readers
        self._done: list[bool] = [False] * self.num_readers
        # (epoch, shard, member) of the parts delivered of a planned batch split under max_edges, per reader
        self._partial: list[list[tuple[int, int, int]]] = [[] for _ in range(self.num_readers)]
        self._next_reader = 0

    def _setup(self) -> dict[str, Any]:
        """Everything the batch sequence depends on; resuming exactly needs all of it unchanged.

        Every ``StreamConfig`` field is in it, as itself or through what it decides (:data:`SETUP_DERIVED`),
        so a new setting can never escape the resume check.
        """
        shards = hashlib.sha256(
            "\n".join(f"{e.name} {e.num_samples} {e.sha256}" for e in self.table).encode()
        ).hexdigest()
        setup: dict[str, Any] = {"shards": shards, "probabilities": self.probabilities}
        setup.update(
            (f.name, getattr(self.cfg, f.name)) for f in fields(self.cfg) if f.name not in SETUP_DERIVED
        )
        setup.update(rank=self.rank, world_size=self.world_size, readers=self.num_readers)
        return setup

    def state_dict(self) -> dict[str, Any]:
        """This rank's position (after the last delivered batch) and counts; plain JSON-able values."""
        return {
            "format": STATE_FORMAT,
            "version": STATE_VERSION,
            "setup": self._setup(),
            "epoch": self.epoch,
            "next_reader": self._next_reader,
            "progress": [list(p) for p in self._progress],
            "done": list(self._done),
            "partial": [[list(s) for s in samples] for samples in self._partial],
            "delivered": self.delivered.to_state(),
            "stats": self.stats.to_dict(),
        }

    def load_state_dict(self, state: Mapping[str, Any], strict: bool = True) -> None:
        """Continue after the batch the state was saved at: the next batches equal an uninterrupted run's.

        That needs the same corpus, settings, rank, world size and reader count; otherwise a ValueError names
        what changed, or with ``strict=False`` (e.g. an elastic restart on another world size) a warning,
        and the saved epoch starts again from its beginning with the new layout.
        """
        if state.get("format") != STATE_FORMAT or state.get("version") != STATE_VERSION:
            raise ValueError(
                f"not an atomfm stream state (format {state.get('format')!r}, version {state.get('version')!r})"
            )
        saved, now = state["setup"], self._setup()
        changed = [
            f"{k}: saved {saved.get(k)!r}, now {now.get(k)!r}" for k in now if saved.get(k) != now.get(k)
        ]
        self.stats = StreamStats.from_dict(state["stats"])
        self.epoch = int(state["epoch"])
        self.delivered.load_state(state.get("delivered", {}))
        if changed:
            message = "the stream state was saved under other settings; " + "; ".join(changed)
            if strict:
                raise ValueError(message + " (load with strict=False to restart the saved epoch)")
            log.warning("%s: restarting epoch %d from its beginning", message, self.epoch)
            self._start_epoch()
            return
        self._progress = [(int(p), int(s)) for p, s in state["progress"]]
        self._done = [bool(d) for d in state["done"]]
        self._partial = [[tuple(x) for x in samples] for samples in state.get("partial", self._partial)]
        self._next_reader = int(state["next_reader"])

    def load_resharded(self, states: list[Mapping[str, Any]]) -> None:
        """Continue a run whose stream states ``states`` (one per old rank, in rank order) were saved by another
        number of ranks or workers: this rank takes its share of what the epoch has not yet delivered.

        Every old reader's plan is replayed up to its saved position (no shard is read) to mark the samples it
        delivered in each epoch; the new plans leave those out, so over the epoch every sample is delivered
        exactly once. Settings other than the layout must be unchanged (a ValueError names what changed).
        """
        for state in states:
            if state.get("format") != STATE_FORMAT or state.get("version") != STATE_VERSION:
                raise ValueError("not an atomfm stream state")
        saved = states[0]["setup"]
        now = self._setup()
        changed = [
            f"{k}: saved {saved.get(k)!r}, now {now.get(k)!r}"
            for k in now
            if k not in LAYOUT and saved.get(k) != now.get(k)
        ]
        if changed:
            raise ValueError("the stream state was saved under other settings; " + "; ".join(changed))
        if len(states) != saved["world_size"]:
            raise ValueError(f"expected the stream states of {saved['world_size']} ranks, got {len(states)}")
        old_readers, old_slots = int(saved["readers"]), int(saved["world_size"]) * int(saved["readers"])
        delivered = DeliveredSamples.for_table(self.table)
        first = min(int(state["epoch"]) for state in states)
        domains = [d for d, p in self.probabilities.items() if p > 0]
        for rank, state in enumerate(states):
            epoch = int(state["epoch"])
            inherited = DeliveredSamples.for_table(self.table)  # what this rank's plans left out
            inherited.load_state(state.get("delivered", {}))
            delivered.merge(inherited)
            for reader in range(old_readers):
                slot = ReaderSlot(rank * old_readers + reader, old_slots)
                finished = [*range(first, epoch), *([epoch] if state["done"][reader] else [])]
                for e in finished:  # whole shares: the reader has passed these epochs
                    for domain in domains:
                        for read in shard_reads_in_epoch(self.table, domain, e, self.cfg.seed, slot):
                            delivered.add(e, ((read.shard, m) for m in read.members))
                if state["done"][reader]:
                    continue
                plan = _sample_plan(self.cfg, self.table, self.probabilities, slot, epoch, inherited)
                batches = int(state["progress"][reader][0])
                for refs in itertools.islice(plan, batches):
                    for ref in refs:
                        delivered.add(ref.epoch, [(ref.shard, ref.member)])
                for e, shard, member in state.get("partial", [[]] * old_readers)[reader]:
                    delivered.add(int(e), [(int(shard), int(member))])
        self.epoch = delivered.drop_complete(self.table, domains, first)
        self.delivered = delivered
        self._start_epoch()
        self.stats = (
            StreamStats.from_dict(states[self.rank]["stats"]) if self.rank < len(states) else StreamStats()
        )
        left = sum(
            len(read.members)
            for reader in range(self.num_readers)
            for domain in domains
            for read in shard_reads_in_epoch(
                self.table,
                domain,
                self.epoch,
                self.cfg.seed,
                ReaderSlot(self.rank * self.num_readers + reader, self.world_size * self.num_readers),
                delivered=self.delivered,
            )
        )
        log.info(
            "stream of rank %d/%d resharded from %d ranks x %d readers: epoch %d, %d samples of it left here",
            self.rank,
            self.world_size,
            saved["world_size"],
            old_readers,
            self.epoch,
            left,
        )


class StreamStarvedError(BadInputError):
    """The stream skips everything it reads and can deliver no batch (every structure oversize, undecodable, ...)."""


class _Starvation:
    """Counts the structures skipped since the last delivered batch; more than a whole pass over this rank's
    share means no batch can ever come, and :class:`StreamStarvedError` says why instead of spinning."""

    def __init__(self, stream: StructureStream) -> None:
        self.stream = stream
        self.limit: int | None = None
        self.reasons: Counter = Counter()

    def after(self, batch: Batch | None, stats: StreamStats) -> None:
        if batch is not None:
            self.reasons.clear()
            return
        self.reasons.update(stats.skipped_samples)
        if not self.reasons:
            return
        if self.limit is None:
            self.limit = max(1, self.stream.structures_per_epoch())
        if sum(self.reasons.values()) > self.limit:
            raise StreamStarvedError(starved_message(self.stream, self.reasons), field="data")


def starved_message(stream: StructureStream, reasons: Mapping[str, int]) -> str:
    """Why rank ``stream.rank`` delivers nothing, and what to change."""
    cfg = stream.cfg
    why = ", ".join(f"{reason} {n}" for reason, n in sorted(reasons.items()))
    advice = {
        "oversize": f"every structure is over data.max_atoms={cfg.max_atoms} (or data.max_edges) and "
        "data.skip_oversize is on: raise the budget or turn skip_oversize off",
        "undecodable": "the samples do not decode: `atomfm data inspect` names them",
        "missing": "the shards are missing or damaged: `atomfm data inspect` names them",
    }
    hints = "; ".join(advice[r] for r in sorted(reasons) if r in advice)
    return (
        f"the stream of rank {stream.rank} over split {cfg.split!r} of {', '.join(cfg.corpus)} skipped every "
        f"structure of a whole pass ({why}) and can deliver no batch" + (f": {hints}" if hints else "")
    )


class _Readers(IterableDataset):
    """What each reader runs (in a DataLoader worker, or in the main process with ``num_workers=0``)."""

    def __init__(
        self,
        cfg: StreamConfig,
        table: list[ShardEntry],
        probabilities: dict[str, float],
        *,
        rank: int,
        world_size: int,
        epoch: int,
        progress: list[tuple[int, int]],
        done: list[bool],
        delivered: DeliveredSamples | None = None,
    ) -> None:
        self.cfg, self.table, self.probabilities = cfg, table, probabilities
        self.rank, self.world_size, self.epoch = rank, world_size, epoch
        self.progress, self.done, self.delivered = progress, done, delivered

    def __iter__(self) -> Iterator[tuple[Batch | None, _ReaderReport]]:
        info = get_worker_info()
        return self.reports(0 if info is None else info.id)

    def reports(self, reader: int) -> Iterator[tuple[Batch | None, _ReaderReport]]:
        """Batches with reports, from this reader's saved position; ends with a report marked done."""
        if self.done[reader]:
            return
        readers = len(self.progress)
        plan = _sample_plan(
            self.cfg,
            self.table,
            self.probabilities,
            ReaderSlot(self.rank * readers + reader, self.world_size * readers),
            self.epoch,
            self.delivered,
        )
        start, start_part = self.progress[reader]
        planned = iter(plan)
        for replayed in range(start):
            if next(planned, None) is None:
                raise ValueError(
                    f"reader {reader}: the saved position ({start} batches) is past its plan ({replayed})"
                )
        fetch = ShardReader(
            self.table,
            {d: plan.reads(d) for d in plan.probabilities},
            cursor=dict(plan.cursor),
            outstanding={d: set(seqs) for d, seqs in plan.outstanding.items()},
        )
        finished = start
        for position, refs in enumerate(planned, start=start):
            parts, samples, stats = self._graphs(refs, fetch)
            first = start_part if position == start else 0
            if first:
                stats = StreamStats()  # counted before the state was saved
            finished = position + 1
            if not parts:
                yield None, _ReaderReport(reader, (finished, 0), False, stats)
                continue
            for part in range(first, len(parts)):
                mid = part < len(parts) - 1
                after = (position, part + 1) if mid else (finished, 0)
                report = _ReaderReport(reader, after, False, stats, samples[part] if mid else ())
                yield Batch.from_data_list(parts[part]), report
                stats = StreamStats()
        yield None, _ReaderReport(reader, (finished, 0), True, StreamStats())

    def _graphs(
        self, refs: list[SampleRef], fetch: ShardReader
    ) -> tuple[list[list[Data]], list[tuple[tuple[int, int, int], ...]], StreamStats]:
        """Graphs of one planned batch, split into parts under ``max_edges``, each part's (epoch, shard,
        member) samples, and what was skipped."""
        cfg, stats, graphs = self.cfg, StreamStats(), []
        origin: dict[int, tuple[int, int, int]] = {}
        for ref in refs:
            fetched = fetch.get(ref)
            if fetched.raw is None:
                stats.skip("missing", fetched.where)
                if fetched.damaged_shard is not None:
                    stats.skipped_shards += 1
                continue
            if ref.natoms > cfg.max_atoms and cfg.skip_oversize:
                stats.oversize += 1
                stats.skip("oversize", fetched.where)
                continue
            try:
                s = decode_sample(fetched.raw, source=fetched.url)
            except BadInputError as err:
                log.warning("skipped sample %s: %s", fetched.where, err)
                stats.skip("undecodable", f"{fetched.where} ({err.record})")
                continue
            if s.num_atoms != ref.natoms:
                log.warning(
                    "skipped %s (%s): %d atoms, manifest says %d",
                    s.key,
                    fetched.where,
                    s.num_atoms,
                    ref.natoms,
                )
                stats.skip("natoms_mismatch", f"{fetched.where} ({s.key})")
                continue
            try:
                graph = structure_to_graph(
                    s, cfg.cutoff, cfg.levels_of_theory or LEVELS_OF_THEORY, cfg.properties, cfg.atom_labels
                )
            except (ValueError, RuntimeError) as err:
                log.warning("skipped %s (%s): no neighbour list: %s", s.key, fetched.where, err)
                stats.skip("no_graph", f"{fetched.where} ({s.key})")
                continue
            graph.replay = torch.tensor([ref.domain.startswith(REPLAY_PREFIX)])
            graphs.append(graph)
            origin[id(graph)] = (ref.epoch, ref.shard, ref.member)
            if s.num_atoms > cfg.max_atoms:
                stats.oversize += 1
        if cfg.max_edges is None:
            return ([graphs] if graphs else []), [()], stats
        parts = []
        for part in pack_by_atoms(
            graphs, cfg.max_atoms, natoms=_num_nodes, num_edges=_num_edges, max_edges=cfg.max_edges
        ):
            alone = part[0]
            if len(part) == 1 and _num_edges(alone) > cfg.max_edges:
                if alone.num_nodes <= cfg.max_atoms:  # not counted already as over max_atoms
                    stats.oversize += 1
                if cfg.skip_oversize:
                    stats.skip("oversize", alone.key)
                    continue
            parts.append(part)
        return parts, [tuple(origin[id(g)] for g in part) for part in parts], stats


def _sample_plan(
    cfg: StreamConfig,
    table: list[ShardEntry],
    probabilities: dict[str, float],
    slot: ReaderSlot,
    epoch: int,
    delivered: DeliveredSamples | None,
) -> SamplePlan:
    """The plan of reader ``slot`` from ``epoch`` on, without what ``delivered`` marks."""
    return SamplePlan(
        table,
        probabilities,
        slot=slot,
        epoch=epoch,
        repeat=cfg.repeat,
        seed=cfg.seed,
        shuffle_buffer=cfg.shuffle_buffer,
        max_atoms=cfg.max_atoms,
        max_structures=cfg.max_structures,
        delivered=delivered,
    )


def _probabilities(
    table: list[ShardEntry], weights: dict[str, float] | None, temperature: float, field_name: str
) -> dict[str, float]:
    """Domain probabilities of a shard table (``mixing.domain_probabilities`` over its sample counts)."""
    sizes: Counter = Counter()
    for entry in table:
        sizes[entry.domain] += entry.num_samples
    try:
        return domain_probabilities(sizes, weights, temperature)
    except ValueError as err:
        raise BadInputError(str(err), field=field_name) from None


def _resolve_rank(rank: int | None, world_size: int | None) -> tuple[int, int]:
    if rank is None and world_size is None:
        if torch.distributed.is_available() and torch.distributed.is_initialized():
            return torch.distributed.get_rank(), torch.distributed.get_world_size()
        return 0, 1
    if rank is None or world_size is None:
        raise ValueError("give both rank and world_size, or neither (then torch.distributed's are used)")
    if not 0 <= rank < world_size:
        raise ValueError(f"rank {rank} is not in 0..{world_size - 1}")
    return rank, world_size


def _num_nodes(graph: Data) -> int:
    return graph.num_nodes


def _num_edges(graph: Data) -> int:
    return graph.edge_index.shape[1]


def _require(ok: bool, name: str, message: str) -> None:
    if not ok:
        raise BadInputError(message, field=name)


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _is_number(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)
