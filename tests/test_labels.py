"""Labellers against independent references: tblite's ASE calculator, finite differences of their own
energies, CHGNet's ASE calculator; the parallel driver's order, skipping and errors."""

from __future__ import annotations

from collections import Counter
from dataclasses import replace

import numpy as np
import pytest
import torch
from ase import Atoms
from ase.build import bulk, molecule

from data_pipeline.labels import LABELLERS, label_structures, labeller_for
from data_pipeline.labels.amber14 import Amber14Labeller
from data_pipeline.labels.chgnet import CHGNetLabeller
from data_pipeline.labels.emt import EMTLabeller
from data_pipeline.labels.xtb import GFN2xTBLabeller
from data_pipeline.readers import read_structures
from data_pipeline.schema import BadInputError, Structure
from data_pipeline.sources.alloys import emt_alloys
from data_pipeline.sources.proteins import mdanalysis_data_dir


def close(actual, expected, **tol) -> None:
    torch.testing.assert_close(
        torch.as_tensor(np.asarray(actual, dtype=np.float64)),
        torch.as_tensor(np.asarray(expected, dtype=np.float64)),
        **tol,
    )


def molecule_record(atoms: Atoms, key: str, *, charge: int = 0, spin: int = 1) -> Structure:
    return Structure(
        key=key,
        domain="molecule",
        atomic_numbers=atoms.numbers.astype(np.uint8),
        positions=atoms.positions.astype(np.float64),
        charge=charge,
        spin=spin,
    )


def crystal_record(atoms: Atoms, key: str) -> Structure:
    return Structure(
        key=key,
        domain="material",
        atomic_numbers=atoms.numbers.astype(np.uint8),
        positions=atoms.positions.astype(np.float64),
        cell=atoms.cell.array.copy(),
        pbc=np.ones(3, dtype=bool),
    )


def strained_energy(labeller, s: Structure, i: int, j: int, eps: float) -> float:
    """Energy under the symmetric strain ε_ij = ε_ji = eps/2 (eps on the diagonal)."""
    strain = np.zeros((3, 3))
    strain[i, j] += eps / 2
    strain[j, i] += eps / 2
    deformation = np.eye(3) + strain
    return labeller(replace(s, cell=s.cell @ deformation, positions=s.positions @ deformation)).energy


def finite_difference_force(labeller, s: Structure, atom: int, h: float) -> list[float]:
    """−∂E/∂x of one atom by central differences of the labeller's energy, eV/Å."""
    force = []
    for axis in range(3):
        plus, minus = s.positions.copy(), s.positions.copy()
        plus[atom, axis] += h
        minus[atom, axis] -= h
        force.append(
            -(labeller(replace(s, positions=plus)).energy - labeller(replace(s, positions=minus)).energy)
            / (2 * h)
        )
    return force


def peptide() -> Structure:
    """A6PA6, a 13-residue α-helical peptide with hydrogens, read by the project's PDB reader."""
    return next(read_structures(mdanalysis_data_dir() / "A6PA6_alpha.pdb"))


@pytest.mark.parametrize(("name", "charge", "spin"), [("CH3CH2OH", 0, 1), ("CH3", 0, 2), ("OH", -1, 1)])
def test_xtb_matches_tblite_ase_calculator(name, charge, spin):
    from tblite.ase import TBLite

    atoms = molecule(name)
    labelled = GFN2xTBLabeller()(molecule_record(atoms, f"g2/{name}", charge=charge, spin=spin))
    atoms.calc = TBLite(method="GFN2-xTB", charge=charge, multiplicity=spin, verbosity=0)
    assert labelled.level_of_theory == "gfn2-xtb"
    close(labelled.energy, atoms.get_potential_energy(), rtol=1e-9, atol=1e-7)
    close(labelled.forces, atoms.get_forces(), rtol=1e-5, atol=1e-5)


def test_xtb_refuses_a_spin_the_electrons_cannot_have():
    radical_as_singlet = molecule_record(molecule("CH3"), "g2/CH3", spin=1)
    with pytest.raises(
        BadInputError, match=r"g2/CH3.*labels\.xtb.*multiplicity 1 is impossible with 9 electrons"
    ):
        GFN2xTBLabeller()(radical_as_singlet)


def test_emt_forces_and_stress_are_derivatives_of_its_energy():
    emt = EMTLabeller()
    alloy = next(emt_alloys(1, seed=3))
    s = replace(alloy, positions=alloy.positions.astype(np.float64), cell=alloy.cell.astype(np.float64))
    labelled = emt(s)
    assert labelled.level_of_theory == "emt" and labelled.stress.shape == (3, 3)
    h = 1e-4
    for atom in (0, 7):
        close(labelled.forces[atom], finite_difference_force(emt, s, atom, h), rtol=1e-4, atol=1e-5)
    volume = abs(np.linalg.det(s.cell))
    for i, j in ((0, 0), (1, 2)):
        numeric = (strained_energy(emt, s, i, j, 1e-5) - strained_energy(emt, s, i, j, -1e-5)) / 2e-5 / volume
        close(labelled.stress[i, j], numeric, rtol=1e-3, atol=1e-6)


def test_emt_refuses_elements_it_has_no_parameters_for():
    with pytest.raises(BadInputError, match=r"silicon.*labels\.emt.*no parameters for Si"):
        EMTLabeller()(crystal_record(bulk("Si"), "silicon"))


def test_amber14_energy_is_finite_and_forces_match_finite_differences():
    amber = Amber14Labeller()
    s = replace(peptide(), positions=peptide().positions.astype(np.float64))
    labelled = amber(s)
    assert labelled.level_of_theory == "amber14" and labelled.num_atoms == s.num_atoms
    assert np.isfinite(labelled.energy) and labelled.stress is None
    atom = 10
    close(labelled.forces[atom], finite_difference_force(amber, s, atom, 1e-3), rtol=2e-3, atol=2e-3)


def test_amber14_labels_the_structure_pdbfixer_completed():
    full = peptide()
    heavy = full.atomic_numbers != 1
    stripped = replace(
        full,
        atomic_numbers=full.atomic_numbers[heavy],
        positions=full.positions[heavy],
        per_atom={k: v[heavy] for k, v in full.per_atom.items()},
    )
    labelled = Amber14Labeller()(stripped)
    hydrogens = int(np.sum(labelled.atomic_numbers == 1))
    assert hydrogens == int(np.sum(full.atomic_numbers == 1)) > 0
    assert labelled.extra["amber14_added_atoms"] == hydrogens
    assert labelled.forces.shape == (labelled.num_atoms, 3) and np.isfinite(labelled.energy)
    assert {k: len(v) for k, v in labelled.per_atom.items()} == dict.fromkeys(
        stripped.per_atom, labelled.num_atoms
    )
    residues = list(
        dict.fromkeys(zip(labelled.per_atom["residue_index"], labelled.per_atom["residue_name"], strict=True))
    )
    assert residues == list(
        dict.fromkeys(zip(stripped.per_atom["residue_index"], stripped.per_atom["residue_name"], strict=True))
    )
    kept = {
        (r, a): p
        for r, a, p in zip(
            stripped.per_atom["residue_index"],
            stripped.per_atom["atom_name"],
            stripped.positions,
            strict=True,
        )
    }
    for r, a, z, p in zip(
        labelled.per_atom["residue_index"],
        labelled.per_atom["atom_name"],
        labelled.atomic_numbers,
        labelled.positions,
        strict=True,
    ):
        if z != 1:
            close(p, kept[(r, a)], rtol=0, atol=1e-3)  # heavy atoms stay where the file put them


def test_amber14_never_bonds_across_missing_residues():
    full = peptide()
    kept = full.per_atom["residue_index"] != 7  # the proline in the middle of the helix goes missing
    gapped = replace(
        full,
        atomic_numbers=full.atomic_numbers[kept],
        positions=full.positions[kept],
        per_atom={k: v[kept] for k, v in full.per_atom.items()},
    )
    labelled = Amber14Labeller()(gapped)
    assert int(np.sum(labelled.per_atom["atom_name"] == "OXT")) == 2  # both runs get a C terminus
    assert labelled.extra["amber14_added_atoms"] == 3  # OXT of residue 6, two more N-terminal H on residue 8
    assert np.linalg.norm(labelled.forces, axis=1).max() < 10.0  # eV/Å: no bond stretched over the gap


@pytest.fixture(scope="module")
def chgnet() -> CHGNetLabeller:
    return CHGNetLabeller(device="cpu")


def test_chgnet_stress_is_the_strain_derivative_of_its_energy(chgnet):
    silicon = bulk("Si", "diamond", a=5.43) * (2, 1, 1)
    silicon.rattle(0.05, seed=1)
    s = crystal_record(silicon, "silicon")
    labelled = chgnet(s)
    volume = silicon.get_volume()
    assert labelled.level_of_theory == "chgnet"
    for i, j in ((0, 0), (2, 2), (0, 1)):
        numeric = (
            (strained_energy(chgnet, s, i, j, 2e-3) - strained_energy(chgnet, s, i, j, -2e-3)) / 4e-3 / volume
        )
        close(labelled.stress[i, j], numeric, rtol=2e-2, atol=2e-4)


def test_chgnet_total_energy_and_forces_match_its_ase_calculator(chgnet):
    from chgnet.model.dynamics import CHGNetCalculator

    cell = bulk("NaCl", "rocksalt", a=5.64, cubic=True)
    cell.rattle(0.03, seed=2)
    labelled = chgnet(crystal_record(cell, "rocksalt"))
    cell.calc = CHGNetCalculator(model=chgnet.model, use_device="cpu")
    close(labelled.energy, cell.get_potential_energy(), rtol=1e-5, atol=1e-5)
    close(labelled.forces, cell.get_forces(), rtol=1e-4, atol=1e-5)
    close(labelled.stress, cell.get_stress(voigt=False), rtol=1e-4, atol=1e-6)


def test_auto_picks_the_labeller_by_domain():
    water = molecule_record(molecule("H2O"), "g2/H2O")
    alloy = next(emt_alloys(1))
    assert [
        s.level_of_theory for s in label_structures([water, alloy], "auto", workers=0, progress=False)
    ] == ["gfn2-xtb", "emt"]
    assert labeller_for(crystal_record(bulk("Si"), "si")) is CHGNetLabeller
    assert labeller_for(peptide()) is Amber14Labeller
    with pytest.raises(ValueError, match="unknown label method 'dft'.*xtb, xtb-gfn1, emt, amber14, chgnet, auto"):
        label_structures([water], "dft")
    assert set(LABELLERS) == {"xtb", "xtb-gfn1", "emt", "amber14", "chgnet", "auto"}


def test_parallel_labelling_keeps_input_order_and_matches_in_process():
    cells = list(emt_alloys(12, seed=5))
    parallel = list(label_structures(iter(cells), "emt", workers=2, progress=False))
    serial = list(label_structures(cells, "emt", workers=0, progress=False))
    assert [s.key for s in parallel] == [s.key for s in cells]
    close([s.energy for s in parallel], [s.energy for s in serial], rtol=0, atol=0)
    assert len({round(s.energy, 6) for s in parallel}) == len(cells)


def test_a_failing_record_is_skipped_and_counted_or_raises_naming_its_key():
    collapsed = molecule("H2O")
    collapsed.positions[1] = collapsed.positions[0]
    records = [
        molecule_record(molecule("CH4"), "g2/CH4"),
        molecule_record(collapsed, "broken/water"),
        molecule_record(molecule("NH3"), "g2/NH3"),
    ]
    counter: Counter = Counter()
    kept = list(label_structures(records, "xtb", workers=2, skip_bad=True, counter=counter, progress=False))
    assert [s.key for s in kept] == ["g2/CH4", "g2/NH3"]
    assert counter == Counter({"labels.xtb": 1})
    with pytest.raises(
        BadInputError, match=r"record broken/water, field 'labels\.xtb'.*Too close interatomic"
    ):
        list(label_structures(records, "xtb", workers=2, progress=False))
