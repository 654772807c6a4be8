"""`atomfm data annotate CORPUS --with secondary_structure --out NEW`: the same structures with derived labels.

Reads every split of a corpus (optionally one domain, optionally a seeded subset of groups), adds a label
derived from the structure itself (``secondary_structure``: DSSP's three states per residue, as a per-atom
class; :mod:`data_pipeline.secondary_structure`), keeps every label it had, and ingests the result into a
new corpus as one source, each structure in its own split (the source corpus's split seed and fractions),
as `atomfm data relabel` does.
"""

from __future__ import annotations

import argparse
import sys
from collections import Counter
from collections.abc import Callable, Iterator

from data_pipeline.ingest import IngestOptions, ingest_structures
from data_pipeline.relabel import corpus_structures, split_options
from data_pipeline.schema import BadInputError, Structure
from data_pipeline.secondary_structure import SECONDARY_STRUCTURE, with_secondary_structure

ANNOTATIONS: dict[str, Callable[[Structure], Structure]] = {SECONDARY_STRUCTURE: with_secondary_structure}


def annotated(structures: Iterator[Structure], annotation: str) -> Iterator[Structure]:
    add = ANNOTATIONS[annotation]
    for s in structures:
        yield add(s)


def main(args: argparse.Namespace) -> int:
    try:
        if args.annotation not in ANNOTATIONS:
            raise BadInputError(
                f"unknown annotation {args.annotation!r}; expected one of {', '.join(ANNOTATIONS)}",
                field="--with",
            )
        split_seed, fractions = split_options(args.corpus)
        structures = corpus_structures(
            args.corpus, domain=args.domain, max_groups=args.max_groups, seed=args.seed
        )
        options = IngestOptions(
            source=args.source or args.annotation.replace("_", "-"),
            label="none",
            skip_bad=True,
            seed=split_seed,
            split_fractions=fractions,
            inputs={
                "corpus": args.corpus,
                "annotation": args.annotation,
                "domain": args.domain,
                "max_groups": args.max_groups,
                "seed": args.seed,
            },
        )
        skipped: Counter = Counter()
        record = ingest_structures(annotated(structures, args.annotation), args.out, options, skipped=skipped)
    except BadInputError as err:
        print(f"atomfm data annotate: error: {err}", file=sys.stderr)
        return 2
    print(
        f"annotated {record['structures']} structures with {args.annotation} into {args.out}: {record['splits']}"
        + (f"; skipped {record['skipped']}" if record["skipped"] else "")
    )
    return 0
