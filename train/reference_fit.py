"""Fit the model's per-element reference energies (per level of theory) over the training split, before training.

Reads every energy-labelled structure of the split once (no neighbour lists), then solves the composition
least squares of ``model.reference_energies``. Damaged samples are skipped and counted, as in the stream.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import torch

from data_pipeline.corpus_reader import read_split
from data_pipeline.manifest import read_manifest
from data_pipeline.schema import Structure
from data_pipeline.vocab import LEVELS_OF_THEORY, level_key
from model.reference_energies import fit_reference_energies_from_arrays


@dataclass
class ReferenceFit:
    table: torch.Tensor  # [num_levels, 119] eV
    structures: int  # energy-labelled structures the fit used
    skipped: int  # undecodable samples


def fit_reference_energies_on_corpus(
    corpus: list[str],
    split: str,
    levels: int | list[str],
    residual: Callable[[Structure], float] | None = None,
) -> ReferenceFit:
    """Least-squares reference energies over every labelled structure of ``split`` in the corpus folders.

    levels: the vocabulary (or a number of the built-in levels); residual: an energy to subtract from each
    label first (a pretrained model's own prediction without reference energies), so the table fits what
    that model leaves unexplained (MACE's "estimated" E0s on a fine-tuning set)."""
    vocabulary = list(LEVELS_OF_THEORY[:levels]) if isinstance(levels, int) else list(levels)
    numbers: list[np.ndarray] = []
    energies: list[float] = []
    names: list[str] = []
    skipped: Counter = Counter()
    for s in read_split(corpus, split, skipped=skipped):
        if s.energy is not None:
            numbers.append(np.asarray(s.atomic_numbers, dtype=np.int64))
            energies.append(float(s.energy) - (residual(s) if residual is not None else 0.0))
            names.append(s.level_of_theory)
    if not energies:
        return ReferenceFit(torch.zeros(len(vocabulary), 119, dtype=torch.float64), 0, skipped["decode"])
    table = fit_reference_energies_from_arrays(numbers, energies, names, vocabulary=vocabulary)
    return ReferenceFit(table, len(energies), skipped["decode"])


def corpus_levels(corpus: list[str], split: str) -> set[str]:
    """Every level of theory the split's structures are labelled at (from the manifests), ``none`` aside."""
    found: set[str] = set()
    for folder in corpus:
        for shard in read_manifest(folder).select(split=split):
            found.update(shard.levels_of_theory)
    return {level_key(name) for name in found} - {"none"}


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
