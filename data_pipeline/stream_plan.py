"""The sample plan: which samples one reader gets, in which order, in which batches, before a shard is read.

A reader slot is one (rank, worker) pair: slot ``rank * workers + worker`` of ``world_size * workers``.
For each domain, every slot draws the same shard order for an epoch from the seed, then takes its share:

- a domain with at least as many shards as slots is split by shard (slot s reads shards s, s + slots, ...);
- a domain with fewer shards is split by sample: every slot reads every shard and keeps the samples whose
  running index i (over the epoch's shard order) has ``i % slots == s``.

Either way, one pass gives every sample of the split to exactly one slot. Each slot then shuffles each
domain's samples through a buffer, mixes the domains by probability and packs by atom count, all with
seeded generators and the per-sample atom counts (each shard's count file, read when a slot reads the
shard; inline in a version 1 manifest). The plan is therefore a pure function
of (manifest, settings, epoch, slot): to resume, a reader replays it without touching a shard.

When the number of slots changes mid-epoch (a resume on another world size or worker count), replaying the
old slots' plans up to their saved positions gives the samples already delivered in each epoch
(:class:`DeliveredSamples`); the new slots' plans take their usual shares of those epochs without them, so
the rest of the epoch is partitioned over the new slots and no sample is lost or delivered twice.
"""

from __future__ import annotations

import base64
import itertools
import zlib
from collections.abc import Iterable, Iterator, Mapping, Sequence
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
    members: Sequence[int]  # a range, or the members left after a layout change (ascending)
    first_seq: int


class SampleRef(NamedTuple):
    """One planned sample: ``seq`` numbers a slot's samples of one domain in reading order."""

    domain: str
    seq: int
    shard: int
    member: int
    natoms: int
    epoch: int = 0


@dataclass
class DeliveredSamples:
    """Samples of the split delivered in given epochs before the reader layout changed.

    ``epochs[e]`` is a bool mask over the shard table's samples in table order (sample ``offsets[shard] +
    member``); epochs without a mask had nothing delivered under an earlier layout.
    """

    offsets: np.ndarray  # [shards + 1] int64: where each shard's samples start
    epochs: dict[int, np.ndarray] = field(default_factory=dict)

    @classmethod
    def for_table(cls, table: Sequence[ShardEntry]) -> DeliveredSamples:
        sizes = [entry.num_samples for entry in table]
        return cls(np.concatenate([[0], np.cumsum(sizes, dtype=np.int64)]))

    def mask(self, epoch: int) -> np.ndarray | None:
        return self.epochs.get(epoch)

    def add(self, epoch: int, samples: Iterable[tuple[int, int]]) -> None:
        """Mark ``(shard, member)`` pairs of ``epoch`` delivered."""
        mask = self.epochs.get(epoch)
        if mask is None:
            mask = self.epochs[epoch] = np.zeros(int(self.offsets[-1]), dtype=bool)
        for shard, member in samples:
            mask[self.offsets[shard] + member] = True

    def merge(self, other: DeliveredSamples) -> None:
        for epoch, mask in other.epochs.items():
            mine = self.epochs.get(epoch)
            self.epochs[epoch] = mask.copy() if mine is None else mine | mask

    def drop_complete(self, table: Sequence[ShardEntry], domains: Iterable[str], first: int) -> int:
        """Forget the epochs before ``first`` and those after it whose every sample of ``domains`` is
        delivered; returns the first epoch that is not complete (the epoch a new layout starts in)."""
        wanted = np.zeros(int(self.offsets[-1]), dtype=bool)
        domains = set(domains)
        for shard, entry in enumerate(table):
            if entry.domain in domains:
                wanted[self.offsets[shard] : self.offsets[shard + 1]] = True
        for epoch in [e for e in self.epochs if e < first]:
            del self.epochs[epoch]
        epoch = first
        while epoch in self.epochs and bool(self.epochs[epoch][wanted].all()):
            del self.epochs[epoch]
            epoch += 1
        return epoch

    def to_state(self) -> dict[str, str]:
        """JSON-able: epoch → base64 of the packed mask."""
        return {str(e): base64.b64encode(np.packbits(m).tobytes()).decode() for e, m in self.epochs.items()}

    def load_state(self, state: Mapping[str, str]) -> None:
        n = int(self.offsets[-1])
        self.epochs = {
            int(e): np.unpackbits(np.frombuffer(base64.b64decode(b), dtype=np.uint8), count=n).astype(bool)
            for e, b in state.items()
        }


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
    table: list[ShardEntry],
    domain: str,
    epoch: int,
    seed: int,
    slot: ReaderSlot,
    first_seq: int = 0,
    delivered: DeliveredSamples | None = None,
) -> list[ShardRead]:
    """The slot's share of one domain in one epoch (see the module docstring), without the samples
    ``delivered`` marks for that epoch."""
    shards = [i for i, entry in enumerate(table) if entry.domain == domain]
    order = [shards[i] for i in _rng(seed, _SHARD_ORDER, _word(domain), epoch).permutation(len(shards))]
    if splits_by_shard(table, domain, slot.count):
        shares = [(shard, range(table[shard].num_samples)) for shard in order[slot.index :: slot.count]]
    else:
        shares, running = [], 0
        for shard in order:
            n = table[shard].num_samples
            shares.append((shard, range((slot.index - running) % slot.count, n, slot.count)))
            running += n
    mask = None if delivered is None else delivered.mask(epoch)
    reads = []
    seq = first_seq
    for shard, members in shares:
        if mask is not None:
            start = int(delivered.offsets[shard])
            members = tuple(m for m in members if not mask[start + m])
        if len(members):
            reads.append(ShardRead(shard, members, seq))
            seq += len(members)
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
        delivered: DeliveredSamples | None = None,
    ) -> None:
        self.table = table
        self.delivered = delivered
        self.probabilities = {d: p for d, p in probabilities.items() if p > 0}
        self.slot, self.epoch, self.repeat, self.seed = slot, epoch, repeat, seed
        self.shuffle_buffer, self.max_atoms, self.max_structures = shuffle_buffer, max_atoms, max_structures
        self.outstanding: dict[str, set[int]] = {d: set() for d in self.probabilities}
        self.cursor: dict[str, int] = dict.fromkeys(self.probabilities, 0)

    def reads(self, domain: str) -> Iterator[ShardRead]:
        """The slot's shard reads of ``domain``, epoch after epoch with ``repeat`` (ends if its share is empty)."""
        return (read for _, read in self.epoch_reads(domain))

    def epoch_reads(self, domain: str) -> Iterator[tuple[int, ShardRead]]:
        """(epoch, shard read) pairs of :meth:`reads`; samples delivered under an earlier layout are left out."""
        epochs = itertools.count(self.epoch) if self.repeat else [self.epoch]
        seq = 0
        for epoch in epochs:
            reads = shard_reads_in_epoch(self.table, domain, epoch, self.seed, self.slot, seq)
            if not reads:
                return
            if self.delivered is not None and self.delivered.mask(epoch) is not None:
                reads = shard_reads_in_epoch(
                    self.table, domain, epoch, self.seed, self.slot, seq, self.delivered
                )
            for read in reads:
                yield epoch, read
            if reads:
                seq = reads[-1].first_seq + len(reads[-1].members)

    def _refs(self, domain: str) -> Iterator[SampleRef]:
        outstanding = self.outstanding[domain]
        for epoch, read in self.epoch_reads(domain):
            natoms = self.table[read.shard].natoms()
            for seq, member in enumerate(read.members, start=read.first_seq):
                outstanding.add(seq)
                self.cursor[domain] = seq + 1
                yield SampleRef(domain, seq, read.shard, member, natoms[member], epoch)

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
