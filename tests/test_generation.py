"""Generation: the sampler's symmetry and reproducibility (a small float64 diffusion model, a few steps), bond
perception and the metrics on molecules whose answer is known, the valence guard, and `atomfm generate`."""

from __future__ import annotations

import argparse
import json

import numpy as np
import pytest
import torch
from ase.build import molecule
from model_fixtures import small_model
from scipy.spatial.transform import Rotation
from stream_corpus import molecules, write_corpus
from torch.testing import assert_close

from data_pipeline.schema import BadInputError
from eval.generation import cli
from eval.generation.baselines import baseline_molecules
from eval.generation.chemistry import edm_bond_orders, edm_stable_atoms, perceive_rdkit
from eval.generation.held_out import diffusion_loss_by_time
from eval.generation.molecules import Molecule, read_molecules, write_extxyz, write_sdf
from eval.generation.reference import TrainingMolecules
from eval.generation.sampler import DiffusionSampler
from eval.generation.valence_guard import apply_valence_guard
from eval.tasks.generation import GenerationMetrics, kabsch_rmsd, training_smiles
from model.checkpoint_io import save_export
from train.tasks.diffusion import DiffusionSchedule

ELEMENTS = [1, 6, 7, 8]
ROTATION = torch.tensor(Rotation.from_euler("zyx", [0.3, -1.1, 2.4]).as_matrix())
MIRROR = ROTATION @ torch.diag(torch.tensor([1.0, 1.0, -1.0], dtype=torch.float64))  # improper


@pytest.fixture(scope="module")
def sampler() -> DiffusionSampler:
    model = small_model(noise_level_embedding=True, cutoff=4.5)
    with torch.no_grad():  # a noise-level dependence, as training would give it
        torch.nn.init.normal_(model.backbone.noise_level.mlp[-1].weight, std=0.3)
    return DiffusionSampler(model, ELEMENTS, steps=4)


def mol(name: str, charge: int = 0) -> Molecule:
    atoms = molecule(name)
    return Molecule(
        atoms.numbers.astype(np.int64), atoms.positions - atoms.positions.mean(axis=0), charge, name
    )


@pytest.mark.parametrize("transform", [ROTATION, MIRROR], ids=["rotation", "mirror"])
def test_rotating_or_mirroring_the_noise_rotates_or_mirrors_the_molecule(sampler, transform):
    plain = sampler.sample([6, 9], 7)
    moved = sampler.sample([6, 9], 7, transform=transform)
    for a, b in zip(plain, moved, strict=True):
        assert np.array_equal(a.numbers, b.numbers)
        assert_close(
            torch.from_numpy(b.positions), torch.from_numpy(a.positions) @ transform.T, rtol=1e-9, atol=1e-9
        )


def test_a_completed_fragment_is_kept_exactly_and_moves_with_the_noise(sampler):
    fragment = mol("CH3CH2OH")
    shape = fragment.positions - fragment.positions.mean(axis=0)
    plain = sampler.sample([12, 14], 2, fragment=fragment)
    turned = Molecule(fragment.numbers, fragment.positions @ ROTATION.numpy().T)
    moved = sampler.sample([12, 14], 2, fragment=turned, transform=ROTATION)
    for a, b in zip(plain, moved, strict=True):
        head = a.positions[: fragment.num_atoms]
        assert np.array_equal(a.numbers[: fragment.num_atoms], fragment.numbers)
        assert_close(torch.from_numpy(head - head.mean(axis=0)), torch.from_numpy(shape), atol=1e-9, rtol=0)
        assert_close(
            torch.from_numpy(b.positions), torch.from_numpy(a.positions) @ ROTATION.T, rtol=1e-9, atol=1e-9
        )
    with pytest.raises(BadInputError, match="fragment has 9 atoms"):
        sampler.sample([9], 0, fragment=fragment)


def test_a_seed_fixes_the_molecules_and_another_seed_changes_them(sampler):
    a, b, c = (sampler.sample([5, 8], seed) for seed in (3, 3, 4))
    assert all(
        np.array_equal(x.positions, y.positions) and np.array_equal(x.numbers, y.numbers)
        for x, y in zip(a, b, strict=True)
    )
    assert not np.allclose(a[0].positions, c[0].positions)
    assert all(
        set(m.numbers.tolist()) <= set(ELEMENTS) and m.num_atoms == n for m, n in zip(a, [5, 8], strict=True)
    )
    assert_close(
        torch.from_numpy(a[1].positions.mean(axis=0)), torch.zeros(3, dtype=torch.float64), atol=1e-9, rtol=0
    )


class OracleDenoiser(torch.nn.Module):
    """The exact denoiser of a point mass at one molecule (``target``): ε = (z_t − α_t x₀)/σ_t, and logits
    that name its elements. The sampler must land on that molecule."""

    def __init__(self, template: torch.nn.Module, target: Molecule) -> None:
        super().__init__()
        self.config, self.heads, self.reference_energies = (
            template.config,
            template.heads,
            template.reference_energies,
        )
        self.dtype = template.dtype
        self.x0 = torch.from_numpy(target.positions - target.positions.mean(axis=0))
        self.z = torch.from_numpy(target.numbers)

    def forward(self, batch, outputs):
        schedule = DiffusionSchedule()
        t = batch.noise_level[0].double()
        eps = (batch.pos - schedule.alpha(t) * self.x0) / schedule.sigma(t)
        logits = torch.full((len(self.z), 119), -20.0, dtype=torch.float64).scatter(1, self.z[:, None], 20.0)
        return {"noise": eps, "atom_logits": logits}


def test_with_the_exact_denoiser_the_sampler_lands_on_the_molecule():
    ethanol = mol("CH3CH2OH")
    oracle = OracleDenoiser(small_model(noise_level_embedding=True, cutoff=4.5), ethanol)
    (sample,) = DiffusionSampler(oracle, [1, 6, 8], steps=50).sample([ethanol.num_atoms], 0)
    assert np.array_equal(sample.numbers, ethanol.numbers)
    assert_close(torch.from_numpy(sample.positions), oracle.x0, atol=1e-6, rtol=0)


def test_a_model_without_noise_level_conditioning_cannot_sample():
    with pytest.raises(BadInputError, match="noise-level conditioning"):
        DiffusionSampler(small_model(cutoff=4.5), ELEMENTS)


def test_edm_table_reads_single_double_and_triple_bonds():
    ethane, ethylene, acetylene = mol("C2H6"), mol("C2H4"), mol("C2H2")
    assert [edm_bond_orders(m.numbers, m.positions)[0, 1] for m in (ethane, ethylene, acetylene)] == [1, 2, 3]
    for m in (ethane, ethylene, acetylene):
        assert edm_stable_atoms(m.numbers, edm_bond_orders(m.numbers, m.positions)).all()


def test_rdkit_perception_allows_formal_charges_and_finds_a_pentavalent_carbon():
    nitromethane = mol("CH3NO2")
    perception = perceive_rdkit(nitromethane.numbers, nitromethane.positions)
    assert perception.orders_found and perception.stable_atoms.all()
    assert sorted(a.GetFormalCharge() for a in perception.mol.GetAtoms() if a.GetSymbol() != "H") == [
        -1,
        0,
        0,
        1,
    ]
    edm = edm_stable_atoms(
        nitromethane.numbers, edm_bond_orders(nitromethane.numbers, nitromethane.positions)
    )
    assert not edm.all()  # no formal charges in EDM's picture: N has valence 4
    methane = mol("CH4")
    crowded = Molecule(
        np.append(methane.numbers, 1), np.vstack([methane.positions, methane.positions[1] * -0.9]), 0, "CH5"
    )
    assert not perceive_rdkit(crowded.numbers, crowded.positions).stable_atoms.all()


def test_metrics_on_known_molecules_count_stability_validity_uniqueness_and_novelty():
    benzene, ethanol, water = mol("C6H6"), mol("CH3CH2OH"), mol("H2O")
    scattered = Molecule(ethanol.numbers, ethanol.positions * 3.0, 0, "exploded")
    samples = [benzene, benzene, ethanol, water, scattered]
    body = GenerationMetrics(xtb_molecules=0, posebusters="off").run(samples, {"O"}, progress=False)
    m = {k: v["value"] for k, v in body["metrics"]["molecule"].items()}
    assert m["molecule_stability"] == pytest.approx(80.0)
    assert m["validity"] == pytest.approx(80.0)  # isolated C and O atoms have no neutral Lewis structure
    assert m["connected"] == pytest.approx(80.0)
    assert m["uniqueness"] == pytest.approx(75.0)  # benzene twice among four valid
    assert m["novelty"] == pytest.approx(100.0 * 2 / 3)  # water ("O") is a training molecule
    assert body["metrics"]["molecule"]["molecule_stability"]["n"] == 5


def test_posebusters_and_xtb_pass_a_relaxed_molecule_and_flag_a_stretched_one():
    ethanol = mol("CH3CH2OH")
    stretched = Molecule(ethanol.numbers, ethanol.positions * 1.25, 0, "stretched")
    metrics = GenerationMetrics(xtb_molecules=2, xtb_steps=50)
    body = metrics.run([ethanol, stretched], set(), progress=False)
    m = body["metrics"]["molecule"]
    assert m["xtb_rmsd"]["n"] == 2 and m["xtb_relaxation_energy"]["value"] > 0
    assert m["posebusters"]["n"] == 2 and body["details"]["posebusters_checks"]["bond_lengths"] == 50.0


def test_kabsch_rmsd_ignores_rotation_and_translation():
    ethanol = mol("CH3CH2OH")
    moved = ethanol.positions @ ROTATION.numpy().T + 3.0
    assert kabsch_rmsd(ethanol.positions, moved) == pytest.approx(0.0, abs=1e-10)


def test_valence_guard_counts_what_it_rejects_and_repairs():
    water, ethanol = mol("H2O"), mol("CH3CH2OH")
    stray = Molecule(
        np.append(ethanol.numbers, 6), np.vstack([ethanol.positions, [[9.0, 9.0, 9.0]]]), 0, "ethanol+C"
    )
    kept, report = apply_valence_guard([water, stray], "reject")
    assert len(kept) == 1 and (report.passed, report.rejected) == (1, 1)
    kept, report = apply_valence_guard([water, stray], "repair")
    assert len(kept) == 2 and report.repaired == 1 and report.repairs == {"kept largest fragment": 1}
    assert kept[1].num_atoms == ethanol.num_atoms
    kept, report = apply_valence_guard([water, stray], "off")
    assert len(kept) == 2 and report.rejected == 1 and "failing (kept)" in report.summary()


def test_sdf_and_extxyz_round_trip_atoms_and_charges(tmp_path):
    samples = [mol("C6H6"), mol("CH3CH2OH")]
    write_sdf(tmp_path / "m.sdf", samples)
    write_extxyz(tmp_path / "m.extxyz", samples)
    for path in ("m.sdf", "m.extxyz"):
        back = read_molecules(tmp_path / path)
        assert [b.numbers.tolist() for b in back] == [s.numbers.tolist() for s in samples]
        assert_close(
            torch.from_numpy(back[1].positions), torch.from_numpy(samples[1].positions), atol=1e-4, rtol=0
        )


def test_baselines_keep_composition_and_destroy_geometry_or_types():
    training = TrainingMolecules([mol("CH3CH2OH"), mol("C6H6")], ["x"], "train")
    for name in ("training", "random-coordinates", "shuffled-types"):
        out = baseline_molecules(name, training, 4, seed=0)
        assert all(sorted(m.numbers.tolist()) in ([1] * 6 + [6] * 2 + [8], [1] * 6 + [6] * 6) for m in out)
    assert training_smiles(training.molecules) == {"CCO", "c1ccccc1"}


@pytest.mark.slow
def test_generate_writes_sdf_extxyz_and_a_result_reproducibly(tmp_path):
    corpus = tmp_path / "corpus"
    write_corpus(corpus, molecules(24), shard_size=8)
    model = small_model(noise_level_embedding=True, cutoff=4.5, main_level_of_theory="gfn2-xtb")
    save_export(model.float(), tmp_path / "export")
    parser = argparse.ArgumentParser()
    cli.register(parser.add_subparsers())

    def generate(*argv: str) -> int:
        args = parser.parse_args(
            ["generate", "--data", str(corpus), "--no-progress", "--xtb-molecules", "1", *argv]
        )
        return args.func(args)

    for out in ("a", "b"):
        common = ["--checkpoint", str(tmp_path / "export"), "--n", "3", "--atoms", "3-5", "--steps", "2"]
        assert (
            generate(
                *common, "--seed", "5", "--out", str(tmp_path / f"{out}.sdf"), "--score", str(tmp_path / out)
            )
            == 0
        )
    assert (tmp_path / "a.sdf").read_text() == (tmp_path / "b.sdf").read_text()
    assert len(read_molecules(tmp_path / "a.extxyz")) == 3
    assert json.loads((tmp_path / "a.json").read_text())["steps"] == 2
    (result,) = (tmp_path / "a").glob("*.json")
    record = json.loads(result.read_text())
    assert record["task"] == "generation" and record["metrics"]["molecule"]["validity"]["n"] == 3
    assert record["model"]["kind"] == "checkpoint" and record["details"]["valence_guard"]["checked"] == 3
    assert (
        generate(
            "--baseline",
            "training",
            "--n",
            "4",
            "--out",
            str(tmp_path / "t.sdf"),
            "--score",
            str(tmp_path / "a"),
        )
        == 0
    )
    boards = {json.loads(p.read_text())["data"]["sha256"] for p in (tmp_path / "a").glob("*.json")}
    assert len(boards) == 1  # sampler and baseline on one leaderboard board
    write_extxyz(tmp_path / "water.extxyz", [mol("H2O")])
    fragment = ["--fragment", str(tmp_path / "water.extxyz"), "--out", str(tmp_path / "f.sdf")]
    assert generate("--checkpoint", str(tmp_path / "export"), "--n", "2", "--steps", "2", *fragment) == 0
    assert all(m.numbers[:3].tolist() == [8, 1, 1] for m in read_molecules(tmp_path / "f.extxyz"))
    too_large = ["--atoms", "200-300", "--out", str(tmp_path / "x.sdf")]
    assert generate("--checkpoint", str(tmp_path / "export"), *too_large) == 2


def test_held_out_loss_conditions_on_each_molecules_own_charge(sampler, monkeypatch):
    """The held-out diffusion loss scores a molecule as training saw it: with its own charge, not the
    neutral charge the sampler draws new molecules at."""
    seen = []
    predict = sampler.predict

    def spy(batch, t):
        seen.append(batch.charge.tolist())
        return predict(batch, t)

    monkeypatch.setattr(sampler, "predict", spy)
    held_out = [mol("H2O"), mol("NH3", charge=1), mol("CH4", charge=-1)]
    rows = diffusion_loss_by_time(sampler, held_out, times=(0.2, 0.9), molecules_per_batch=2)
    assert seen == [[0, 1], [-1], [0, 1], [-1]]
    assert [r["atoms"] for r in rows] == [12, 12] and all(np.isfinite(r["eps_mse"]) for r in rows)
