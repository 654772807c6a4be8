"""Reference sets to score beside a sampler: the training molecules themselves (the ceiling), and two
baselines that keep one half of a training molecule and destroy the other.

- ``training``: training molecules as they are (novelty 0 by definition; uniqueness below 100% because
  conformers of one molecule share a SMILES);
- ``random-coordinates``: a training molecule's atom types at random positions, an isotropic Gaussian with
  the molecule's own radius of gyration (right composition and density, no geometry);
- ``shuffled-types``: a training molecule's geometry with its atom types permuted (right composition and
  geometry, types and geometry unmatched).

Each draws ``n`` training molecules without replacement (with replacement when the set is smaller), seeded.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np

from eval.generation.molecules import Molecule
from eval.generation.reference import TrainingMolecules


def _as_is(m: Molecule, rng: np.random.Generator) -> Molecule:
    return Molecule(m.numbers.copy(), m.positions.copy(), m.charge, m.source)


def _random_coordinates(m: Molecule, rng: np.random.Generator) -> Molecule:
    radius_of_gyration = float(np.sqrt((m.positions**2).sum(axis=1).mean()))
    positions = rng.normal(scale=radius_of_gyration / np.sqrt(3.0), size=m.positions.shape)
    return Molecule(m.numbers.copy(), positions - positions.mean(axis=0), m.charge, m.source)


def _shuffled_types(m: Molecule, rng: np.random.Generator) -> Molecule:
    return Molecule(rng.permutation(m.numbers), m.positions.copy(), m.charge, m.source)


BASELINES: dict[str, Callable[[Molecule, np.random.Generator], Molecule]] = {
    "training": _as_is,
    "random-coordinates": _random_coordinates,
    "shuffled-types": _shuffled_types,
}


def baseline_molecules(
    name: str,
    training: TrainingMolecules,
    n: int,
    *,
    seed: int = 0,
    atoms: tuple[int, int] | None = None,
) -> list[Molecule]:
    """``n`` molecules of baseline ``name`` (:data:`BASELINES`) from training molecules with ``atoms``
    (low, high) atoms."""
    rng = np.random.default_rng(seed)
    pool = training.in_range(atoms)
    picks = rng.choice(len(pool), size=n, replace=n > len(pool))
    make = BASELINES[name]
    return [make(pool[int(i)], rng) for i in picks]
