"""Physics evaluation tasks on small real structures, scored by predictors whose right answer is known: EMT
against EMT as the reference, a chiral toy energy, a small untrained atomfm checkpoint."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from ase import Atoms
from ase.build import bulk, molecule
from ase.calculators.calculator import Calculator, all_changes
from ase.calculators.emt import EMT
from ase.calculators.singlepoint import SinglePointCalculator
from ase.cluster import Icosahedron
from ase.eos import EquationOfState as AseEquationOfState
from ase.io import write
from ase.units import GPa
from model_fixtures import alanine, small_model
from scipy.stats import spearmanr

from data_pipeline.schema import Structure, validate
from eval.data import EvalData
from eval.predictors import CalculatorPredictor, CheckpointPredictor, ReferenceBaseline
from eval.tasks import build_task
from eval.tasks.conformer_ranking import spearman
from eval.tasks.diatomics import curve_shape
from eval.tasks.eos import birch_murnaghan, energy_volume_scan
from eval.tasks.relaxation import relaxed_rmsd
from eval.tasks.symmetry import TRANSLATION, random_rotation
from launch.cli import main as atomfm
from model.calculator import AtomFMCalculator
from model.checkpoint_io import save_export

EMT_SPEC = "ase.calculators.emt:EMT"


class SignedVolume(Calculator):
    """A chiral toy energy E = K (r1 − r0) · ((r2 − r0) × (r3 − r0)) eV: rotation and translation invariant,
    odd under a mirror, so E(Px) = −E(x) and F(Px) = −P F(x)."""

    implemented_properties = ["energy", "forces"]
    K = 0.1

    def calculate(self, atoms=None, properties=None, system_changes=all_changes) -> None:
        super().calculate(atoms, properties, system_changes)
        p = self.atoms.positions
        a, b, c = p[1] - p[0], p[2] - p[0], p[3] - p[0]
        gradient = np.zeros_like(p)
        gradient[1], gradient[2], gradient[3] = np.cross(b, c), np.cross(c, a), np.cross(a, b)
        gradient[0] = -gradient[1:4].sum(axis=0)
        self.results = {"energy": self.K * float(a @ np.cross(b, c)), "forces": -self.K * gradient}


class UniformField(Calculator):
    """E = K Σ x_i eV, a uniform field along x: translation and rotation change it, a mirror through x = 0 flips
    its sign."""

    implemented_properties = ["energy", "forces"]
    K = 0.2

    def calculate(self, atoms=None, properties=None, system_changes=all_changes) -> None:
        super().calculate(atoms, properties, system_changes)
        forces = np.zeros((len(self.atoms), 3))
        forces[:, 0] = -self.K
        self.results = {"energy": self.K * float(self.atoms.positions[:, 0].sum()), "forces": forces}


def structure(atoms: Atoms, key: str, *, group: str = "", level: str = "emt", energy: float | None = None):
    periodic = bool(atoms.pbc.any())
    return validate(
        Structure(
            key=key,
            domain="material" if periodic else "molecule",
            atomic_numbers=atoms.numbers,
            positions=atoms.positions,
            cell=atoms.cell.array if periodic else None,
            pbc=atoms.pbc,
            level_of_theory=level,
            energy=energy,
            group_id=group or key,
        )
    )


def data_of(*structures: Structure) -> EvalData:
    return EvalData("physics", "file", [], None, list(structures), sha256="0" * 64)


def emt_energy(atoms: Atoms) -> float:
    atoms = atoms.copy()
    atoms.calc = EMT()
    return float(atoms.get_potential_energy())


def cu3au() -> Atoms:
    """L1₂ Cu₃Au, cubic 4-atom cell near EMT's lattice constant."""
    atoms = bulk("Cu", "fcc", a=3.72, cubic=True)
    atoms.numbers[0] = 79
    return atoms


@pytest.fixture(scope="module")
def emt() -> CalculatorPredictor:
    return CalculatorPredictor(EMT_SPEC)


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory) -> CheckpointPredictor:
    out = tmp_path_factory.mktemp("model") / "export"
    save_export(small_model(seed=3, num_layers=3), out)
    return CheckpointPredictor(out, name="small")


def test_conformer_ranking_scores_the_labelling_method_against_scipy_and_the_baseline_at_zero(emt):
    conformers = []
    for name, count in (("CH3CH2OH", 4), ("H2O", 3)):
        for i in range(count):
            atoms = molecule(name)
            atoms.rattle(0.05, seed=i)
            conformers.append((name, i, atoms, emt_energy(atoms)))
    emt_water = [e for name, _, _, e in conformers if name == "H2O"]
    swapped = [emt_water[1], emt_water[0], emt_water[2]]  # water's labels: the first two exchanged
    structures = [
        structure(a, f"{name}/{i}", group=name, energy=swapped[i] if name == "H2O" else e)
        for name, i, a, e in conformers
    ]
    # one group_id, four molecules (as in the G2 set): not conformers of each other
    ammonia = [molecule(name) for name in ("N", "NH", "NH2", "NH3")]
    structures += [structure(a, f"ammonia/{i}", group="ammonia", energy=0.0) for i, a in enumerate(ammonia)]
    data = data_of(*structures)
    task = build_task("conformer_ranking")
    result = task.run(emt, data, progress=False)
    groups = result["details"]["groups"]
    assert set(groups) == {"CH3CH2OH/C2H6O[0,1]@emt", "H2O/H2O[0,1]@emt"}
    assert groups["CH3CH2OH/C2H6O[0,1]@emt"]["spearman"] == pytest.approx(1.0)
    assert groups["H2O/H2O[0,1]@emt"]["spearman"] == pytest.approx(spearmanr(emt_water, swapped)[0])
    metrics = result["metrics"]["molecule"]
    assert metrics["spearman"]["value"] == pytest.approx((1.0 + spearmanr(emt_water, swapped)[0]) / 2)
    assert metrics["spearman"]["n"] == 2 and metrics["spearman"]["better"] == "higher"

    baseline = task.run(ReferenceBaseline(structures, fitted_on="physics"), data, progress=False)
    assert baseline["metrics"]["molecule"]["spearman"]["value"] == 0.0
    assert baseline["metrics"]["molecule"]["lowest_conformer"]["value"] == 0.0


def test_spearman_is_zero_for_a_constant_prediction_and_ties_within_a_microvolt():
    assert spearman(np.array([5.0, 5.0, 5.0]), np.array([1.0, 3.0, 2.0])) == 0.0
    assert spearman(np.array([1.0, 1.0 + 1e-9, 2.0]), np.array([1.0, 2.0, 3.0])) == pytest.approx(
        spearmanr([1.0, 1.0, 2.0], [1.0, 2.0, 3.0])[0]
    )


def test_eos_of_emt_against_emt_has_no_error_and_the_bulk_modulus_of_ase_s_fit(emt):
    copper = structure(bulk("Cu", "fcc", a=3.6, cubic=True), "cu")
    silicon = structure(bulk("Si", "diamond", a=5.43), "si")  # EMT has no Si: counted, not scored
    result = build_task("eos").run(emt, data_of(copper, structure(cu3au(), "cu3au"), silicon), progress=False)
    metrics = result["metrics"]["material"]
    assert metrics["bulk_modulus_mae"]["value"] == 0.0 and metrics["bulk_modulus_mae"]["n"] == 2
    assert metrics["volume_error"]["value"] == 0.0 and metrics["fit_success"]["value"] == 100.0
    assert result["details"]["failed"] == {"model": 1} and "si" in result["details"]["failures"]["model"]

    factors = np.array(result["details"]["volume_factors"])
    volumes = factors * bulk("Cu", "fcc", a=3.6, cubic=True).get_volume()
    energies = energy_volume_scan(copper, EMT(), factors)
    ase_v0, _, ase_b = AseEquationOfState(volumes, energies, eos="birchmurnaghan").fit()
    fit = result["details"]["structures"]["cu"]["reference_fit"]
    assert fit["bulk_modulus_GPa"] == pytest.approx(ase_b / GPa, rel=1e-3)
    assert fit["volume_per_atom"] == pytest.approx(ase_v0 / 4, rel=1e-4)

    lennard_jones = CalculatorPredictor(
        "ase.calculators.lj:LennardJones", options={"sigma": 2.3, "epsilon": 0.4, "rc": 6.0}
    )
    other = build_task("eos").run(lennard_jones, data_of(copper), progress=False)
    fits = other["details"]["structures"]["cu"]
    expected = abs(fits["model_fit"]["bulk_modulus_GPa"] - fits["reference_fit"]["bulk_modulus_GPa"])
    assert other["metrics"]["material"]["bulk_modulus_mae"]["value"] == pytest.approx(expected, abs=2e-3)
    assert expected > 1.0


def test_birch_murnaghan_refuses_a_concave_curve_and_a_minimum_outside_the_scan():
    volumes = np.linspace(10.0, 12.0, 7)
    assert isinstance(birch_murnaghan(volumes, -((volumes - 11.0) ** 2)), str)
    assert isinstance(birch_murnaghan(volumes, (volumes - 14.0) ** 2), str)
    assert birch_murnaghan(volumes, (volumes - 11.0) ** 2).volume == pytest.approx(11.0, rel=1e-3)


def test_relaxation_with_emt_against_emt_ends_where_the_reference_does(emt):
    crystals = data_of(structure(cu3au(), "cu3au"), structure(bulk("Cu", "fcc", a=3.65, cubic=True), "cu"))
    metrics = build_task("relaxation").run(emt, crystals, progress=False)["metrics"]["material"]
    assert metrics["energy_gap"]["value"] < 1e-6 and metrics["energy_error"]["value"] < 1e-6
    assert metrics["rmsd"]["value"] < 1e-6 and metrics["converged"]["value"] == 100.0
    assert metrics["steps"]["value"] > 5 and metrics["rmsd"]["n"] == 2

    stopped = build_task("relaxation", {"max_steps": "2"}).run(emt, crystals, progress=False)
    assert stopped["metrics"]["material"]["converged"]["value"] == 0.0
    assert stopped["metrics"]["material"]["steps"]["value"] == 2.0


def test_relaxation_with_another_potential_ends_elsewhere():
    lennard_jones = CalculatorPredictor(
        "ase.calculators.lj:LennardJones", options={"sigma": 2.3, "epsilon": 0.4, "rc": 6.0}
    )
    result = build_task("relaxation").run(lennard_jones, data_of(structure(cu3au(), "cu3au")), progress=False)
    metrics = result["metrics"]["material"]
    assert metrics["energy_gap"]["value"] > 1.0 and metrics["volume_error"]["value"] > 1.0
    assert metrics["rmsd"]["value"] > 1e-4 and metrics["energy_error"]["value"] > 100.0


def test_relaxed_rmsd_uses_the_minimum_image_and_ignores_a_rigid_shift():
    reference = cu3au()
    moved = reference.copy()
    moved.positions += [0.3, -0.2, 0.1]
    moved.positions[1] += reference.cell[0]
    assert relaxed_rmsd(moved, reference) == pytest.approx(0.0, abs=1e-12)
    moved.positions[2, 1] += 0.1
    assert relaxed_rmsd(moved, reference) == pytest.approx(0.1 * np.sqrt(3) / 4)


def test_emt_is_rotation_translation_and_mirror_invariant(emt):
    rattled = cu3au()
    rattled.rattle(0.05, seed=1)
    data = data_of(structure(molecule("H2O"), "water"), structure(rattled, "cu3au"))
    metrics = build_task("symmetry").run(emt, data, progress=False)["metrics"]
    assert set(metrics) == {"all", "molecule", "material"} and "rotation_stress" in metrics["material"]
    for name, metric in metrics["all"].items():
        assert metric["value"] < 1e-7, name
    assert metrics["material"]["rotation_forces"]["unit"] == "meV/Å"


def test_symmetry_measures_the_mirror_gap_of_a_chiral_energy():
    chiral = CalculatorPredictor("test_eval_physics:SignedVolume")
    peroxide = molecule("H2O2")  # a non-planar dihedral: a signed volume
    atoms = peroxide.copy()
    atoms.calc = SignedVolume()
    energy, forces = atoms.get_potential_energy(), atoms.get_forces()
    metrics = build_task("symmetry").run(chiral, data_of(structure(peroxide, "h2o2")), progress=False)
    found = metrics["metrics"]["molecule"]
    assert found["mirror_energy"]["value"] == pytest.approx(1000 * 2 * abs(energy) / 4)
    assert found["mirror_forces"]["value"] == pytest.approx(1000 * 2 * np.abs(forces).mean())
    assert found["rotation_energy"]["value"] < 1e-9 and found["rotation_forces"]["value"] < 1e-9


def test_symmetry_measures_what_a_uniform_field_breaks():
    water = structure(molecule("H2O"), "water")
    metrics = build_task("symmetry").run(
        CalculatorPredictor("test_eval_physics:UniformField"), data_of(water), progress=False
    )["metrics"]["molecule"]
    rng = np.random.default_rng([0, 0])  # the task's draws for its first structure at seed 0
    rotations = [random_rotation(rng) for _ in range(2)]
    shift = rng.normal(0.0, TRANSLATION, 3)
    x = np.asarray(water.positions, dtype=np.float64)
    k, n = UniformField.K, len(x)
    rotated = np.mean([abs(((x @ r.T)[:, 0] - x[:, 0]).sum()) for r in rotations])
    assert metrics["rotation_energy"]["value"] == pytest.approx(1000 * k * rotated / n)
    field_turned = np.mean([np.abs(np.eye(3)[0] - r[:, 0]).mean() for r in rotations])
    assert metrics["rotation_forces"]["value"] == pytest.approx(1000 * k * field_turned)
    assert metrics["translation_energy"]["value"] == pytest.approx(1000 * k * abs(shift[0]))
    assert metrics["translation_forces"]["value"] == 0.0
    assert metrics["mirror_energy"]["value"] == pytest.approx(1000 * k * 2 * abs(x[:, 0].sum()) / n)


def test_atomfm_checkpoint_rotations_are_round_off_and_its_mirror_gap_is_what_its_calculator_says(checkpoint):
    left = alanine()
    rattled = cu3au()
    rattled.rattle(0.05, seed=2)
    data = data_of(structure(left, "ala", level="gfn2-xtb"), structure(rattled, "cu3au"))
    metrics = build_task("symmetry", {"rotations": "1"}).run(checkpoint, data, progress=False)["metrics"]
    for prefix in ("rotation", "translation"):
        assert metrics["all"][f"{prefix}_energy"]["value"] < 1e-6
        assert metrics["all"][f"{prefix}_forces_max"]["value"] < 1e-5
    assert metrics["material"]["rotation_stress"]["value"] < 1e-6

    calc = AtomFMCalculator(checkpoint.model.double(), level_of_theory="gfn2-xtb")
    right = left.copy()
    right.positions[:, 0] *= -1
    gap = [atoms.copy() for atoms in (left, right)]
    for atoms in gap:
        atoms.calc = calc
    expected = 1000 * abs(gap[0].get_potential_energy() - gap[1].get_potential_energy()) / len(left)
    torch.testing.assert_close(metrics["molecule"]["mirror_energy"]["value"], expected, rtol=1e-6, atol=1e-9)


def test_md_drift_of_emt_on_a_copper_cluster_is_small_and_grows_with_the_time_step(emt):
    cluster = Icosahedron("Cu", 2)  # 13 atoms
    data = data_of(structure(cluster, "cu13"))
    fine = build_task("md_drift", {"steps": "100"}).run(emt, data, progress=False)["metrics"]["molecule"]
    coarse = build_task("md_drift", {"steps": "100", "timestep_fs": "8"}).run(emt, data, progress=False)
    assert fine["stable"]["value"] == 100.0 and fine["energy_fluctuation"]["value"] < 1.0
    assert (
        coarse["metrics"]["molecule"]["energy_fluctuation"]["value"]
        > 20 * fine["energy_fluctuation"]["value"]
    )


def test_md_drift_counts_a_run_that_blows_up():
    # Cu13's 2.5 Å bonds deep inside a 4 Å Lennard-Jones wall: the first step throws the atoms apart
    squeezed = CalculatorPredictor("ase.calculators.lj:LennardJones", options={"sigma": 4.0, "rc": 20.0})
    data = data_of(structure(Icosahedron("Cu", 2), "cu13"))
    result = build_task("md_drift").run(squeezed, data, progress=False)
    assert (
        result["metrics"]["molecule"]["stable"]["value"] == 0.0
        and "drift" not in result["metrics"]["molecule"]
    )
    assert result["details"]["blown_up"] == 1
    assert "total energy off" in result["details"]["molecules"]["cu13"]["blew_up"]


def test_md_drift_refuses_a_direct_force_checkpoint(tmp_path):
    save_export(small_model(seed=4, conservative_forces=False), tmp_path / "direct")
    direct = CheckpointPredictor(tmp_path / "direct", name="direct")
    result = build_task("md_drift").run(direct, data_of(structure(molecule("H2O"), "water")), progress=False)
    assert result["metrics"] == {}
    assert "direct force head" in result["details"]["not_applicable"]


def test_emt_dimers_have_one_minimum_and_repel_at_short_range(emt):
    data = data_of(structure(bulk("Cu", "fcc", a=3.6), "cu"), structure(bulk("Au", "fcc", a=4.08), "au"))
    result = build_task("diatomics").run(emt, data, progress=False)
    assert result["metrics"]["material"]["single_minimum"]["value"] == 100.0
    assert result["metrics"]["material"]["repulsive"]["value"] == 100.0
    assert result["metrics"]["all"]["spurious_extrema"]["value"] == 0.0
    copper = result["details"]["curves"]["Cu2@material"]
    assert copper["r"][-1] == 6.0 and copper["energy"][-1] == 0.0 and 2.0 < copper["bond_length"] < 2.4


def test_curve_shape_counts_a_spurious_well_and_a_collapse():
    r = np.linspace(0.5, 6.0, 200)
    morse = (1 - np.exp(-2 * (r - 1.5))) ** 2 - 1
    shape = curve_shape(morse - morse[-1])
    assert (shape["minima"], shape["extrema"], shape["repulsive"]) == (1, 1, True)
    double_well = morse - 0.3 * np.exp(-((r - 3.0) ** 2) / 0.05)
    assert curve_shape(double_well - double_well[-1])["minima"] == 2
    collapsing = -np.exp(-r)
    assert curve_shape(collapsing - collapsing[-1])["repulsive"] is False


@pytest.fixture(scope="module")
def copper_file(tmp_path_factory) -> Path:
    atoms = bulk("Cu", "fcc", a=3.6)
    atoms.calc = SinglePointCalculator(atoms, energy=emt_energy(atoms), forces=np.zeros((1, 3)))
    path = tmp_path_factory.mktemp("data") / "cu.extxyz"
    write(path, atoms)
    return path


def test_task_options_reach_the_task_and_the_result_file(copper_file, tmp_path):
    argv = ["eval", "--calculator", EMT_SPEC, "--data", str(copper_file), "--level-of-theory", "emt"]
    argv += ["--tasks", "diatomics", "--task-option", "diatomics.points=12", "--out", str(tmp_path)]
    assert atomfm(argv + ["--no-progress"]) == 0
    (path,) = tmp_path.glob("EMT__diatomics__*.json")
    result = json.loads(path.read_text())
    assert result["details"]["options"] == {"points": 12}
    assert len(result["details"]["curves"]["Cu2@material"]["r"]) == 12


@pytest.mark.parametrize(
    "option, message",
    [
        ("diatomics.pointz=3", "did you mean 'points'"),
        ("diatomics.points=many", "expected int, got 'many'"),
        ("eos.points=5", "not among --tasks"),
        ("diatomics", "TASK.OPTION=VALUE"),
        ("diatomics.points=2", "at least 3 points"),
    ],
)
def test_bad_task_options_are_named(copper_file, tmp_path, capsys, option, message):
    argv = ["eval", "--calculator", EMT_SPEC, "--data", str(copper_file), "--tasks", "diatomics"]
    assert atomfm(argv + ["--task-option", option, "--out", str(tmp_path)]) == 2
    assert message in capsys.readouterr().err
