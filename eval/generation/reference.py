"""The training molecules a sampler learned from: its atom-count distribution, its elements, and the
reference set for novelty and for the baselines."""

from __future__ import annotations

import hashlib
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from data_pipeline.corpus_reader import read_split
from data_pipeline.manifest import read_manifest
from data_pipeline.schema import BadInputError
from eval.generation.molecules import Molecule


@dataclass
class TrainingMolecules:
    """Every non-periodic structure of the molecule domain in a corpus split."""

    molecules: list[Molecule]
    corpora: list[str]
    split: str

    @property
    def size_histogram(self) -> dict[int, int]:
        return dict(sorted(Counter(m.num_atoms for m in self.molecules).items()))

    @property
    def elements(self) -> list[int]:
        return sorted({int(z) for m in self.molecules for z in m.numbers})

    def in_range(self, atoms: tuple[int, int] | None) -> list[Molecule]:
        if atoms is None:
            return list(self.molecules)
        low, high = atoms
        return [m for m in self.molecules if low <= m.num_atoms <= high]

    def draw_sizes(self, n: int, rng: np.random.Generator, atoms: tuple[int, int] | None = None) -> list[int]:
        """``n`` atom counts drawn from the training distribution, restricted to ``atoms`` (low, high)."""
        histogram = {
            k: v for k, v in self.size_histogram.items() if atoms is None or atoms[0] <= k <= atoms[1]
        }
        if not histogram:
            raise BadInputError(
                f"no training molecule has {atoms[0]}–{atoms[1]} atoms; the training sizes are "
                f"{min(self.size_histogram)}–{max(self.size_histogram)}",
                field="atoms",
            )
        sizes = np.array(list(histogram))
        weights = np.array(list(histogram.values()), dtype=np.float64)
        return [int(x) for x in rng.choice(sizes, size=n, p=weights / weights.sum())]


def load_training_molecules(corpora: list[str], split: str = "train") -> TrainingMolecules:
    """The molecules of ``split`` in the corpus folders (the molecule domain, no periodic cells); only the
    shards of sources that hold molecules are read."""
    molecules = []
    for corpus in corpora:
        shards = read_manifest(corpus).select(domain="molecule", split=split)
        for source in sorted({shard.source for shard in shards}):
            molecules += [
                Molecule.from_structure(s)
                for s in read_split([corpus], split, source=source)
                if s.domain == "molecule" and not s.is_periodic
            ]
    if not molecules:
        raise BadInputError(f"the {split} split holds no molecules", path=",".join(corpora))
    return TrainingMolecules(molecules, list(corpora), split)


def parse_atom_range(text: str | None) -> tuple[int, int] | None:
    """``"9-29"`` → (9, 29); ``"12"`` → (12, 12); None stays None."""
    if text is None:
        return None
    low, _, high = text.partition("-")
    try:
        bounds = (int(low), int(high or low))
    except ValueError:
        raise BadInputError(f"expected N or LOW-HIGH, got {text!r}", field="atoms") from None
    if not 1 <= bounds[0] <= bounds[1]:
        raise BadInputError(f"expected 1 <= LOW <= HIGH, got {text!r}", field="atoms")
    return bounds


def reference_identity(training: TrainingMolecules) -> dict:
    """The ``data`` block of a generation result: the reference molecules' corpus split, its shards' digest
    (as ``eval.data`` computes it for the same split, so every result scored against it shares one board)."""
    digests = [
        shard.sha256
        for corpus in training.corpora
        for shard in read_manifest(corpus).select(split=training.split)
    ]
    return {
        "name": "+".join(Path(c).name for c in training.corpora) + f"/{training.split}",
        "kind": "corpus",
        "paths": [str(Path(c).resolve()) for c in training.corpora],
        "split": training.split,
        "structures": len(training.molecules),
        "atoms": int(sum(m.num_atoms for m in training.molecules)),
        "domains": {"molecule": len(training.molecules)},
        "sha256": hashlib.sha256("\n".join(digests).encode()).hexdigest(),
        "skipped": 0,
        "subsampled_from": None,
    }
