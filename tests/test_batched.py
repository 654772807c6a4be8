"""Batched inference and relaxation (model/batched.py, model/batched_relax.py) against the one-at-a-time ASE
path: the same numbers, the same FIRE steps."""

from __future__ import annotations

import numpy as np
import pytest
from ase import Atoms
from ase.optimize import FIRE
from model_fixtures import alanine, elemental_crystals, small_model, water

from model.batched import BatchedPredictor
from model.batched_relax import max_force, relax_batch
from model.calculator import AtomFMCalculator

LEVEL = "pbe"


@pytest.fixture(scope="module")
def model():
    return small_model(seed=3)


def one_at_a_time(model, atoms: Atoms) -> AtomFMCalculator:
    atoms.calc = AtomFMCalculator(model, level_of_theory=LEVEL)
    return atoms.calc


def test_single_points_of_50_crystals_match_the_calculator(model):
    structures = elemental_crystals()
    assert len(structures) == 50
    batched = BatchedPredictor.from_model(model, level_of_theory=LEVEL).predict(structures)
    for i, atoms in enumerate(structures):
        one_at_a_time(model, atoms)
        np.testing.assert_allclose(batched.energies[i], atoms.get_potential_energy(), rtol=1e-10)
        np.testing.assert_allclose(batched.forces[i], atoms.get_forces(), rtol=1e-8, atol=1e-10)
        np.testing.assert_allclose(batched.stresses[i], atoms.get_stress(), rtol=1e-8, atol=1e-10)


def test_molecules_and_crystals_in_small_chunks(model):
    structures = [water(), elemental_crystals(3)[2], alanine(), elemental_crystals(2)[1]]
    whole = BatchedPredictor.from_model(model, level_of_theory=LEVEL).predict(structures)
    chunked = BatchedPredictor.from_model(model, max_atoms=8, level_of_theory=LEVEL)
    assert list(chunked.chunks(structures)) == [[0, 1], [2], [3]]
    parts = chunked.predict(structures)
    np.testing.assert_allclose(parts.energies, whole.energies, rtol=1e-10)
    for i, atoms in enumerate(structures):
        one_at_a_time(model, atoms)
        np.testing.assert_allclose(parts.energies[i], atoms.get_potential_energy(), rtol=1e-10)
        np.testing.assert_allclose(parts.forces[i], atoms.get_forces(), rtol=1e-8, atol=1e-10)
    assert np.isnan(parts.stresses[[0, 2]]).all() and np.isfinite(parts.stresses[[1, 3]]).all()


def test_batched_fire_takes_ase_fires_steps_on_50_elemental_crystals(model):
    structures, fmax, steps = elemental_crystals(), 0.02, 12
    start = [atoms.positions.copy() for atoms in structures]
    predictor = BatchedPredictor.from_model(model, level_of_theory=LEVEL)
    start_energies = predictor.predict(structures).energies
    result = relax_batch(structures, predictor, fmax, steps)
    for atoms, positions in zip(structures, start, strict=True):
        np.testing.assert_array_equal(atoms.positions, positions)  # relax_batch moves copies
    moved = result.steps > 0
    assert moved.sum() >= 10 and result.converged.sum() >= 10  # a real relaxation, with early finishers
    assert result.history == sorted(result.history, reverse=True) and result.history[-1] < 50
    for i, atoms in enumerate(structures):
        one_at_a_time(model, atoms)
        optimizer = FIRE(atoms, logfile=None)
        converged = optimizer.run(fmax=fmax, steps=steps)
        assert (result.steps[i], result.converged[i]) == (optimizer.nsteps, converged)
        np.testing.assert_allclose(result.atoms[i].positions, atoms.positions, rtol=0, atol=1e-9)
        np.testing.assert_allclose(result.energies[i], atoms.get_potential_energy(), rtol=1e-10)
        if moved[i]:
            assert result.energies[i] < start_energies[i]
        assert max_force(result.forces[i]) < fmax or not converged
