"""Raw samples for a reader slot's plan, read forward through each domain's shards with webdataset.

A damaged shard never stops the reader: webdataset's ``handler=`` hook records the tar error, and every
sample the manifest lists but the shard did not give is handed out as missing (the first one of a shard
also carries the damage, so that the stream counts the shard exactly once even after a resume).
"""

from __future__ import annotations

import logging
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from typing import Any

from webdataset.gopen import gopen
from webdataset.tariterators import group_by_keys, tar_file_expander

from data_pipeline.stream_plan import SampleRef, ShardEntry, ShardRead

log = logging.getLogger(__name__)


@dataclass
class FetchedSample:
    """One planned sample as read: the webdataset sample dict, or ``raw=None`` when the shard lost it."""

    raw: dict[str, Any] | None
    url: str
    member: int
    damaged_shard: str | None = None  # what went wrong, on the first sample a damaged shard lost

    @property
    def where(self) -> str:
        return f"{self.url}#{self.member:09d}"


class ShardReader:
    """Hands out the raw sample of each :class:`SampleRef`, in any order the plan asks for them.

    ``reads`` are the slot's shard reads per domain (``SamplePlan.reads``). Samples read ahead wait in memory
    until asked for (about a shuffle buffer's worth per domain). After a replay, ``cursor`` and ``outstanding``
    (from the replayed plan) say which samples are still to come: reading restarts at the shard of the
    earliest of them, and samples handed out before the replay are passed over.
    """

    def __init__(
        self,
        table: list[ShardEntry],
        reads: Mapping[str, Iterator[ShardRead]],
        *,
        cursor: Mapping[str, int] | None = None,
        outstanding: Mapping[str, set[int]] | None = None,
    ) -> None:
        self.table = table
        self._keep_from = {d: (cursor or {}).get(d, 0) for d in reads}
        self._keep = {d: set((outstanding or {}).get(d, ())) for d in reads}
        self._waiting: dict[str, dict[int, FetchedSample]] = {d: {} for d in reads}
        self._samples = {
            d: self._domain_samples(r, min(self._keep[d], default=self._keep_from[d]))
            for d, r in reads.items()
        }

    def get(self, ref: SampleRef) -> FetchedSample:
        waiting = self._waiting[ref.domain]
        while ref.seq not in waiting:
            try:
                seq, sample = next(self._samples[ref.domain])
            except StopIteration:
                raise RuntimeError(f"{ref.domain} shards ended before planned sample {ref}") from None
            if seq >= self._keep_from[ref.domain] or seq in self._keep[ref.domain]:
                waiting[seq] = sample
        self._keep[ref.domain].discard(ref.seq)
        return waiting.pop(ref.seq)

    def _domain_samples(self, reads: Iterator[ShardRead], start: int) -> Iterator[tuple[int, FetchedSample]]:
        for read in reads:
            if read.first_seq + len(read.members) > start:
                yield from self._shard_samples(read)

    def _shard_samples(self, read: ShardRead) -> Iterator[tuple[int, FetchedSample]]:
        url = self.table[read.shard].url
        wanted = {member: seq for seq, member in enumerate(read.members, start=read.first_seq)}
        errors: list[BaseException] = []

        def record(err: BaseException) -> bool:
            errors.append(err)
            return False

        try:
            stream = gopen(url)
        except Exception as err:  # a missing file, a refused URL: the shard is lost, the stream goes on
            errors.append(err)
        else:
            with stream:
                members = tar_file_expander(
                    [{"url": url, "stream": stream}],
                    handler=record,
                    select_files=lambda fname: _member_number(fname) in wanted,
                )
                for sample in group_by_keys(members, handler=record):
                    member = _member_number(sample["__key__"])
                    seq = wanted.pop(member, None)
                    if seq is not None:
                        yield seq, FetchedSample(sample, url, member)
        if not wanted:
            if errors:
                log.warning(
                    "shard %s: %s (after the last sample this reader needs)", url, _describe(errors[0])
                )
            return
        damage = _describe(errors[0]) if errors else "shard ends before all the samples its manifest lists"
        log.warning("damaged shard %s: %s; %d of its samples are skipped", url, damage, len(wanted))
        for i, (member, seq) in enumerate(sorted(wanted.items(), key=lambda kv: kv[1])):
            yield seq, FetchedSample(None, url, member, damage if i == 0 else None)


def _member_number(name: str) -> int | None:
    """Sample number of a tar member (``000000012.npz`` or key ``000000012``); None for foreign names."""
    stem = name.split(".", 1)[0]
    return int(stem) if stem.isdigit() else None


def _describe(err: BaseException) -> str:
    return f"{type(err).__name__}: {err.args[0] if err.args else err}"
