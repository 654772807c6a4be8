"""The ZBL short-range repulsion prior: bare Coulomb as nuclei meet, zero with zero slope and curvature at its
cutoff (a fraction of the covalent bond length: zero at every real bond), twice differentiable, invariant, and a
model's dimers that rise steeply below it."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from ase import Atoms
from equivariance import assert_equivariant
from model_fixtures import batch_of, small_model, water
from torch.testing import assert_close

from data_pipeline.schema import BadInputError
from model.atomfm import NEW_MODEL_ZBL_SWITCH, AtomFM, ModelConfig, model_config
from model.checkpoint_io import load_model, save_export
from model.zbl import COULOMB, ZBLRepulsion

ZBL = ZBLRepulsion(cutoff=5.0).double()


def pair(z: int, r) -> torch.Tensor:
    r = torch.as_tensor(r, dtype=torch.float64)
    zs = torch.full(r.shape, z, dtype=torch.int64)
    return ZBL.pair_energy(zs, zs, r)


@pytest.mark.parametrize("z", [1, 6, 8, 29])
def test_the_repulsion_is_the_bare_nuclear_coulomb_energy_as_nuclei_meet(z):
    r = torch.tensor([1e-4, 1e-3], dtype=torch.float64)
    assert_close(pair(z, r) * r / (COULOMB * z * z), torch.ones(2, dtype=torch.float64), rtol=2e-2, atol=0)


def energy_and_derivatives(z: int, r: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    r = r.clone().requires_grad_(True)
    energy = pair(z, r)
    (first,) = torch.autograd.grad(energy.sum(), r, create_graph=True)
    (second,) = torch.autograd.grad(first.sum(), r)
    return energy.detach(), first.detach(), second.detach()


@pytest.mark.parametrize("z", [1, 6, 8, 29])
def test_the_repulsion_and_its_first_two_derivatives_vanish_at_the_covalent_bond_length(z):
    r_c = float(ZBL.covalent_radii[z] * 2)
    beyond = torch.tensor([r_c, r_c + 0.3], dtype=torch.float64)
    for value in energy_and_derivatives(z, beyond):
        assert_close(value, torch.zeros(2, dtype=torch.float64), rtol=0, atol=1e-12)
    # Approaching r_c from inside, E, E' and E'' fall as h³, h² and h: no kink for forces or their gradients.
    near = energy_and_derivatives(z, r_c - torch.tensor([1e-2, 1e-3], dtype=torch.float64))
    for order, value in enumerate(near):
        assert 0.5 < float(value[0] / value[1]) / 10 ** (3 - order) < 2.0, (order, value)
    inside = torch.linspace(0.05, r_c - 1e-3, 200, dtype=torch.float64)
    assert (pair(z, inside) > 0).all() and (pair(z, inside).diff() < 0).all(), "positive and falling with r"


def test_the_switch_fraction_moves_the_cutoff_and_new_models_feel_nothing_at_real_bonds():
    """New models switch the prior off at 0.7 of the covalent bond length: below the shortest bonds of real
    molecules (N≡N, C≡N, C≡C at 0.77–0.79 of it), which at the full length (f = 1) it pushed apart."""
    new = ZBLRepulsion(cutoff=5.0, switch=NEW_MODEL_ZBL_SWITCH).double()
    r_c = float(new.covalent_radii[6] * 2) * NEW_MODEL_ZBL_SWITCH
    c = torch.full((2,), 6, dtype=torch.int64)
    at_and_beyond = new.pair_energy(c, c, torch.tensor([r_c, r_c + 0.1], dtype=torch.float64))
    assert_close(at_and_beyond, torch.zeros(2, dtype=torch.float64), rtol=0, atol=1e-12)
    assert float(new.pair_energy(c[:1], c[:1], torch.tensor([0.5 * r_c], dtype=torch.float64))) > 1.0
    triple_bonds = {(6, 7): 1.16, (6, 6): 1.20, (7, 7): 1.10, (6, 8): 1.13}  # Å, HCN, ethyne, N₂, CO
    for (zi, zj), r in triple_bonds.items():
        pair_z = (torch.tensor([zi]), torch.tensor([zj]))
        assert float(new.pair_energy(*pair_z, torch.tensor([r], dtype=torch.float64))) == 0.0
        assert float(ZBL.pair_energy(*pair_z, torch.tensor([r], dtype=torch.float64))) > 0.1, "eV at f = 1"
    with pytest.raises(ValueError, match="switch"):
        ZBLRepulsion(cutoff=5.0, switch=0.0)


def test_the_repulsion_is_twice_differentiable_in_the_positions():
    pos = torch.tensor([[0.0, 0.0, 0.0], [0.3, 0.1, 0.0], [0.1, 0.5, 0.2]], dtype=torch.float64)
    z = torch.tensor([1, 6, 8])
    edge_index = torch.tensor([[1, 2, 0, 2, 0, 1], [0, 0, 1, 1, 2, 2]])

    def energy(p: torch.Tensor) -> torch.Tensor:
        return ZBL(z, edge_index, p[edge_index[0]] - p[edge_index[1]], torch.zeros(3, dtype=torch.int64), 1)

    assert torch.autograd.gradcheck(energy, pos.clone().requires_grad_(True))
    assert torch.autograd.gradgradcheck(energy, pos.clone().requires_grad_(True))


def test_a_model_with_the_prior_is_rotation_and_mirror_invariant():
    model = small_model(zbl=True)
    atoms = water()
    atoms.positions[1] *= 0.3  # an O–H pair well inside the repulsion

    def energy(pos: torch.Tensor) -> torch.Tensor:
        batch = batch_of(atoms)
        batch.pos = pos
        return model(batch)["energy"]

    pos = torch.as_tensor(atoms.positions, dtype=torch.float64)
    assert_equivariant(energy, [pos], ["position"], ["invariant"])
    mirrored = pos * torch.tensor([-1.0, 1.0, 1.0], dtype=torch.float64)
    assert_close(energy(mirrored), energy(pos), rtol=1e-10, atol=1e-10)


def dimer_energies(model: AtomFM, symbol: str, distances: np.ndarray) -> np.ndarray:
    dimers = [Atoms(f"{symbol}2", positions=[[0, 0, 0], [0, 0, d]]) for d in distances]
    return model(batch_of(*dimers))["energy"].detach().numpy()


@pytest.mark.parametrize("symbol", ["C", "H", "O"])
def test_a_homonuclear_dimer_rises_monotonically_below_the_switch_distance(symbol):
    """From 0.02 Å to 90 % of where the prior switches off (0.7 of the covalent bond length, below every real
    bond; the learned energy takes over from there, and an untrained model's is flat but not monotonic)."""
    from ase.data import atomic_numbers, covalent_radii

    r_c = NEW_MODEL_ZBL_SWITCH * 2 * covalent_radii[atomic_numbers[symbol]]
    distances = np.linspace(0.02, 0.9 * r_c, 60)
    with_prior = dimer_energies(small_model(zbl=True), symbol, distances)
    assert (np.diff(with_prior) < 0).all(), "the energy rises as the atoms approach"
    assert with_prior[0] - with_prior[-1] > 100.0, "and steeply: eV, not meV"
    without = dimer_energies(small_model(zbl=False), symbol, distances)
    assert abs(without[0] - without[-1]) < 5.0, "the learned energy alone is nearly flat"


def test_new_models_have_the_prior_and_old_configs_load_without_it(tmp_path):
    assert model_config("tiny").zbl and not model_config("tiny", zbl=False).zbl
    assert not ModelConfig().zbl
    assert model_config("tiny").zbl_switch == 0.7 and ModelConfig().zbl_switch == 1.0
    with_full_switch = save_export(small_model(zbl=True), tmp_path / "before_switch")
    raw = json.loads((with_full_switch / "model_config.json").read_text())
    del raw["zbl_switch"]  # an export written with the prior but before its switch fraction
    (with_full_switch / "model_config.json").write_text(json.dumps(raw))
    (with_full_switch / "checksums.json").unlink()
    assert load_model(with_full_switch).zbl.switch == 1.0, "loads with the switch it was trained with"
    with pytest.raises(BadInputError, match="zbl_switch"):
        model_config("tiny", zbl_switch=-1.0)
    export = save_export(small_model(zbl=True), tmp_path / "new")
    assert load_model(export).zbl is not None
    old = save_export(small_model(zbl=False), tmp_path / "old")
    raw = json.loads((old / "model_config.json").read_text())
    del raw["zbl"]
    (old / "model_config.json").write_text(json.dumps(raw))
    (old / "checksums.json").unlink()  # as an export written before either field
    assert load_model(old).zbl is None


def test_the_prior_is_a_training_config_field(tmp_path):
    from train.config import load_config

    config = tmp_path / "run.yaml"
    config.write_text(
        "data: {corpus: x}\ntasks: {energy: {}}\nmodel: {size: tiny, overrides: {channels: 16}}\n"
    )
    assert load_config(config).model_config().zbl
    assert not load_config(config, ["model.overrides.zbl=false"]).model_config().zbl


def test_conservative_forces_of_a_model_with_the_prior_match_finite_differences():
    model = small_model(zbl=True)
    atoms = water()
    atoms.positions[1] = atoms.positions[0] + [0.0, 0.35, 0.3]  # an O–H pair deep in the repulsion
    forces = model(batch_of(atoms), ("forces",), conservative=True)["forces"].detach()
    step, numeric = 1e-5, torch.zeros_like(forces)
    for i in range(len(atoms)):
        for k in range(3):
            energies = []
            for sign in (1, -1):
                moved = atoms.copy()
                moved.positions[i, k] += sign * step
                energies.append(model(batch_of(moved))["energy"].detach()[0])
            numeric[i, k] = -(energies[0] - energies[1]) / (2 * step)
    assert forces.abs().max() > 10.0, "the prior's force, not the learned one's"
    assert_close(forces, numeric, rtol=1e-6, atol=1e-5)
