"""Fit the model's per-element reference energies (per level of theory) over the training split, before training.

Reads every energy-labelled structure of the split once (no neighbour lists), then solves the composition
least squares of ``model.reference_energies``. Damaged samples are skipped and counted, as in the stream.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass

import numpy as np
import torch

from data_pipeline.corpus_reader import read_split
from data_pipeline.manifest import read_manifest
from model.reference_energies import fit_reference_energies_from_arrays


@dataclass
class ReferenceFit:
    table: torch.Tensor  # [num_levels, 119] eV
    structures: int  # energy-labelled structures the fit used
    skipped: int  # undecodable samples


def fit_reference_energies_on_corpus(corpus: list[str], split: str, num_levels: int) -> ReferenceFit:
    """Least-squares reference energies over every labelled structure of ``split`` in the corpus folders."""
    numbers: list[np.ndarray] = []
    energies: list[float] = []
    levels: list[str] = []
    skipped: Counter = Counter()
    for s in read_split(corpus, split, skipped=skipped):
        if s.energy is not None:
            numbers.append(np.asarray(s.atomic_numbers, dtype=np.int64))
            energies.append(float(s.energy))
            levels.append(s.level_of_theory)
    if not energies:
        return ReferenceFit(torch.zeros(num_levels, 119, dtype=torch.float64), 0, skipped["decode"])
    table = fit_reference_energies_from_arrays(numbers, energies, levels, num_levels=num_levels)
    return ReferenceFit(table, len(energies), skipped["decode"])


def main_level_of_theory(corpus: list[str], split: str) -> str:
    """The level of theory most structures of ``split`` are labelled at (from the manifests), else ``none``.

    A checkpoint's calculator predicts at this level unless told otherwise.
    """
    counts: Counter = Counter()
    for folder in corpus:
        for shard in read_manifest(folder).select(split=split):
            counts.update(shard.levels_of_theory)
    counts.pop("none", None)
    return min(counts, key=lambda level: (-counts[level], level)) if counts else "none"
