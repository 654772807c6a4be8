"""`atomfm data relabel CORPUS --label METHOD --out NEW`: the same structures at another level of theory.

Reads every split of a corpus (optionally one domain, optionally a seeded subset of groups), labels each
structure with a labeller (``xtb-gfn1``, ``chgnet``, ...) and ingests them into a new corpus as one source.
Splits are assigned by hashing group ids as at ingestion, with the seed and fractions the source corpus was
ingested with (from its manifest), so a structure keeps its split: a model fine-tuned on the new corpus is
tested on structures its pretraining never saw.
"""

from __future__ import annotations

import argparse
import sys
from collections import Counter
from collections.abc import Iterator

import numpy as np

from data_pipeline.corpus_reader import read_split
from data_pipeline.ingest import IngestOptions, ingest_structures
from data_pipeline.manifest import manifest_path, read_manifest
from data_pipeline.schema import BadInputError, Structure
from data_pipeline.splits import SPLITS


def corpus_structures(
    corpus: str, *, domain: str | None, max_groups: int | None, seed: int
) -> Iterator[Structure]:
    """Every structure of ``corpus`` (all splits), of ``domain``, from at most ``max_groups`` seeded groups."""
    chosen: set[str] | None = None
    if max_groups is not None:
        groups = sorted({s.group_id for split in SPLITS for s in split_or_empty(corpus, split) if of_domain(s, domain)})
        order = np.random.default_rng(seed).permutation(len(groups))[:max_groups]
        chosen = {groups[i] for i in order}
    for split in SPLITS:
        for s in split_or_empty(corpus, split):
            if of_domain(s, domain) and (chosen is None or s.group_id in chosen):
                yield s


def split_or_empty(corpus: str, split: str) -> Iterator[Structure]:
    """The structures of one split; a split the corpus does not have is empty."""
    try:
        yield from read_split([corpus], split)
    except BadInputError as err:
        if err.field != "split":  # a split the corpus does not have is simply empty
            raise


def of_domain(s: Structure, domain: str | None) -> bool:
    return domain is None or s.domain == domain


def split_options(corpus: str) -> tuple[int, list[float]]:
    """The (seed, split fractions) every source of ``corpus`` was ingested with; they must agree."""
    found = {
        (record["options"]["seed"], tuple(record["options"]["split_fractions"]))
        for record in read_manifest(corpus).sources.values()
        if "options" in record
    }
    if len(found) != 1:
        raise BadInputError(
            f"its sources were split with {len(found)} different seeds or fractions; relabel one source at a time",
            path=str(manifest_path(corpus)),
            field="sources.options",
        )
    seed, fractions = found.pop()
    return int(seed), list(fractions)


def main(args: argparse.Namespace) -> int:
    try:
        split_seed, fractions = split_options(args.corpus)
        structures = corpus_structures(
            args.corpus, domain=args.domain, max_groups=args.max_groups, seed=args.seed
        )
        options = IngestOptions(
            source=args.source or f"relabel-{args.label}",
            label=args.label,
            skip_bad=True,
            workers=args.workers,
            seed=split_seed,
            split_fractions=fractions,
            inputs={
                "corpus": args.corpus,
                "domain": args.domain,
                "max_groups": args.max_groups,
                "seed": args.seed,
            },
        )
        skipped: Counter = Counter()
        record = ingest_structures(structures, args.out, options, skipped=skipped)
    except BadInputError as err:
        print(f"atomfm data relabel: error: {err}", file=sys.stderr)
        return 2
    print(
        f"relabelled {record['structures']} structures with {args.label} into {args.out}: {record['splits']}"
        + (f"; skipped {record['skipped']}" if record["skipped"] else "")
    )
    return 0
