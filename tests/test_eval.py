"""Evaluation: `atomfm eval` agrees with a plain loop over the ASE calculator, scores foreign calculators and the
baseline with the same code, writes the result schema, and names bad input."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from ase.build import bulk
from ase.calculators.emt import EMT
from ase.calculators.singlepoint import SinglePointCalculator
from ase.io import read, write
from model_fixtures import SMALL, small_model

from eval.metrics import mean_metric, ratio_metric
from eval.results import SCHEMA, SCHEMA_VERSION
from launch.cli import main as atomfm
from model.calculator import AtomFMCalculator
from model.checkpoint_io import save_export


@pytest.fixture(scope="module")
def labelled_file(tmp_path_factory) -> Path:
    """Rattled, strained Cu/Au cells with EMT energies, forces and stress, as extxyz."""
    frames = []
    rng = np.random.default_rng(0)
    for i in range(12):
        atoms = bulk("Cu" if i % 2 else "Au", "fcc", a=3.7 if i % 2 else 4.1, cubic=True).repeat(
            (1, 1, 1 + i % 2)
        )
        atoms.set_cell(atoms.cell.array @ (np.eye(3) + 0.01 * rng.standard_normal((3, 3))), scale_atoms=True)
        atoms.rattle(0.05, seed=i)
        atoms.calc = EMT()
        atoms.calc = SinglePointCalculator(
            atoms, energy=atoms.get_potential_energy(), forces=atoms.get_forces(), stress=atoms.get_stress()
        )
        frames.append(atoms)
    path = tmp_path_factory.mktemp("data") / "alloys.extxyz"
    write(path, frames)
    return path


@pytest.fixture(scope="module")
def export(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("model") / "export"
    save_export(small_model(seed=3), out)
    return out


def result(folder: Path, model: str) -> dict:
    (path,) = folder.glob(f"{model}__accuracy__*.json")
    return json.loads(path.read_text())


def test_eval_on_an_extxyz_file_gives_the_mae_of_a_plain_calculator_loop(labelled_file, export, tmp_path):
    code = atomfm(
        [
            "eval",
            "--checkpoint",
            str(export),
            "--name",
            "small",
            "--data",
            str(labelled_file),
            "--level-of-theory",
            "emt",
            "--tasks",
            "accuracy",
            "--out",
            str(tmp_path),
            "--no-progress",
        ]
    )
    assert code == 0
    metrics = result(tmp_path, "small")["metrics"]["material"]

    calc = AtomFMCalculator.from_checkpoint(export, level_of_theory="emt")
    energy_errors, force_errors, stress_errors = [], [], []
    for atoms in read(labelled_file, ":"):
        reference_e, reference_f, reference_s = (
            atoms.get_potential_energy(),
            atoms.get_forces(),
            atoms.get_stress(),
        )
        atoms.calc = calc
        energy_errors.append(abs(atoms.get_potential_energy() - reference_e) / len(atoms))
        force_errors.append(np.abs(atoms.get_forces() - reference_f).ravel())
        stress_errors.append(np.abs(atoms.get_stress(voigt=False) - _full(reference_s)).ravel())
    assert metrics["energy_mae"]["value"] == pytest.approx(1000 * np.mean(energy_errors), rel=1e-4)
    assert metrics["force_mae"]["value"] == pytest.approx(
        1000 * np.concatenate(force_errors).mean(), rel=1e-4
    )
    assert metrics["stress_mae"]["value"] == pytest.approx(
        1000 * np.concatenate(stress_errors).mean(), rel=1e-3
    )
    assert metrics["force_mae"]["n"] == 12 and metrics["force_mae"]["n_items"] == sum(
        e.size for e in force_errors
    )
    # each structure's own error sums, under its key (what a paired comparison of two models matches on)
    forces = result(tmp_path, "small")["per_structure"]["material"]["force_abs"]
    assert len(set(forces["keys"])) == 12 and forces["counts"] == [e.size for e in force_errors]
    np.testing.assert_allclose(forces["sums"], [e.sum() for e in force_errors], rtol=1e-4)


def test_the_same_code_scores_a_foreign_calculator_and_the_baseline(labelled_file, tmp_path):
    assert (
        atomfm(
            [
                "eval",
                "--calculator",
                "ase.calculators.emt:EMT",
                "--baseline",
                "--data",
                str(labelled_file),
                "--level-of-theory",
                "emt",
                "--out",
                str(tmp_path),
                "--no-progress",
            ]
        )
        == 0
    )
    emt = result(tmp_path, "EMT")["metrics"]["all"]
    # the labels' own method: only extxyz's 8-decimal positions separate them
    assert emt["energy_mae"]["value"] < 1e-3 and emt["force_mae"]["value"] < 1e-2
    baseline = result(tmp_path, "reference+zero-force")
    forces = np.concatenate([a.get_forces().ravel() for a in read(labelled_file, ":")])
    assert baseline["metrics"]["all"]["force_mae"]["value"] == pytest.approx(1000 * np.abs(forces).mean())
    assert baseline["model"]["kind"] == "baseline" and baseline["model"]["forces"] == "zero"


def test_result_files_carry_the_schema_identities_and_intervals(labelled_file, export, tmp_path):
    atomfm(
        [
            "eval",
            "--checkpoint",
            str(export),
            "--name",
            "small",
            "--data",
            str(labelled_file),
            "--level-of-theory",
            "emt",
            "--out",
            str(tmp_path),
            "--no-progress",
        ]
    )
    r = result(tmp_path, "small")
    assert (r["schema"], r["schema_version"], r["task"], r["primary_metric"]) == (
        SCHEMA,
        SCHEMA_VERSION,
        "accuracy",
        "force_mae",
    )
    assert (
        len(r["model"]["weights_sha256"]) == 64
        and r["model"]["config"]["backbone"]["channels"] == SMALL["channels"]
    )
    assert r["data"]["structures"] == 12 and len(r["data"]["sha256"]) == 64 and r["data"]["split"] is None
    low, high = r["metrics"]["all"]["force_mae"]["ci95"]
    assert low < r["metrics"]["all"]["force_mae"]["value"] < high
    assert set(r["per_element"]["material"]) == {"Cu", "Au"}
    assert len(r["parity"]["material"]["energy"]["reference"]) == 12
    assert {"torch", "python", "ase"} <= set(r["versions"]) and r["wall_time_s"] > 0


def test_structure_bootstrap_is_wider_than_an_atom_bootstrap_would_be():
    rng = np.random.default_rng(0)
    offsets = rng.normal(size=20)  # errors correlated within each structure
    sums = [abs(o) * 50 for o in offsets]
    metric = ratio_metric(np.array(sums), np.full(20, 50.0), unit="eV")
    assert metric.n == 20 and metric.n_items == 1000
    width = metric.ci95[1] - metric.ci95[0]
    atom_level = 2 * 1.96 * np.abs(offsets).std() / np.sqrt(1000)
    assert width > 3 * atom_level
    assert mean_metric(np.array([1.0, 1.0, 1.0]), unit="").ci95 == (1.0, 1.0)


@pytest.mark.parametrize(
    "argv, message",
    [
        (["--tasks", "acuracy"], "did you mean 'accuracy'"),
        (["--calculator", "ase.calculators.emt"], "module:factory"),
        (["--calculator", "no_such_module:Calc"], "no_such_module"),
    ],
)
def test_bad_eval_arguments_are_named(labelled_file, tmp_path, capsys, argv, message):
    base = ["eval", "--data", str(labelled_file), "--out", str(tmp_path), "--no-progress"]
    if "--calculator" not in argv:
        base += ["--baseline"]
    assert atomfm(base + argv) == 2
    assert message in capsys.readouterr().err


def test_a_level_the_checkpoint_does_not_know_is_named(labelled_file, export, tmp_path, capsys):
    assert (
        atomfm(
            [
                "eval",
                "--checkpoint",
                str(export),
                "--data",
                str(labelled_file),
                "--level-of-theory",
                "b3lyp-d9",
                "--out",
                str(tmp_path),
                "--no-progress",
            ]
        )
        == 2
    )
    err = capsys.readouterr().err
    assert "b3lyp-d9" in err and "gfn2-xtb" in err


def test_the_ridge_baseline_chooses_its_ridge_on_held_out_structures(labelled_file, tmp_path, capsys):
    """A scarce element whose one training structure carries an outlier label: the plain fit gives it the
    whole error, the ridge chosen on held-out structures does not (docs/training.md, "The config")."""
    from data_pipeline.schema import Structure
    from eval.predictors import ReferenceBaseline

    def crystal(symbols: list[str], energy: float, key: str) -> Structure:
        numbers = [{"Cu": 29, "Ag": 47, "Sb": 51}[x] for x in symbols]
        return Structure(
            key=key,
            domain="material",
            atomic_numbers=np.array(numbers),
            positions=np.arange(3 * len(numbers), dtype=float).reshape(-1, 3) * 2.0,
            level_of_theory="chgnet",
            energy=energy,
        )

    rng = np.random.default_rng(0)
    training = [
        crystal(["Cu"] * int(a) + ["Ag"] * int(b), -3.5 * a - 2.8 * b + rng.normal(0, 0.01), f"t{i}")
        for i, (a, b) in enumerate(rng.integers(1, 5, size=(30, 2)))
    ]
    training.append(crystal(["Sb", "Cu"], -4.0 - 3.5 + 2 * 6.0, "outlier"))  # 6 eV/atom high
    held_out = [crystal(["Sb"] * 4, 4 * -4.0, "h0"), crystal(["Cu", "Ag"], -6.3, "h1")]
    plain = ReferenceBaseline(training, fitted_on="t")
    ridge = ReferenceBaseline(training, fitted_on="t", name="reference-ridge+zero-force", held_out=held_out)
    antimony = held_out[0]
    assert abs(plain.energy(antimony) - antimony.energy) > 40  # +12 eV on Sb, 4 atoms
    assert abs(ridge.energy(antimony) - antimony.energy) < abs(plain.energy(antimony) - antimony.energy) / 3
    assert ridge.identity()["config"]["ridge"]["chgnet"] > 0 and plain.identity()["config"]["ridge"] == {}
    # files have no val split to choose on: named, not guessed
    assert atomfm(["eval", "--ridge-baseline", "--data", str(labelled_file), "--out", str(tmp_path)]) == 2
    assert "--ridge-baseline" in capsys.readouterr().err


def test_missing_data_and_checkpoint_are_named(labelled_file, tmp_path, capsys):
    assert (
        atomfm(["eval", "--baseline", "--data", str(tmp_path / "none.extxyz"), "--out", str(tmp_path)]) == 2
    )
    assert "none.extxyz" in capsys.readouterr().err
    assert (
        atomfm(
            [
                "eval",
                "--checkpoint",
                str(tmp_path / "nothing"),
                "--data",
                str(labelled_file),
                "--out",
                str(tmp_path),
            ]
        )
        == 2
    )
    assert "nothing" in capsys.readouterr().err


def _full(voigt: np.ndarray) -> np.ndarray:
    xx, yy, zz, yz, xz, xy = voigt
    return np.array([[xx, xy, xz], [xy, yy, yz], [xz, yz, zz]])


def test_direct_force_checkpoint_is_scored_on_its_direct_head_and_says_so(labelled_file, tmp_path):
    model = small_model(seed=4, conservative_forces=False)
    save_export(model, tmp_path / "direct")
    atomfm(
        [
            "eval",
            "--checkpoint",
            str(tmp_path / "direct"),
            "--name",
            "direct",
            "--data",
            str(labelled_file),
            "--level-of-theory",
            "emt",
            "--out",
            str(tmp_path / "r"),
            "--no-progress",
        ]
    )
    r = result(tmp_path / "r", "direct")
    assert r["model"]["forces"] == r["model"]["trained_forces"] == "direct"
    atoms = read(labelled_file, "0")
    direct = model(_batch(atoms), ("forces",), conservative=False)["forces"].detach().double().numpy()
    reference = atoms.get_forces()
    assert r["parity"]["material"]["forces"]["predicted"][:6] == pytest.approx(direct.ravel()[:6], abs=1e-5)
    assert r["parity"]["material"]["forces"]["reference"][:6] == pytest.approx(
        reference.ravel()[:6], abs=1e-5
    )


def _batch(atoms):
    from model.calculator import atoms_to_batch

    return atoms_to_batch(
        [atoms], small_model().config.backbone.cutoff, level_of_theory="emt", dtype=torch.float32
    )


def test_structures_a_calculator_cannot_handle_are_counted_not_fatal(labelled_file, tmp_path):
    frames = read(labelled_file, ":4")
    silicon = bulk("Si", "diamond", a=5.43)
    silicon.calc = SinglePointCalculator(silicon, energy=-10.8, forces=np.zeros((2, 3)))
    mixed = tmp_path / "mixed.extxyz"
    write(mixed, [*frames, silicon])
    assert (
        atomfm(
            [
                "eval",
                "--calculator",
                "ase.calculators.emt:EMT",
                "--data",
                str(mixed),
                "--level-of-theory",
                "emt",
                "--out",
                str(tmp_path / "r"),
                "--no-progress",
            ]
        )
        == 0
    )
    r = result(tmp_path / "r", "EMT")
    assert r["metrics"]["all"]["energy_mae"]["n"] == 4
    assert r["details"]["failed_per_domain"] == {"material": 1}
    assert any("Si" in reason for reason in r["details"]["failures"])


def test_a_head_on_pseudo_scalars_tells_enantiomers_apart_where_invariants_cannot(
    export, labelled_file, tmp_path
):
    assert (
        atomfm(
            [
                "eval",
                "--checkpoint",
                str(export),
                "--name",
                "small",
                "--data",
                str(labelled_file),
                "--tasks",
                "chirality",
                "--task-option",
                "chirality.conformers=4",
                "--out",
                str(tmp_path),
                "--no-progress",
            ]
        )
        == 0
    )
    (path,) = tmp_path.glob("small__chirality__*.json")
    metrics = json.loads(path.read_text())["metrics"]["molecule"]
    assert metrics["invariant_accuracy"]["value"] == 50.0  # identical features for the two enantiomers
    assert metrics["energy_gap"]["value"] < 1e-9  # the energy is mirror-invariant
    assert metrics["handed_accuracy"]["value"] >= 90.0
