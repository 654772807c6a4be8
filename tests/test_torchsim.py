"""atomfm as a TorchSim model (model/torchsim.py): TorchSim's own interface check, single points of 50 crystals
equal to the ASE calculator's, and a TorchSim FIRE relaxation of 50 crystals against ASE's FIRE one at a time."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from ase.optimize import FIRE
from model_fixtures import elemental_crystals, small_model, water

from model.calculator import AtomFMCalculator

ts = pytest.importorskip("torch_sim", reason="torch-sim-atomistic (atomfm[torchsim], Python 3.11+)")
from torch_sim.models.interface import validate_model_outputs  # noqa: E402

from model.torchsim import AtomFMTorchSimModel, relax, state_to_atoms  # noqa: E402

LEVEL = "pbe"


@pytest.fixture(scope="module")
def model():
    return small_model(seed=3)


def torchsim_model(model, **options) -> AtomFMTorchSimModel:
    return AtomFMTorchSimModel.from_calculator(AtomFMCalculator(model, level_of_theory=LEVEL, **options))


def test_torchsims_own_interface_check_passes(model):
    validate_model_outputs(torchsim_model(model), torch.device("cpu"), torch.float64)


def test_a_state_converts_back_to_the_same_structures():
    structures = elemental_crystals(4)
    state = ts.io.atoms_to_state(structures, torch.device("cpu"), torch.float64)
    for atoms, back in zip(structures, state_to_atoms(state), strict=True):
        np.testing.assert_array_equal(back.numbers, atoms.numbers)
        np.testing.assert_allclose(back.positions, atoms.positions, rtol=0, atol=1e-12)
        np.testing.assert_allclose(back.cell.array, atoms.cell.array, rtol=0, atol=1e-12)
        assert back.pbc.all()


def test_static_on_50_crystals_matches_the_ase_calculator(model):
    structures = elemental_crystals()
    assert len(structures) == 50
    results = ts.static(structures, torchsim_model(model))
    assert len(results) == 50
    for atoms, result in zip(structures, results, strict=True):
        atoms.calc = AtomFMCalculator(model, level_of_theory=LEVEL)
        np.testing.assert_allclose(
            float(result["potential_energy"][0]), atoms.get_potential_energy(), rtol=1e-10
        )
        np.testing.assert_allclose(result["forces"].numpy(), atoms.get_forces(), rtol=1e-8, atol=1e-10)
        np.testing.assert_allclose(
            result["stress"].numpy()[0], atoms.get_stress(voigt=False), rtol=1e-8, atol=1e-10
        )


def test_a_molecule_has_energies_and_forces_and_no_stress(model):
    atoms = water()
    out = torchsim_model(model)(ts.io.atoms_to_state([atoms], torch.device("cpu"), torch.float64))
    atoms.calc = AtomFMCalculator(model, level_of_theory=LEVEL)
    np.testing.assert_allclose(out["forces"].numpy(), atoms.get_forces(), rtol=1e-8, atol=1e-10)
    assert torch.isnan(out["stress"]).all()


def test_torchsim_fire_relaxes_50_crystals_to_the_energies_of_ase_fire_one_at_a_time(model):
    structures, fmax, steps = elemental_crystals(), 0.05, 200
    ts_model = torchsim_model(model)
    state = ts.io.atoms_to_state(structures, torch.device("cpu"), torch.float64)
    start = ts.static(state, ts_model)
    relaxed = relax(ts_model, state, fmax, steps)
    final = ts_model(relaxed)
    per_system = final["forces"].norm(dim=1)
    for i, atoms in enumerate(structures):
        atoms.calc = AtomFMCalculator(model, level_of_theory=LEVEL)
        assert FIRE(atoms, logfile=None).run(fmax=fmax, steps=steps)
        mine = relaxed.system_idx == i
        assert per_system[mine].max() < fmax  # TorchSim's relaxation converged too
        np.testing.assert_allclose(float(final["energy"][i]), atoms.get_potential_energy(), rtol=0, atol=2e-3)
        assert float(final["energy"][i]) <= float(start[i]["potential_energy"]) + 1e-9


def test_the_direct_head_is_flagged_as_not_energy_conserving(model):
    assert torchsim_model(model).conserves_energy
    assert not torchsim_model(model, forces="direct").conserves_energy
