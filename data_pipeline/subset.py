"""`atomfm data subset CORPUS --split train --structures N --out NEW`: a seeded subset of one split, labels kept.

For learning curves over the size of a labelled set: whole groups (a molecule's conformers, a protein's
frames) are taken in a seeded order until N structures are in, the last group cut to fit, so subsets made with
one seed are nested (the 50 are among the 200). Records are copied as they are (``label="none"``) and split by
the same group hash, seed and fractions the source corpus was ingested with, so every one lands in the split it
came from: a model trained on the subset is still tested on the source's test split, which it never saw.
"""

from __future__ import annotations

import argparse
import sys
from collections import Counter
from collections.abc import Iterator

import numpy as np

from data_pipeline.ingest import IngestOptions, ingest_structures
from data_pipeline.relabel import of_domain, split_options, split_or_empty
from data_pipeline.schema import BadInputError, Structure


def chosen_keys(corpus: str, *, split: str, domain: str | None, structures: int | None, seed: int) -> set[str]:
    """Keys of ``structures`` structures of ``split`` (all of them when None), whole groups in a seeded order."""
    groups: dict[str, list[str]] = {}
    for s in split_or_empty(corpus, split):
        if of_domain(s, domain):
            groups.setdefault(s.group_id, []).append(s.key)
    available = sum(len(keys) for keys in groups.values())
    if structures is None:
        structures = available
    if structures < 1 or structures > available:
        raise BadInputError(
            f"asked for {structures} structures; the {split} split has {available}"
            + (f" of domain {domain}" if domain else ""),
            field="--structures",
        )
    names = sorted(groups)
    keys: list[str] = []
    for i in np.random.default_rng(seed).permutation(len(names)):
        keys.extend(groups[names[i]][: structures - len(keys)])
        if len(keys) == structures:
            break
    return set(keys)


def subset_structures(corpus: str, split: str, keys: set[str]) -> Iterator[Structure]:
    for s in split_or_empty(corpus, split):
        if s.key in keys:
            yield s


def main(args: argparse.Namespace) -> int:
    try:
        split_seed, fractions = split_options(args.corpus)
        options = IngestOptions(
            source=args.source or f"subset-{args.split}",
            label="none",
            seed=split_seed,
            split_fractions=fractions,
            inputs={
                "corpus": args.corpus,
                "split": args.split,
                "domain": args.domain,
                "structures": args.structures,
                "seed": args.seed,
            },
        )
        keys = chosen_keys(
            args.corpus, split=args.split, domain=args.domain, structures=args.structures, seed=args.seed
        )  # before ingesting: a bad --structures is an error before anything is written
        structures = subset_structures(args.corpus, args.split, keys)
        skipped: Counter = Counter()
        record = ingest_structures(structures, args.out, options, skipped=skipped)
    except BadInputError as err:
        print(f"atomfm data subset: error: {err}", file=sys.stderr)
        return 2
    print(f"copied {record['structures']} structures of {args.corpus}'s {args.split} split into {args.out}: "
          f"{record['splits']}")
    return 0
