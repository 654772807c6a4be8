"""Read every structure of one split of a corpus, in manifest order (no neighbour lists, no shuffling).

For whole-split passes: the reference-energy fit before training, evaluation on a test split. Damaged
samples are skipped, logged with their shard and member, and counted, as in the stream.
"""

from __future__ import annotations

import logging
from collections import Counter
from collections.abc import Iterator

import webdataset as wds

from data_pipeline.sample_codec import decode_sample
from data_pipeline.schema import BadInputError, Structure
from data_pipeline.stream_plan import load_shard_table

log = logging.getLogger(__name__)


def read_split(
    corpora: list[str], split: str, *, source: str | None = None, skipped: Counter | None = None
) -> Iterator[Structure]:
    """Structures of ``split`` in the corpus folders (only ``source``'s shards, when given); each undecodable
    sample adds 1 to ``skipped["decode"]``."""
    urls = [entry.url for entry in load_shard_table(corpora, split, source=source)]
    dataset = wds.WebDataset(
        urls,
        shardshuffle=False,
        handler=wds.warn_and_continue,
        empty_check=False,
        nodesplitter=lambda shards: shards,
        workersplitter=lambda shards: shards,
    )
    for sample in dataset:
        try:
            yield decode_sample(sample)
        except BadInputError as err:
            log.warning("skipping an undecodable sample: %s", err)
            if skipped is not None:
                skipped["decode"] += 1
