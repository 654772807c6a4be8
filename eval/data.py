"""What an evaluation runs on: a corpus split (the group-hashed test split by default) or labelled files.

A corpus folder (one with a ``manifest.json``) gives its split's structures and remembers the corpus, so the
reference-energy baseline can be fitted on its training split. Any file the readers read (extxyz with
energies and forces, an ASE db, ...) gives its records, labelled at ``level_of_theory``.
"""

from __future__ import annotations

import hashlib
from collections import Counter
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np

from data_pipeline.corpus_reader import read_split
from data_pipeline.manifest import manifest_path, read_manifest
from data_pipeline.readers import ReaderOptions, read_structures
from data_pipeline.schema import BadInputError, Structure
from data_pipeline.shards import sha256_of


@dataclass
class EvalData:
    """Structures to evaluate on, and where they came from."""

    name: str
    kind: str  # "corpus" | "file"
    paths: list[str]
    split: str | None
    structures: list[Structure]
    sha256: str  # of the shards' (or files') sha256s: the data's identity
    skipped: int = 0
    subsampled_from: int | None = None
    train_corpora: list[str] = field(default_factory=list)  # corpora whose train split the baseline fits on

    def by_domain(self) -> dict[str, list[Structure]]:
        out: dict[str, list[Structure]] = {}
        for s in self.structures:
            out.setdefault(s.domain, []).append(s)
        return dict(sorted(out.items()))

    def identity(self) -> dict[str, Any]:
        levels = Counter(s.level_of_theory for s in self.structures)
        return {
            "name": self.name,
            "kind": self.kind,
            "paths": self.paths,
            "split": self.split,
            "structures": len(self.structures),
            "atoms": int(sum(s.num_atoms for s in self.structures)),
            "domains": dict(Counter(s.domain for s in self.structures)),
            "levels_of_theory": dict(levels),
            "sha256": self.sha256,
            "skipped": self.skipped,
            "subsampled_from": self.subsampled_from,
        }


def is_corpus(path: str | Path) -> bool:
    return manifest_path(path).is_file()


def load_eval_data(
    sources: list[str],
    *,
    split: str = "test",
    level_of_theory: str | None = None,
    domain: str | None = None,
    max_structures: int | None = None,
    seed: int = 0,
    name: str | None = None,
) -> EvalData:
    """Structures of ``sources`` (corpus folders, or files); ``max_structures`` takes a seeded random subset."""
    if not sources:
        raise BadInputError("no data given: name a corpus folder or a labelled file", field="data")
    corpora = [s for s in sources if is_corpus(s)]
    files = [s for s in sources if not is_corpus(s)]
    structures: list[Structure] = []
    digests: list[str] = []
    skipped: Counter = Counter()
    if corpora:
        structures.extend(read_split(corpora, split, skipped=skipped))
        for corpus in corpora:
            digests += [s.sha256 for s in read_manifest(corpus).select(split=split)]
    for path in files:
        if Path(path).is_dir():
            raise BadInputError("a folder that is not a corpus (no manifest.json)", path=path)
        options = ReaderOptions(skip_bad=True)
        structures.extend(read_structures(path, domain=domain, options=options, counter=skipped))
        digests.append(sha256_of(path))
    if level_of_theory is not None:
        structures = [replace(s, level_of_theory=level_of_theory.lower()) for s in structures]
    total = len(structures)
    if not structures:
        raise BadInputError(f"no structures to evaluate in {', '.join(sources)}", field="data")
    if max_structures is not None and total > max_structures:
        order = np.random.default_rng(seed).permutation(total)[:max_structures]
        structures = [structures[i] for i in sorted(order)]
    label = name or "+".join(Path(s).name for s in sources) + (f"/{split}" if corpora else "")
    return EvalData(
        name=label,
        kind="corpus" if corpora and not files else "file" if files and not corpora else "mixed",
        paths=[str(Path(s).resolve()) for s in sources],
        split=split if corpora else None,
        structures=structures,
        sha256=hashlib.sha256("\n".join(digests).encode()).hexdigest(),
        skipped=sum(skipped.values()),
        subsampled_from=total if len(structures) < total else None,
        train_corpora=corpora,
    )
