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

import torch

from data_pipeline.corpus_reader import read_split
from data_pipeline.manifest import read_manifest
from data_pipeline.schema import BadInputError, Structure
from data_pipeline.vocab import LEVELS_OF_THEORY, level_index, level_key
from model.reference_energies import energy_labels, fit_with_ridge


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
    labels = energy_labels(read_split(corpus, split, skipped=skipped), residual)
    if not labels[1]:
        return ReferenceFit(torch.zeros(len(vocabulary), 119, dtype=torch.float64), 0, skipped["decode"])
    held = None
    if ridge == "auto":
        try:
            held = energy_labels(read_split(corpus, held_out_split), residual)
        except BadInputError:  # the corpus has no such split: plain least squares
            held = None
    table, lambdas = fit_with_ridge(labels, vocabulary, ridge, held)
    fitted = sorted({level_index(name, vocabulary) for name in labels[2]})
    chosen = {vocabulary[i]: float(lambdas[i]) for i in fitted}
    return ReferenceFit(table, len(labels[1]), skipped["decode"], chosen)


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
