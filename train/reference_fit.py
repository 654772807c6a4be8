"""Fit the model's per-element reference energies (per level of theory) over the training split, before training.

Reads every energy-labelled structure of the split once (no neighbour lists), then solves the composition
least squares of ``model.reference_energies``, with a ridge towards each level's mean energy per atom that
``ridge="auto"`` chooses per level on the held-out split (``model.reference_ridge``). Damaged samples are
skipped and counted, as in the stream.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import torch

from data_pipeline.corpus_reader import read_split
from data_pipeline.manifest import read_manifest
from data_pipeline.schema import BadInputError, Structure
from data_pipeline.vocab import LEVELS_OF_THEORY, level_key
from model.reference_energies import CompositionLeastSquares, choose_ridge, composition_arrays


@dataclass
class ReferenceFit:
    table: torch.Tensor  # [num_levels, 119] eV
    structures: int  # energy-labelled structures the fit used
    skipped: int  # undecodable samples
    ridge: dict[str, float] | None = None  # λ of each fitted level (None: not reported)


def fit_reference_energies_on_corpus(
    corpus: list[str],
    split: str,
    levels: int | list[str],
    residual: Callable[[Structure], float] | None = None,
    *,
    ridge: float | str = 0.0,
    held_out_split: str = "val",
) -> ReferenceFit:
    """Reference energies over every labelled structure of ``split`` in the corpus folders.

    levels: the vocabulary (or a number of the built-in levels); residual: an energy to subtract from each
    label first (a pretrained model's own prediction without reference energies), so the table fits what
    that model leaves unexplained (MACE's "estimated" E0s on a fine-tuning set). ridge: λ ≥ 0 for every
    level (0: plain least squares), or ``"auto"``: per level, the value of ``RIDGE_GRID`` that predicts the
    ``held_out_split`` structures of that level best (plain least squares for a level with none)."""
    vocabulary = list(LEVELS_OF_THEORY[:levels]) if isinstance(levels, int) else list(levels)
    skipped: Counter = Counter()
    numbers, energies, names = _labelled(corpus, split, residual, skipped)
    if not energies:
        return ReferenceFit(torch.zeros(len(vocabulary), 119, dtype=torch.float64), 0, skipped["decode"])
    fit = CompositionLeastSquares(len(vocabulary))
    counts, level_ids = composition_arrays(numbers, names, vocabulary)
    fit.add(counts, np.asarray(energies, dtype=np.float64), level_ids)
    if ridge == "auto":
        try:
            held = _labelled(corpus, held_out_split, residual, Counter())
        except BadInputError:  # the corpus has no such split: plain least squares
            held = ([], [], [])
        lambdas = choose_ridge(fit, *held, vocabulary=vocabulary)
    else:
        lambdas = np.full(len(vocabulary), float(ridge))
    chosen = {vocabulary[i]: float(lambdas[i]) for i in np.flatnonzero(fit.num_structures)}
    return ReferenceFit(fit.solve(lambdas), len(energies), skipped["decode"], chosen)


def _labelled(
    corpus: list[str], split: str, residual: Callable[[Structure], float] | None, skipped: Counter
) -> tuple[list[np.ndarray], list[float], list[str]]:
    """Atomic numbers, energies (less ``residual``) and levels of every energy-labelled structure of ``split``."""
    numbers: list[np.ndarray] = []
    energies: list[float] = []
    names: list[str] = []
    for s in read_split(corpus, split, skipped=skipped):
        if s.energy is not None:
            numbers.append(np.asarray(s.atomic_numbers, dtype=np.int64))
            energies.append(float(s.energy) - (residual(s) if residual is not None else 0.0))
            names.append(s.level_of_theory)
    return numbers, energies, names


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
