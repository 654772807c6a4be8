"""The MiniDrugBank source: molecules read from an SDF, filtered by size, elements, charge and identity, rattled."""

from __future__ import annotations

import tarfile
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
from rdkit import Chem
from rdkit.Chem import AllChem

from data_pipeline.readers import read_structures
from data_pipeline.sources.drug_molecules import (
    MINIDRUGBANK_MEMBER,
    OPENMMFORCEFIELDS_VERSION,
    drug_molecules,
    fetch_minidrugbank,
)
from data_pipeline.sources.molecule_identity import ORGANIC_ELEMENTS

# name: SMILES (atoms with H)
MOLECULES = {
    "caffeine": "Cn1cnc2c1c(=O)n(C)c(=O)n2C",  # 24: too small
    "ibuprofen": "CC(C)Cc1ccc(cc1)C(C)C(=O)O",  # 33
    "bortezomib": "CC(C)C[C@@H](B(O)O)NC(=O)[C@H](Cc1ccccc1)NC(=O)c1cnccn1",  # 53, boron
    "sebacate": "[O-]C(=O)CCCCCCCCC(=O)[O-]",  # 30, charge -2
    "naproxen": "COc1ccc2cc(ccc2c1)[C@H](C)C(=O)O",  # 31
}


def write_sdf(path: Path, names: list[str]) -> Path:
    """3D molecules with explicit hydrogens (RDKit ETKDG, seeded), titled by name."""
    writer = Chem.SDWriter(str(path))
    for name in names:
        mol = Chem.AddHs(Chem.MolFromSmiles(MOLECULES[name]))
        AllChem.EmbedMolecule(mol, randomSeed=7)
        mol.SetProp("_Name", name)
        writer.write(mol)
    writer.close()
    return path


def test_molecules_outside_the_atom_range_are_left_out(tmp_path):
    sdf = write_sdf(tmp_path / "drugs.sdf", ["caffeine", "ibuprofen", "naproxen"])
    skipped = Counter()
    kept = list(drug_molecules(sdf, min_atoms=30, max_atoms=32, skipped=skipped))
    assert [s.key for s in kept] == ["minidrugbank/naproxen"]
    assert skipped == {"atoms": 2}
    assert kept[0].num_atoms == 31 and kept[0].domain == "molecule"


def test_elements_outside_the_set_are_left_out(tmp_path):
    sdf = write_sdf(tmp_path / "drugs.sdf", ["ibuprofen", "bortezomib"])
    skipped = Counter()
    kept = list(drug_molecules(sdf, elements=ORGANIC_ELEMENTS, skipped=skipped))
    assert [s.key for s in kept] == ["minidrugbank/ibuprofen"] and skipped == {"elements": 1}
    with_boron = list(drug_molecules(sdf, elements=ORGANIC_ELEMENTS | {5}))
    assert [s.key for s in with_boron] == ["minidrugbank/ibuprofen", "minidrugbank/bortezomib"]


def test_large_charges_and_known_molecules_are_left_out(tmp_path):
    sdf = write_sdf(tmp_path / "drugs.sdf", ["ibuprofen", "naproxen", "sebacate"])
    known = {s.group_id for s in read_structures(sdf) if s.extra["name"] == "ibuprofen"}
    skipped = Counter()
    kept = list(drug_molecules(sdf, exclude_groups=known, skipped=skipped))
    assert [s.key for s in kept] == ["minidrugbank/naproxen"]
    assert skipped == {"excluded": 1, "charge": 1}
    assert [s.charge for s in drug_molecules(sdf, max_abs_charge=2)] == [0, 0, -2]


def test_positions_are_rattled_by_at_most_the_limit(tmp_path):
    sdf = write_sdf(tmp_path / "drugs.sdf", ["ibuprofen"])
    (original,) = read_structures(sdf)
    (rattled,) = drug_molecules(sdf, max_displacement=0.02, seed=3)
    moved = np.linalg.norm(rattled.positions - original.positions, axis=1)
    assert moved.max() <= 0.02 + 1e-6 and moved.min() > 0
    np.testing.assert_array_equal(rattled.atomic_numbers, original.atomic_numbers)
    assert rattled.group_id == original.group_id


def test_the_sdf_comes_out_of_the_sdist(tmp_path):
    sdf = write_sdf(tmp_path / "made.sdf", ["naproxen"])
    sdist = tmp_path / "downloads" / f"openmmforcefields-{OPENMMFORCEFIELDS_VERSION}.tar.gz"
    sdist.parent.mkdir()
    with tarfile.open(sdist, "w:gz") as archive:
        archive.add(sdf, arcname=f"openmmforcefields-{OPENMMFORCEFIELDS_VERSION}/{MINIDRUGBANK_MEMBER}")
    extracted = fetch_minidrugbank(sdist.parent)
    assert extracted.read_bytes() == sdf.read_bytes()
    assert [s.extra["name"] for s in drug_molecules(extracted)] == ["naproxen"]


def test_an_sdist_without_the_sdf_is_named(tmp_path):
    sdist = tmp_path / f"openmmforcefields-{OPENMMFORCEFIELDS_VERSION}.tar.gz"
    with tarfile.open(sdist, "w:gz"):
        pass
    with pytest.raises(ValueError, match=f"the sdist has no .*{MINIDRUGBANK_MEMBER}"):
        fetch_minidrugbank(tmp_path)
