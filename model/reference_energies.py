"""Per-element reference energies per level of theory, fitted by least squares over compositions.

Total energies from different levels of theory differ by large, nearly additive per-element offsets
(xTB, a DFT functional and amber14 disagree by hundreds of eV on the same molecule). The model predicts
E = Σ_i E_ref[level, Z_i] + learned part, with the table fitted once over the training corpus:
E_ref[level] = argmin Σ_structures (E − Σ_Z n_Z E_ref[level, Z])², the minimum-norm solution where
compositions do not determine it (an element never seen at a level gets 0). With a ridge λ > 0 the fit adds
λ Σ_Z (E_ref[level, Z] − μ)² over the level's elements, μ its mean energy per atom: an element seen in two
or three structures is pulled towards μ instead of absorbing their whole error (the demo's CHGNet crystals:
antimony's plain fit is +23 eV, from one prototype CHGNet puts 6 eV/atom above the hull);
:func:`choose_ridge` picks λ per level on held-out structures.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Any

import numpy as np
import torch
from ase.data import atomic_numbers as ELEMENT_NUMBERS
from ase.data import chemical_symbols
from torch import Tensor, nn

from data_pipeline.vocab import LEVELS_OF_THEORY, level_index

NUM_ELEMENTS = 119  # index 0 is the mask token and never carries an energy


class ReferenceEnergies(nn.Module):
    """The table as a buffer ``energies`` [num_levels, 119] eV, saved with the model's weights."""

    def __init__(self, num_levels: int) -> None:
        super().__init__()
        self.register_buffer("energies", torch.zeros(num_levels, NUM_ELEMENTS))

    def forward(self, z: Tensor, level_per_atom: Tensor) -> Tensor:
        """Reference energy of each atom [N] eV, for atomic numbers z [N] at levels of theory [N]."""
        return self.energies[level_per_atom, z]

    @torch.no_grad()
    def set_table(self, table: Tensor) -> None:
        """Replace the table with ``table`` [num_levels, 119] eV (e.g. from :func:`fit_reference_energies`)."""
        if table.shape != self.energies.shape:
            raise ValueError(
                f"reference energy table has shape {tuple(table.shape)}, "
                f"expected {tuple(self.energies.shape)}"
            )
        table = table.to(self.energies, copy=True)
        table[:, 0] = 0.0
        self.energies.copy_(table)


class CompositionLeastSquares:
    """Accumulates the normal equations of the composition fit, one level of theory at a time, in float64."""

    def __init__(self, num_levels: int) -> None:
        self.gram = np.zeros((num_levels, NUM_ELEMENTS, NUM_ELEMENTS))
        self.rhs = np.zeros((num_levels, NUM_ELEMENTS))
        self.num_structures = np.zeros(num_levels, dtype=np.int64)
        self.energy_sum = np.zeros(num_levels)
        self.atom_sum = np.zeros(num_levels)

    def add(self, counts: np.ndarray, energies: np.ndarray, levels: np.ndarray) -> None:
        """counts [S, 119] atoms of each element; energies [S] eV; levels [S] level-of-theory indices."""
        counts, energies, levels = (np.asarray(a) for a in (counts, energies, levels))
        if not np.isfinite(energies).all():
            raise ValueError("non-finite energy in the reference-energy fit")
        for level in np.unique(levels):
            rows = levels == level
            a = counts[rows].astype(np.float64)
            self.gram[level] += a.T @ a
            self.rhs[level] += a.T @ energies[rows].astype(np.float64)
            self.num_structures[level] += int(rows.sum())
            self.energy_sum[level] += float(energies[rows].sum())
            self.atom_sum[level] += float(a.sum())

    def solve(self, ridge: float | Sequence[float] = 0.0) -> Tensor:
        """The fitted table [num_levels, 119] eV (float64); ``ridge``: λ (atoms², one for every level or one
        per level), 0 for plain least squares."""
        ridges = np.broadcast_to(np.asarray(ridge, dtype=np.float64), self.num_structures.shape)
        table = np.zeros_like(self.rhs)
        for level in np.flatnonzero(self.num_structures):
            lam = float(ridges[level])
            if lam <= 0:
                table[level] = np.linalg.lstsq(self.gram[level], self.rhs[level], rcond=None)[0]
                continue
            seen = np.diag(self.gram[level]) > 0
            mean = self.energy_sum[level] / max(self.atom_sum[level], 1.0)
            g = self.gram[level][np.ix_(seen, seen)] + lam * np.eye(int(seen.sum()))
            table[level, seen] = np.linalg.solve(g, self.rhs[level, seen] + lam * mean)
        table[:, 0] = 0.0
        return torch.from_numpy(table)


def fit_reference_energies(batches: Iterable[Any], num_levels: int = len(LEVELS_OF_THEORY)) -> Tensor:
    """Fit the table [num_levels, 119] eV from batches of the batch contract (``z``, ``batch``, ``energy``,
    ``has_energy``, ``level_of_theory``); structures without an energy label are ignored."""
    fit = CompositionLeastSquares(num_levels)
    for b in batches:
        num_graphs = int(b.energy.shape[0])
        counts = torch.zeros(num_graphs, NUM_ELEMENTS, dtype=torch.float64)
        counts.index_put_(
            (b.batch.cpu(), b.z.cpu()), torch.ones(b.z.numel(), dtype=torch.float64), accumulate=True
        )
        labelled = b.has_energy.cpu().bool()
        fit.add(
            counts[labelled].numpy(),
            b.energy.cpu()[labelled].double().numpy(),
            b.level_of_theory.cpu()[labelled].numpy(),
        )
    return fit.solve()


def composition_arrays(
    atomic_numbers: Sequence[np.ndarray], levels: Sequence[str | int], vocabulary: Sequence[str]
) -> tuple[np.ndarray, np.ndarray]:
    """counts [S, 119] of each element per structure and level indices [S]."""
    counts = np.stack(
        [
            np.bincount(np.asarray(z, dtype=np.int64), minlength=NUM_ELEMENTS)[:NUM_ELEMENTS]
            for z in atomic_numbers
        ]
    ).reshape(len(atomic_numbers), NUM_ELEMENTS)
    level_ids = np.array(
        [lv if isinstance(lv, (int, np.integer)) else level_index(lv, list(vocabulary)) for lv in levels],
        dtype=np.int64,
    )
    return counts, level_ids


def fit_reference_energies_from_arrays(
    atomic_numbers: Sequence[np.ndarray],
    energies: Sequence[float],
    levels: Sequence[str | int],
    num_levels: int | None = None,
    vocabulary: Sequence[str] = LEVELS_OF_THEORY,
    ridge: float | Sequence[float] = 0.0,
) -> Tensor:
    """Fit the table [len(vocabulary), 119] (or [num_levels, 119]) from per-structure arrays: atomic numbers
    [N_s], energy (eV), level (a name in ``vocabulary``, or an index); ``ridge`` as in
    :meth:`CompositionLeastSquares.solve`."""
    num_levels = len(vocabulary) if num_levels is None else num_levels
    if not len(atomic_numbers) == len(energies) == len(levels):
        raise ValueError(
            f"got {len(atomic_numbers)} structures, {len(energies)} energies and "
            f"{len(levels)} levels of theory; expected one of each per structure"
        )
    counts, level_ids = composition_arrays(atomic_numbers, levels, vocabulary)
    fit = CompositionLeastSquares(num_levels)
    fit.add(counts, np.asarray(energies, dtype=np.float64), level_ids)
    return fit.solve(ridge)


RIDGE_GRID = (0.0, 0.1, 1.0, 10.0, 100.0, 1000.0)


def choose_ridge(
    fit: CompositionLeastSquares,
    held_out_numbers: Sequence[np.ndarray],
    held_out_energies: Sequence[float],
    held_out_levels: Sequence[str | int],
    vocabulary: Sequence[str] = LEVELS_OF_THEORY,
    grid: Sequence[float] = RIDGE_GRID,
) -> np.ndarray:
    """λ per level [num_levels]: the grid value whose table gives the held-out structures of that level the
    lowest mean absolute error per atom (the smallest λ on a tie; 0 for a level with none held out)."""
    chosen = np.zeros(fit.num_structures.shape)
    if not len(held_out_energies):
        return chosen
    counts, level_ids = composition_arrays(held_out_numbers, held_out_levels, vocabulary)
    energies = np.asarray(held_out_energies, dtype=np.float64)
    atoms = counts.sum(axis=1).clip(min=1)
    tables = [fit.solve(lam).numpy() for lam in grid]
    for level in np.flatnonzero(fit.num_structures):
        rows = level_ids == level
        if not rows.any():
            continue
        errors = [np.mean(np.abs(energies[rows] - counts[rows] @ t[level]) / atoms[rows]) for t in tables]
        chosen[level] = grid[int(np.argmin(errors))]
    return chosen


EnergyLabels = tuple[list[np.ndarray], list[float], list[str]]


def energy_labels(structures: Iterable[Any], residual: Callable[[Any], float] | None = None) -> EnergyLabels:
    """Atomic numbers, energies (eV, less ``residual(s)`` when given) and level names of every
    energy-labelled structure (``data_pipeline.schema.Structure``) of ``structures``."""
    numbers: list[np.ndarray] = []
    energies: list[float] = []
    levels: list[str] = []
    for s in structures:
        if s.energy is not None:
            numbers.append(np.asarray(s.atomic_numbers, dtype=np.int64))
            energies.append(float(s.energy) - (residual(s) if residual is not None else 0.0))
            levels.append(s.level_of_theory)
    return numbers, energies, levels


def fit_with_ridge(
    labels: EnergyLabels,
    vocabulary: Sequence[str],
    ridge: float | str = 0.0,
    held_out: EnergyLabels | None = None,
) -> tuple[Tensor, np.ndarray]:
    """The table [len(vocabulary), 119] and λ per level: ``ridge`` for every level, or ``"auto"``:
    :func:`choose_ridge` on ``held_out`` (plain least squares for a level with none held out)."""
    fit = CompositionLeastSquares(len(vocabulary))
    counts, level_ids = composition_arrays(labels[0], labels[2], vocabulary)
    fit.add(counts, np.asarray(labels[1], dtype=np.float64), level_ids)
    if ridge == "auto":
        lambdas = choose_ridge(fit, *(held_out or ([], [], [])), vocabulary=vocabulary)
    else:
        lambdas = np.full(len(vocabulary), float(ridge))
    return fit.solve(lambdas), lambdas


def table_from_dict(
    values: Mapping[str, Mapping[str, float]], levels: int | Sequence[str] = LEVELS_OF_THEORY
) -> Tensor:
    """``{level name: {element symbol: eV}}`` → table [len(levels), 119] (``levels``: the vocabulary, or a
    number of the built-in one's first levels); unknown names raise ValueError."""
    names = list(LEVELS_OF_THEORY[:levels]) if isinstance(levels, int) else list(levels)
    table = torch.zeros(len(names), NUM_ELEMENTS, dtype=torch.float64)
    for level, per_element in values.items():
        if level.lower() not in names:
            raise ValueError(
                f"reference_energies: unknown level of theory {level!r}; expected one of {', '.join(names)}"
            )
        for symbol, energy in per_element.items():
            if symbol not in ELEMENT_NUMBERS or ELEMENT_NUMBERS[symbol] == 0:
                raise ValueError(f"reference_energies[{level!r}]: unknown element symbol {symbol!r}")
            table[level_index(level, names), ELEMENT_NUMBERS[symbol]] = float(energy)
    return table


def table_to_dict(table: Tensor, levels: Sequence[str] = LEVELS_OF_THEORY) -> dict[str, dict[str, float]]:
    """Inverse of :func:`table_from_dict`, listing only the non-zero entries (JSON-serialisable)."""
    out: dict[str, dict[str, float]] = {}
    for level, z in torch.nonzero(table).tolist():
        out.setdefault(levels[level], {})[chemical_symbols[z]] = float(table[level, z])
    return out
