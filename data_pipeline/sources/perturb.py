"""Gentle perturbations that move structures off equilibrium so that their forces are informative."""

from __future__ import annotations

from typing import Any

import numpy as np
from ase import Atoms

from data_pipeline.schema import Structure


def rattle(positions: np.ndarray, max_displacement: float, rng: np.random.Generator) -> np.ndarray:
    """Each atom moved in a random direction by a distance drawn uniformly in [0, max_displacement] Å."""
    directions = rng.normal(size=positions.shape)
    directions /= np.linalg.norm(directions, axis=1, keepdims=True)
    return positions + directions * rng.uniform(0.0, max_displacement, size=(len(positions), 1))


def strain(
    cell: np.ndarray, positions: np.ndarray, max_strain: float, rng: np.random.Generator
) -> tuple[np.ndarray, np.ndarray]:
    """Cell and positions under a random symmetric strain with components in [-max_strain, max_strain].

    Fractional coordinates are kept: rows of ``cell`` and positions both map through ``1 + ε``.
    """
    eps = rng.uniform(-max_strain, max_strain, size=(3, 3))
    deformation = np.eye(3) + (eps + eps.T) / 2
    return cell @ deformation, positions @ deformation


def perturbed_crystal(
    atoms: Atoms,
    *,
    key: str,
    group_id: str,
    extra: dict[str, Any],
    max_strain: float,
    max_displacement: float,
    rng: np.random.Generator,
) -> Structure:
    """A randomly strained, then rattled copy of a periodic cell as a ``material`` record."""
    cell, positions = strain(atoms.cell.array, atoms.positions, max_strain, rng)
    return Structure(
        key=key,
        domain="material",
        atomic_numbers=atoms.numbers.astype(np.uint8),
        positions=rattle(positions, max_displacement, rng).astype(np.float32),
        cell=cell.astype(np.float32),
        pbc=np.ones(3, dtype=bool),
        group_id=group_id,
        extra=extra,
    )
