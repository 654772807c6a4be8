"""Heads, the head registry, configs and reference energies."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from ase.collections import g2
from equivariance import assert_equivariant
from model_fixtures import CUTOFF, alanine, batch_of, peptide, rocksalt, small_model, water
from torch_geometric.data import Batch

from data_pipeline.graph import structure_to_graph
from data_pipeline.schema import Structure, validate
from data_pipeline.vocab import level_index
from model.atomfm import ModelConfig, model_config
from model.checkpoint_io import load_model, save_export
from model.reference_energies import (
    NUM_ELEMENTS,
    RIDGE_GRID,
    CompositionLeastSquares,
    choose_ridge,
    fit_reference_energies,
    fit_reference_energies_from_arrays,
    table_from_dict,
    table_to_dict,
)


def test_charges_add_up_to_each_structures_total_charge():
    model = small_model()
    structures = [water(), alanine(), rocksalt()]
    for atoms, charge in zip(structures, (-1, 1, 2), strict=True):
        atoms.info["charge"] = charge
    batch = batch_of(*structures)
    charges = model(batch, ("charges",))["charges"].detach()
    totals = torch.zeros(3, dtype=torch.float64).index_add(0, batch.batch, charges)
    torch.testing.assert_close(
        totals, torch.tensor([-1.0, 1.0, 2.0], dtype=torch.float64), rtol=0, atol=1e-12
    )
    assert charges.std() > 1e-3  # not just Q/N on every atom


def test_residue_head_reads_out_one_row_per_residue_independent_of_batch_and_order():
    model = small_model()
    model.add_head("residue", dim=8)
    helix = peptide(num_residues=4)
    alone = model(batch_of(helix), ("residue",))
    index = alone["residue_index"]
    assert alone["residue"].shape == (4, 8)
    torch.testing.assert_close(index, torch.tensor([[0, 1], [0, 2], [0, 3], [0, 4]]))

    perm = np.random.default_rng(0).permutation(len(helix))
    together = model(batch_of(water(), helix[perm]), ("residue",))  # water has no residues
    torch.testing.assert_close(together["residue_index"], index + torch.tensor([1, 0]))
    torch.testing.assert_close(together["residue"], alone["residue"], rtol=1e-9, atol=1e-12)


@pytest.mark.parametrize("pooling", ["mean", "sum"])
def test_property_head_pooling_is_intensive_or_extensive(pooling):
    model = small_model(long_range=False)
    model.add_head("properties", num_properties=3, pooling=pooling)
    far = water()
    far.positions += [CUTOFF + 5.0, 0.0, 0.0]
    single, pair = (
        model(batch_of(s), ("properties",))["properties"].detach() for s in (water(), water() + far)
    )
    assert single.shape == (1, 3)
    if pooling == "mean":  # two non-interacting copies: the same per-atom mean
        torch.testing.assert_close(pair, single, rtol=1e-10, atol=1e-12)
    else:
        assert float((pair - single).abs().max()) > 1e-3


def test_denoising_head_takes_dens_forces_and_stays_equivariant():
    model, atoms = small_model(), alanine()
    clean_forces = torch.tensor(np.random.default_rng(3).normal(size=(len(atoms), 3)))

    def noise(pos: torch.Tensor, forces: torch.Tensor | None) -> torch.Tensor:
        moved = atoms.copy()
        moved.positions = pos.numpy()
        batch = batch_of(moved)
        if forces is not None:
            batch.dens_forces = forces
        return model(batch, ("noise",))["noise"].detach()

    pos = torch.tensor(atoms.positions)
    assert float((noise(pos, clean_forces) - noise(pos, None)).abs().max()) > 1e-4
    assert_equivariant(noise, [pos, clean_forces], ["position", "vector"], ["vector"])


def test_masked_atoms_get_logits_and_no_reference_energy():
    model = small_model()
    model.reference_energies.set_table(torch.full((model.config.backbone.num_levels, NUM_ELEMENTS), -10.0))
    batch = batch_of(water())
    full = model(batch, ("energy", "atom_logits"))
    batch.z = batch.z.clone()
    batch.z[0] = 0  # mask the oxygen
    masked = model(batch, ("energy", "atom_logits"))
    assert masked["atom_logits"].shape == (3, NUM_ELEMENTS)
    assert float((masked["atom_logits"] - full["atom_logits"]).abs().max()) > 1e-4
    # the masked atom carries no −10 eV reference (and the learned part changes too)
    assert abs(float(masked["energy"] - full["energy"])) > 5.0


def test_added_head_is_saved_in_the_config_and_reloads(tmp_path):
    model = small_model()
    model.add_head("properties", num_properties=2, pooling="sum")
    batch = batch_of(alanine())
    before = model(batch, ("energy", "properties"))
    save_export(model, tmp_path)
    saved = json.loads((tmp_path / "model_config.json").read_text())
    assert "properties" in saved["heads"] and saved["head_options"]["properties"]["pooling"] == "sum"
    reloaded = load_model(tmp_path, dtype=torch.float64)
    after = reloaded(batch, ("energy", "properties"))
    for name in ("energy", "properties"):
        torch.testing.assert_close(after[name], before[name].float().double(), rtol=1e-6, atol=1e-6)


def test_config_errors_name_the_offending_key_head_or_output():
    good = model_config("tiny").to_dict()
    with pytest.raises(ValueError, match="'long_rang'"):
        ModelConfig.from_dict({**good, "long_rang": True})
    with pytest.raises(ValueError, match="'chanels'"):
        ModelConfig.from_dict({**good, "backbone": {**good["backbone"], "chanels": 8}})
    with pytest.raises(ValueError, match="'forcez'"):
        model_config("tiny", heads=["energy", "forcez"])
    with pytest.raises(ValueError, match="'charges' head"):
        model_config("tiny", heads=["energy"], long_range=True)
    with pytest.raises(ValueError, match="head_options for head 'energy'.*'widht'"):
        small_model(head_options={"energy": {"widht": 32}})
    model = small_model(heads=["energy", "charges"])
    with pytest.raises(ValueError, match="'stresss'"):
        model(batch_of(water()), ("stresss",))
    with pytest.raises(ValueError, match="forces_direct.*add_head"):
        model(batch_of(water()), ("forces",), conservative=False)
    with pytest.raises(ValueError, match="already has a head 'energy'"):
        model.add_head("energy")


def test_config_round_trips_through_a_dict():
    config = model_config("tiny", lmax=3, long_range_method="pme", reference_energies={"pbe": {"Si": -5.4}})
    again = ModelConfig.from_dict(json.loads(json.dumps(config.to_dict())))
    assert again == config and again.backbone.lmax == 3


def test_reference_energies_are_recovered_by_least_squares_per_level():
    # every G2 molecule labelled at two levels of theory with energies additive in per-element references
    names = g2.names + g2.names
    numbers = [g2[name].numbers for name in names]
    levels = ["gfn2-xtb"] * len(g2.names) + ["pbe"] * len(g2.names)
    elements = np.unique(np.concatenate(numbers))
    rng = np.random.default_rng(0)
    truth = torch.zeros(13, NUM_ELEMENTS, dtype=torch.float64)
    truth[level_index("gfn2-xtb"), elements] = torch.tensor(rng.uniform(-100, -1, len(elements)))
    truth[level_index("pbe"), elements] = torch.tensor(rng.uniform(-1000, -10, len(elements)))
    energies = [float(truth[level_index(lv), z].sum()) for z, lv in zip(numbers, levels, strict=True)]
    torch.testing.assert_close(
        fit_reference_energies_from_arrays(numbers, energies, levels), truth, rtol=1e-9, atol=1e-8
    )

    structures = [
        validate(
            Structure(
                key=f"g2/{i}",
                domain="molecule",
                atomic_numbers=z,
                positions=g2[name].positions,
                level_of_theory=lv,
                energy=e,
            )
        )
        for i, (name, z, lv, e) in enumerate(zip(names, numbers, levels, energies, strict=True))
    ]
    batches = [
        Batch.from_data_list([structure_to_graph(s, CUTOFF) for s in structures[i : i + 64]])
        for i in range(0, len(structures), 64)
    ]
    # energies travel as float32 in batches
    torch.testing.assert_close(fit_reference_energies(batches), truth, rtol=1e-5, atol=1e-3)


def test_a_ridge_pulls_a_scarce_element_towards_the_mean_and_auto_chooses_it_on_held_out_structures():
    """Hydrogen and carbon in many molecules, antimony in one structure with a 6 eV/atom outlier label (the
    demo's CHGNet NiSbS prototype): plain least squares gives Sb that whole error; the ridge pulls it towards
    the level's mean energy per atom, and ``choose_ridge`` picks the λ that predicts held-out Sb best."""
    rng = np.random.default_rng(1)
    truth = {1: -4.0, 6: -6.0, 51: -4.5}
    numbers = [np.array([1] * rng.integers(1, 6) + [6] * rng.integers(1, 6)) for _ in range(40)]
    energies = [sum(truth[int(z)] for z in zs) + rng.normal(0, 0.01) for zs in numbers]
    numbers.append(np.array([51, 51, 1, 1]))
    energies.append(2 * truth[51] + 2 * truth[1] + 4 * 10.0)  # 10 eV/atom above the truth
    levels = ["chgnet"] * len(numbers)
    plain = fit_reference_energies_from_arrays(numbers, energies, levels)
    ridged = fit_reference_energies_from_arrays(numbers, energies, levels, ridge=10.0)
    chgnet = level_index("chgnet")
    assert plain[chgnet, 51] == pytest.approx(truth[51] + 20.0, abs=0.05)  # the outlier, all on Sb
    mean = sum(energies) / sum(len(z) for z in numbers)
    assert abs(ridged[chgnet, 51] - mean) < abs(plain[chgnet, 51] - mean)
    # hydrogen, in 40 structures, takes a little of the outlier (it shares its structure); the mask token none
    assert ridged[chgnet, 1] == pytest.approx(truth[1], abs=0.3) and ridged[chgnet, 0] == 0
    assert torch.equal(fit_reference_energies_from_arrays(numbers, energies, levels, ridge=0.0), plain)

    fit = CompositionLeastSquares(13)
    counts = np.stack([np.bincount(z, minlength=NUM_ELEMENTS) for z in numbers])
    fit.add(counts, np.asarray(energies), np.full(len(numbers), chgnet))
    held_out = [np.array([51] * 8), np.array([1, 6, 6])]
    held_energies = [8 * truth[51], truth[1] + 2 * truth[6]]
    chosen = choose_ridge(fit, held_out, held_energies, ["chgnet"] * 2)

    def held_out_mae(lam: float) -> float:
        table = fit.solve(lam)[chgnet].numpy()
        return np.mean(
            [abs(e - table[z].sum()) / len(z) for z, e in zip(held_out, held_energies, strict=True)]
        )

    maes = {lam: held_out_mae(lam) for lam in RIDGE_GRID}
    assert chosen[chgnet] > 0 and maes[chosen[chgnet]] == min(maes.values()) < maes[0.0] / 10
    assert chosen[level_index("pbe")] == 0  # no structures at that level


def test_reference_energies_enter_the_energy_at_the_structures_level_of_theory():
    model = small_model()
    atoms = alanine()
    before = {
        lv: model(batch_of(atoms, level=lv), ("energy",))["energy"].detach() for lv in ("gfn2-xtb", "pbe")
    }
    table = table_from_dict({"gfn2-xtb": {"H": -10.7, "C": -48.8, "N": -71.0, "O": -102.6}}, 13)
    model.reference_energies.set_table(table)
    after = {
        lv: model(batch_of(atoms, level=lv), ("energy",))["energy"].detach() for lv in ("gfn2-xtb", "pbe")
    }
    shift = table[level_index("gfn2-xtb"), torch.tensor(atoms.numbers)].sum()
    torch.testing.assert_close(
        after["gfn2-xtb"] - before["gfn2-xtb"], shift.reshape(1), rtol=1e-12, atol=1e-9
    )
    torch.testing.assert_close(after["pbe"], before["pbe"], rtol=0, atol=0)
    assert "reference_energies.energies" in model.state_dict()
    assert table_to_dict(model.reference_energies.energies) == {
        "gfn2-xtb": {"H": -10.7, "C": -48.8, "N": -71.0, "O": -102.6}
    }


def test_a_properties_head_saved_before_its_label_statistics_loads_as_it_predicted():
    from model.heads.graph_readout import PropertyHead

    old = PropertyHead(channels=8, lmax=1, num_properties=2)
    weights = {k: v for k, v in old.state_dict().items() if k not in ("shift", "scale")}
    new = PropertyHead(channels=8, lmax=1, num_properties=2)
    new.set_statistics(torch.tensor([3.0, 4.0]), torch.tensor([2.0, 2.0]))
    new.load_state_dict(weights, strict=True)
    assert new.shift.tolist() == [0.0, 0.0] and new.scale.tolist() == [1.0, 1.0]
