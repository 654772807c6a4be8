"""The sample plan: which samples one reader gets, in which order, in which batches, before a shard is read.

A reader slot is one (rank, worker) pair: slot ``rank * workers + worker`` of ``world_size * workers``.
For each domain, every slot draws the same shard order for an epoch from the seed, then takes its share:

- a domain with at least as many shards as slots is split by shard (slot s reads shards s, s + slots, ...);
- a domain with fewer shards is split by sample: every slot reads every shard and keeps the samples whose
  running index i (over the epoch's shard order) has ``i % slots == s``.

Either way, one pass gives every sample of the split to exactly one slot. Each slot then shuffles each
domain's samples through a buffer, mixes the domains by probability and packs by atom count, all with
seeded generators and the per-sample atom counts of ``manifest.json``. The plan is therefore a pure function
of (manifest, settings, epoch, slot): to resume, a reader replays it without touching a shard.
"""

from __future__ import annotations

import itertools
import zlib
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from typing import NamedTuple

import numpy as np

from data_pipeline.corpus_location import check_location, corpus_file_url
from data_pipeline.manifest import ShardInfo, read_manifest
from data_pipeline.mixing import mix_by_weight, shuffle_buffer
from data_pipeline.packing import pack_by_atoms
from data_pipeline.schema import BadInputError

_SHARD_ORDER, _SHUFFLE, _MIX = 1, 2, 3


@dataclass(frozen=True)
class ShardEntry:
    """One shard as the stream sees it: where it is, its domain and sample count; its samples' atom counts are
    read on first use (:meth:`natoms`) from its atom-counts file (or held inline, for a version 1 manifest)."""

    url: str
    name: str  # path inside its corpus (stable when the corpus moves)
    domain: str
    num_samples: int
    sha256: str
    info: ShardInfo = field(repr=False, compare=False)
    corpus: str = field(repr=False, compare=False)

    def natoms(self) -> list[int]:
        """Atoms of each sample, in member order (checked against the manifest's counts and checksum)."""
        return self.info.atom_counts(self.corpus).tolist()


@dataclass(frozen=True)
class ReaderSlot:
    index: int
    count: int


@dataclass(frozen=True)
class ShardRead:
    """The members of one shard that a slot reads, with the slot's running sample number of the first."""

    shard: int  # index in the shard table
    members: range
    first_seq: int


class SampleRef(NamedTuple):
    """One planned sample: ``seq`` numbers a slot's samples of one domain in reading order."""

    domain: str
    seq: int
    shard: int
    member: int
    natoms: int


def load_shard_table(corpora: list[str], split: str, *, source: str | None = None) -> list[ShardEntry]:
    """Every shard of ``split`` in the corpora (folders or URLs; only ``source``'s shards, when given), in corpus
    then manifest order. No atom counts are read here."""
    table = []
    for corpus in corpora:
        corpus = check_location(corpus)
        for info in read_manifest(corpus).select(split=split, source=source):
            url = corpus_file_url(corpus, info.path)
            table.append(ShardEntry(url, info.path, info.domain, info.num_samples, info.sha256, info, corpus))
    if not table:
        of_source = "" if source is None else f" from source {source!r}"
        raise BadInputError(f"no shards of split {split!r}{of_source} in {', '.join(corpora)}", field="split")
    return table


def splits_by_shard(table: list[ShardEntry], domain: str, slots: int) -> bool:
    """True when ``domain`` has enough shards to split by shard over ``slots`` readers, else split by sample."""
    return sum(entry.domain == domain for entry in table) >= slots


def shard_reads_in_epoch(
    table: list[ShardEntry], domain: str, epoch: int, seed: int, slot: ReaderSlot, first_seq: int = 0
) -> list[ShardRead]:
    """The slot's share of one domain in one epoch (see the module docstring)."""
    shards = [i for i, entry in enumerate(table) if entry.domain == domain]
    order = [shards[i] for i in _rng(seed, _SHARD_ORDER, _word(domain), epoch).permutation(len(shards))]
    reads = []
    seq = first_seq
    if splits_by_shard(table, domain, slot.count):
        for shard in order[slot.index :: slot.count]:
            reads.append(ShardRead(shard, range(table[shard].num_samples), seq))
            seq += table[shard].num_samples
        return reads
    running = 0
    for shard in order:
        n = table[shard].num_samples
        members = range((slot.index - running) % slot.count, n, slot.count)
        if len(members):
            reads.append(ShardRead(shard, members, seq))
            seq += len(members)
        running += n
    return reads


class SamplePlan:
    """The planned batches (lists of :class:`SampleRef`) of one slot: one epoch, or endless with ``repeat``.

    While iterating, ``outstanding[d]`` holds the ``seq`` of every sample of domain d drawn from the shard
    order but not yet in a yielded batch, and ``cursor[d]`` the next ``seq`` to draw: after a replay, these
    say which samples a reader still has to fetch.
    """

    def __init__(
        self,
        table: list[ShardEntry],
        probabilities: Mapping[str, float],
        *,
        slot: ReaderSlot,
        epoch: int,
        repeat: bool,
        seed: int,
        shuffle_buffer: int,
        max_atoms: int,
        max_structures: int | None,
    ) -> None:
        self.table = table
        self.probabilities = {d: p for d, p in probabilities.items() if p > 0}
        self.slot, self.epoch, self.repeat, self.seed = slot, epoch, repeat, seed
        self.shuffle_buffer, self.max_atoms, self.max_structures = shuffle_buffer, max_atoms, max_structures
        self.outstanding: dict[str, set[int]] = {d: set() for d in self.probabilities}
        self.cursor: dict[str, int] = dict.fromkeys(self.probabilities, 0)

    def reads(self, domain: str) -> Iterator[ShardRead]:
        """The slot's shard reads of ``domain``, epoch after epoch with ``repeat`` (ends if its share is empty)."""
        epochs = itertools.count(self.epoch) if self.repeat else [self.epoch]
        seq = 0
        for epoch in epochs:
            reads = shard_reads_in_epoch(self.table, domain, epoch, self.seed, self.slot, seq)
            if not reads:
                return
            yield from reads
            seq = reads[-1].first_seq + len(reads[-1].members)

    def _refs(self, domain: str) -> Iterator[SampleRef]:
        outstanding = self.outstanding[domain]
        for read in self.reads(domain):
            natoms = self.table[read.shard].natoms()
            for seq, member in enumerate(read.members, start=read.first_seq):
                outstanding.add(seq)
                self.cursor[domain] = seq + 1
                yield SampleRef(domain, seq, read.shard, member, natoms[member])

    def __iter__(self) -> Iterator[list[SampleRef]]:
        streams = {
            d: shuffle_buffer(
                self._refs(d),
                self.shuffle_buffer,
                _rng(self.seed, _SHUFFLE, _word(d), self.epoch, self.slot.index, self.slot.count),
            )
            for d in self.probabilities
        }
        mixed = mix_by_weight(
            streams, self.probabilities, _rng(self.seed, _MIX, self.epoch, self.slot.index, self.slot.count)
        )
        for batch in pack_by_atoms(
            mixed, self.max_atoms, natoms=_natoms_of_ref, max_structures=self.max_structures
        ):
            for ref in batch:
                self.outstanding[ref.domain].discard(ref.seq)
            yield batch


def _natoms_of_ref(ref: SampleRef) -> int:
    return ref.natoms


def _word(name: str) -> int:
    return zlib.crc32(name.encode())


def _rng(*words: int) -> np.random.Generator:
    return np.random.default_rng(np.random.SeedSequence(list(words)))
