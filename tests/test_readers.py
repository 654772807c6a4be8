"""File readers on real shipped files, checked against an independent reading (gemmi, ASE, RDKit, raw text)."""

from __future__ import annotations

import bz2
import gzip
import importlib.util
import json
import re
import sqlite3
from collections import Counter
from pathlib import Path

import ase
import ase.data
import ase.db
import ase.io
import gemmi
import numpy as np
import pytest
import rdkit
import torch
from ase.build import bulk, molecule
from ase.calculators.emt import EMT
from ase.geometry import cell_to_cellpar
from rdkit import Chem
from rdkit.Chem import AllChem

from data_pipeline.readers import ReaderOptions, infer_domain, read_structures, supported_suffixes
from data_pipeline.sample_codec import decode_sample, encode_sample
from data_pipeline.schema import BadInputError

MDA = Path(importlib.util.find_spec("MDAnalysisTests").origin).parent / "data"
MINERALS = Path(ase.__file__).parent / "test" / "testdata" / "minerals"
COLLECTIONS = Path(ase.__file__).parent / "collections"
CDK2 = Path(rdkit.__file__).parent / "Contrib" / "Fastcluster" / "testdata" / "cdk2.sdf"
NCI_2D = Path(rdkit.__file__).parent / "Data" / "NCI" / "first_200.props.sdf"
NISB = MINERALS / "cod_1010930.cif"
NI_SITE = "Ni1 Ni3+ 2 a 0. 0. 0. 1. 0 d\n"


def assert_close(actual, expected, **tolerance) -> None:
    torch.testing.assert_close(
        torch.as_tensor(np.asarray(actual, dtype=np.float64)),
        torch.as_tensor(np.asarray(expected, dtype=np.float64)),
        **tolerance,
    )


def read_all(path, **kwargs):
    return list(read_structures(path, **kwargs))


def bad_input(path, **kwargs) -> BadInputError:
    with pytest.raises(BadInputError) as info:
        read_all(path, **kwargs)
    return info.value


def assert_names(err: BadInputError, path: Path, record: str | None, field: str) -> None:
    """The message says which file, which record and which field."""
    assert str(path) in str(err) and f"field '{field}'" in str(err), str(err)
    assert err.field == field
    if record is not None:
        assert err.record == record and f"record {record}" in str(err), str(err)


def emt_labelled_copper() -> ase.Atoms:
    atoms = bulk("Cu", "fcc", a=3.61, cubic=True).repeat((2, 1, 1))
    atoms.rattle(0.05, seed=3)
    atoms.calc = EMT()
    atoms.get_potential_energy()
    atoms.get_stress()
    return atoms


# --- extended XYZ, ASE trajectories and databases -------------------------------------------------------


@pytest.mark.parametrize("suffix", [".extxyz", ".traj", ".xyz.gz"])
def test_ase_images_carry_labels_charge_spin_and_domain_per_record(tmp_path, suffix):
    copper = emt_labelled_copper()
    water = molecule("H2O")
    water.info.update(charge=0, spin=1)
    hydroxide = molecule("OH")
    hydroxide.info.update(charge=-1, spin=1)
    path = tmp_path / f"mixed{suffix}"
    ase.io.write(path, [copper, water, hydroxide], format="traj" if suffix == ".traj" else "extxyz")

    metal, h2o, oh = read_all(path)

    assert [s.key for s in (metal, h2o, oh)] == ["mixed/0", "mixed/1", "mixed/2"]
    assert (metal.domain, h2o.domain) == ("material", "molecule")
    assert_close(metal.energy, copper.get_potential_energy())
    assert_close(metal.forces, copper.get_forces(), atol=1e-5, rtol=1e-5)
    assert_close(metal.stress, copper.get_stress(voigt=False), atol=1e-7, rtol=1e-5)
    assert_close(metal.cell, copper.cell.array, atol=1e-6, rtol=0)
    assert metal.level_of_theory == "other" and metal.group_id == "Cu"
    assert h2o.cell is None and h2o.energy is None and h2o.level_of_theory == "none" and h2o.group_id == "H2O"
    assert_close(h2o.positions, water.positions, atol=1e-6, rtol=0)
    assert (oh.charge, oh.spin) == (-1, 1)


def test_ase_json_database_matches_the_raw_json():
    rows = json.loads((COLLECTIONS / "g2.json").read_text())
    records = read_all(COLLECTIONS / "g2.json")

    assert len(records) == len(rows["ids"]) == 162
    for record in records:
        row = rows[record.key.split("/")[1]]
        np.testing.assert_array_equal(record.atomic_numbers, row["numbers"])
        assert_close(record.positions, row["positions"], atol=1e-6, rtol=0)
        assert record.domain == "molecule" and record.extra["info"]["name"] == row["key_value_pairs"]["name"]


def test_ase_json_database_of_crystals_is_periodic():
    rows = json.loads((COLLECTIONS / "dcdft.json").read_text())
    records = read_all(COLLECTIONS / "dcdft.json")

    assert len(records) == 71 and {s.domain for s in records} == {"material"}
    silicon = next(s for s in records if s.extra["info"]["name"] == "Si")
    assert_close(silicon.cell, rows[silicon.key.split("/")[1]]["cell"], atol=1e-6, rtol=0)
    assert silicon.pbc.all() and silicon.group_id == "Si"


@pytest.mark.parametrize("suffix", [".db", ".aselmdb"])
def test_ase_database_rows_carry_labels_and_metadata(tmp_path, suffix):
    path = tmp_path / f"rows{suffix}"
    copper = emt_labelled_copper()
    db = ase.db.connect(path)
    db.write(copper, level_of_theory="emt")
    db.write(molecule("OH"), data={"charge": 0, "spin": 2}, name="hydroxyl radical")
    del db

    metal, radical = read_all(path)

    assert (metal.key, radical.key) == ("rows/1", "rows/2")
    assert metal.level_of_theory == "emt"
    assert_close(metal.energy, copper.get_potential_energy())
    assert_close(metal.forces, copper.get_forces(), atol=1e-5, rtol=1e-5)
    assert (radical.charge, radical.spin, radical.level_of_theory) == (0, 2, "none")
    assert radical.extra["info"]["name"] == "hydroxyl radical"


def test_sqlite_file_that_is_not_an_ase_database_is_refused_untouched(tmp_path):
    path = tmp_path / "other.db"
    with sqlite3.connect(path) as con:
        con.execute("CREATE TABLE measurements (x REAL)")
    before = path.read_bytes()

    assert_names(bad_input(path), path, "other", "contents")
    assert path.read_bytes() == before


def test_xyz_with_unknown_element_names_the_record():
    path = MDA / "five.xyz"  # MDAnalysis test file whose atoms are named "A"
    err = bad_input(path)
    assert_names(err, path, "five/0", "atomic_numbers")
    assert "'A'" in str(err)


def test_xyz_bad_records_raise_or_are_skipped_and_counted(tmp_path):
    water = "3\nwater\nO 0.0 0.0 0.119\nH 0.0 0.763 -0.477\nH 0.0 -0.763 -0.477\n"
    path = tmp_path / "waters.xyz"
    path.write_text(water + water.replace("0.119", "nan") + water.replace("O ", "X ") + water)

    assert_names(bad_input(path), path, "waters/1", "positions")
    counter: Counter[str] = Counter()
    kept = read_all(path, options=ReaderOptions(skip_bad=True), counter=counter)
    assert [s.key for s in kept] == ["waters/0", "waters/3"]
    assert counter == Counter({"positions": 1, "atomic_numbers": 1})


def test_truncated_xyz_keeps_the_records_before_the_cut(tmp_path):
    water = "3\nwater\nO 0.0 0.0 0.119\nH 0.0 0.763 -0.477\nH 0.0 -0.763 -0.477\n"
    path = tmp_path / "cut.xyz"
    path.write_text(water + water[:-22])

    assert_names(bad_input(path), path, "cut/1", "contents")
    counter: Counter[str] = Counter()
    assert [s.key for s in read_all(path, options=ReaderOptions(skip_bad=True), counter=counter)] == ["cut/0"]
    assert counter == Counter({"contents": 1})


def test_degenerate_periodic_cell_is_bad_input(tmp_path):
    path = tmp_path / "flat.extxyz"
    path.write_text('2\nLattice="2.7 0 0 0 2.7 0 5.4 5.4 0" pbc="T T T"\nSi 0 0 0\nSi 1.35 1.35 1.35\n')
    assert_names(bad_input(path), path, "flat/0", "cell")


# --- PDB and mmCIF proteins ------------------------------------------------------------------------------


def gemmi_polymer_atoms(path: Path) -> list[dict]:
    """Independent reading: gemmi, first model, first altloc, waters and ligands removed."""
    st = gemmi.read_structure(str(path))
    st.setup_entities()
    st.remove_alternative_conformations()
    st.remove_ligands_and_waters()
    return [
        {
            "z": cra.atom.element.atomic_number,
            "position": cra.atom.pos.tolist(),
            "chain": cra.chain.name,
            "number": cra.residue.seqid.num,
            "icode": cra.residue.seqid.icode.strip(),
            "residue": cra.residue.name,
            "name": cra.atom.name,
        }
        for cra in st[0].all()
    ]


def test_pdb_matches_gemmi_atom_for_atom():
    path = MDA / "4E43.pdb"  # altlocs, waters and four kinds of ligand
    (record,) = read_all(path, options=ReaderOptions(altloc="first"))
    atoms = gemmi_polymer_atoms(path)

    assert record.key == "4E43/0" and record.domain == "protein" and record.group_id == "4e43:A,B,C"
    assert record.num_atoms == len(atoms)
    np.testing.assert_array_equal(record.atomic_numbers, [a["z"] for a in atoms])
    assert_close(record.positions, [a["position"] for a in atoms], atol=1e-4, rtol=0)
    assert record.per_atom["chain_id"].tolist() == [a["chain"] for a in atoms]
    assert record.per_atom["residue_index"].tolist() == [a["number"] for a in atoms]
    assert record.per_atom["residue_name"].tolist() == [a["residue"] for a in atoms]
    assert record.per_atom["atom_name"].tolist() == [a["name"] for a in atoms]
    assert record.cell is None and not record.pbc.any()


def test_mmcif_and_pdb_of_one_entry_agree():
    (from_cif,) = read_all(MDA / "mmcif" / "3PWP.cif.gz")
    (from_pdb,) = read_all(MDA / "mmcif" / "3PWP.pdb.gz")

    assert from_cif.group_id == from_pdb.group_id == "3pwp:A,B,C,D,E"
    np.testing.assert_array_equal(from_cif.atomic_numbers, from_pdb.atomic_numbers)
    assert_close(from_cif.positions, from_pdb.positions, atol=1e-4, rtol=0)
    for name in ("chain_id", "residue_index", "insertion_code", "residue_name", "atom_name"):
        np.testing.assert_array_equal(from_cif.per_atom[name], from_pdb.per_atom[name])


def test_insertion_codes_are_kept():
    path = MDA / "1osm.pdb.gz"  # antibody-style numbering with 11 inserted residues
    (record,) = read_all(path)
    ours = set(
        zip(
            record.per_atom["chain_id"].tolist(),
            record.per_atom["residue_index"].tolist(),
            record.per_atom["insertion_code"].tolist(),
            strict=True,
        )
    )
    theirs = {(a["chain"], a["number"], a["icode"]) for a in gemmi_polymer_atoms(path)}

    assert ours == theirs
    assert sum(1 for _, _, code in ours if code) == 11


def test_ca_only_protein():
    path = MDA / "analysis" / "align_bound.pdb.gz"
    ca_lines = [line for line in gzip.open(path, "rt") if line.startswith("ATOM") and line[12:16] == " CA "]
    (record,) = read_all(path)

    assert record.num_atoms == len(ca_lines) == 100
    assert set(record.atomic_numbers.tolist()) == {6} and set(record.per_atom["atom_name"].tolist()) == {"CA"}
    assert_close(
        record.positions, [[float(line[30 + 8 * k : 38 + 8 * k]) for k in range(3)] for line in ca_lines]
    )
    assert record.group_id == "align_bound"


def test_nmr_ensemble_first_model_or_all_models_as_frames():
    path = MDA / "nmr_neopetrosiamide.pdb"
    st = gemmi.read_structure(str(path))

    (first,) = read_all(path)
    frames = read_all(path, options=ReaderOptions(protein_models="all"))

    assert first.key == "nmr_neopetrosiamide/0" and first.num_atoms == st[0].count_atom_sites()
    assert len(frames) == len(st) == 24
    assert [s.key for s in frames[:2]] == ["nmr_neopetrosiamide/0/0", "nmr_neopetrosiamide/0/1"]
    assert {s.group_id for s in frames} == {first.group_id} == {"2juy:A"}
    for frame in (0, 23):
        assert_close(
            frames[frame].positions, [cra.atom.pos.tolist() for cra in st[frame].all()], atol=1e-4, rtol=0
        )


def test_altloc_by_occupancy_or_first():
    path = MDA / "19hc.pdb.gz"
    # Glu B191: altloc B has the higher total occupancy (3.3 against 2.7).
    st = gemmi.read_structure(str(path))
    glu = st[0]["B"]["191"][0]
    expected = {alt: {a.name: a.pos.tolist() for a in glu if a.altloc == alt} for alt in "AB"}

    def glu_atoms(altloc: str) -> dict[str, np.ndarray]:
        (record,) = read_all(path, options=ReaderOptions(altloc=altloc))
        mask = (record.per_atom["chain_id"] == "B") & (record.per_atom["residue_index"] == 191)
        return dict(zip(record.per_atom["atom_name"][mask].tolist(), record.positions[mask], strict=True))

    for altloc, alt in (("occupancy", "B"), ("first", "A")):
        chosen = glu_atoms(altloc)
        for name, position in expected[alt].items():
            assert_close(chosen[name], position, atol=1e-4, rtol=0)


def test_water_and_ligand_options_add_exactly_their_atoms():
    path = MDA / "1a28.pdb.gz"  # progesterone receptor: 180 waters, two steroid ligands, no altlocs
    st = gemmi.read_structure(str(path))
    residues = [res for ch in st[0] for res in ch]
    water_atoms = sum(len(res) for res in residues if res.is_water())
    ligand_atoms = sum(len(res) for res in residues if res.het_flag == "H" and not res.is_water())

    def count(**keep) -> int:
        (record,) = read_all(path, options=ReaderOptions(**keep))
        return record.num_atoms

    polymer = count()
    assert polymer == len(gemmi_polymer_atoms(path))
    assert count(keep_water=True) == polymer + water_atoms
    assert count(keep_ligands=True) == polymer + ligand_atoms
    assert count(keep_water=True, keep_ligands=True) == st[0].count_atom_sites()


def pdb_lines(path: Path) -> list[str]:
    return path.read_text().splitlines(keepends=True)


def test_pdb_unknown_element_names_the_atom(tmp_path):
    lines = pdb_lines(MDA / "4E43.pdb")
    k = next(i for i, line in enumerate(lines) if line.startswith("ATOM") and line[12:16] == " OG1")
    lines[k] = lines[k][:76] + "QQ" + lines[k][78:]
    path = tmp_path / "4E43_bad.pdb"
    path.write_text("".join(lines))

    err = bad_input(path)
    assert_names(err, path, "4E43_bad/0", "element")
    assert "'OG1'" in str(err) and f"serial {int(lines[k][6:11])}" in str(err) and "'QQ'" in str(err)


def test_pdb_nan_coordinate_and_truncated_line(tmp_path):
    lines = pdb_lines(MDA / "4E43.pdb")
    k = next(i for i, line in enumerate(lines) if line.startswith("ATOM"))
    nan_path = tmp_path / "nan.pdb"
    nan_path.write_text(
        "".join(lines[:k]) + lines[k][:46] + "     nan" + "".join([lines[k][54:]] + lines[k + 1 :])
    )
    cut_path = tmp_path / "cut.pdb"
    cut_path.write_text("".join(lines[: k + 50]) + lines[k + 50][:42])

    assert_names(bad_input(nan_path), nan_path, "nan/0", "positions")
    assert_names(bad_input(cut_path), cut_path, "cut/0", "atoms")
    counter: Counter[str] = Counter()
    assert read_all(cut_path, options=ReaderOptions(skip_bad=True), counter=counter) == []
    assert counter == Counter({"atoms": 1})


def test_protein_record_survives_the_shard_codec():
    (record,) = read_all(MDA / "mmcif" / "1YJP.cif")
    back = decode_sample(encode_sample(record, "000000000"))

    assert back.key == "1YJP/0" and back.group_id == "1yjp:A"
    for name, values in record.per_atom.items():
        np.testing.assert_array_equal(back.per_atom[name], values)


# --- crystal CIF -----------------------------------------------------------------------------------------


@pytest.mark.parametrize("path", sorted(MINERALS.glob("*.cif")), ids=lambda p: p.stem)
def test_crystal_cif_matches_ase(path):
    (record,) = read_all(path)
    reference = ase.io.read(path)

    assert record.domain == "material" and record.pbc.all() and record.key == f"{path.stem}/0"
    np.testing.assert_array_equal(np.sort(record.atomic_numbers), np.sort(reference.numbers))
    assert_close(cell_to_cellpar(record.cell.astype(np.float64)), reference.cell.cellpar(), atol=1e-4, rtol=0)
    ours = np.linalg.solve(record.cell.T.astype(np.float64), record.positions.T.astype(np.float64)).T
    theirs = reference.get_scaled_positions()
    for z, frac in zip(record.atomic_numbers, ours, strict=True):
        wrapped = frac - theirs[reference.numbers == z]
        assert np.abs(wrapped - np.round(wrapped)).max(axis=1).min() < 1e-4


def test_crystal_cif_group_id_is_the_reduced_formula():
    assert [s.group_id for s in read_all(NISB)] == ["NiSb"]
    assert [s.group_id for s in read_all(MINERALS / "cod_9017338.cif")] == ["O2Si"]


def test_cif_with_several_blocks_gives_one_record_per_structure_block(tmp_path):
    path = tmp_path / "pair.cif"
    path.write_text(
        "data_global\n_journal_name_full 'Acta Cryst.'\n\n"
        + NISB.read_text()
        + "\n"
        + (MINERALS / "cod_1010995.cif").read_text()
    )

    records = read_all(path)
    assert [s.key for s in records] == ["pair/1", "pair/2"]
    assert [s.group_id for s in records] == ["NiSb", "CSi"]


def write_nisb(tmp_path: Path, ni_rows: str, name: str = "nisb.cif") -> Path:
    path = tmp_path / name
    path.write_text(
        NISB.read_text().replace(NI_SITE, ni_rows).replace("Sb3- -3.000", "Sb3- -3.000\nCo3+ 3.000")
    )
    return path


def test_partial_occupancy_is_an_error_naming_the_site_or_resolved_by_majority(tmp_path):
    # No shipped CIF has partial occupancy: the real NiSb cell with its Ni site shared 0.5 Ni / 0.5 Co.
    path = write_nisb(tmp_path, "Ni1 Ni3+ 2 a 0. 0. 0. 0.5 0 d\nCo1 Co3+ 2 a 0. 0. 0. 0.5 0 d\n")
    err = bad_input(path)
    assert_names(err, path, "nisb/0", "_atom_site_occupancy")
    assert "Ni3+: 0.5" in str(err) and "Co3+: 0.5" in str(err) and "majority" in str(err)

    (resolved,) = read_all(path, options=ReaderOptions(occupancy="majority"))
    (ordered,) = read_all(NISB)
    np.testing.assert_array_equal(resolved.atomic_numbers, ordered.atomic_numbers)
    assert_close(resolved.positions, ordered.positions)


def test_majority_vacancy_removes_the_site(tmp_path):
    path = write_nisb(tmp_path, "Ni1 Ni3+ 2 a 0. 0. 0. 0.4 0 d\n")
    (record,) = read_all(path, options=ReaderOptions(occupancy="majority"))
    assert record.atomic_numbers.tolist() == [51, 51] and record.group_id == "Sb"


@pytest.mark.parametrize(
    ("edit", "field", "words"),
    [
        (
            lambda t: t.replace("_cell_length_c                   5.12", "_cell_length_c 0"),
            "cell",
            "degenerate",
        ),
        (
            lambda t: t.replace("_cell_angle_gamma                120", "_cell_angle_gamma 180"),
            "cell",
            "degenerate",
        ),
        (lambda t: t.replace(NI_SITE, "Ni1 Xx 2 a 0. 0. 0. 1. 0 d\n"), "_atom_site_type_symbol", "'Ni1'"),
        (lambda t: t.replace(NI_SITE, "Ni1 Ni3+ 2 a nan 0. 0. 1. 0 d\n"), "_atom_site_fract_x", "'Ni1'"),
        (lambda t: t.replace("_cell_length_a                   3.928\n", ""), "_cell_length_a", "missing"),
    ],
    ids=["zero_length", "flat_angle", "unknown_element", "nan_coordinate", "no_cell"],
)
def test_bad_crystal_block_names_its_field(tmp_path, edit, field, words):
    path = tmp_path / "nisb.cif"
    path.write_text(edit(NISB.read_text()))
    err = bad_input(path)
    assert_names(err, path, "nisb/0", field)
    assert words in str(err)


def test_truncated_cif_is_bad_input(tmp_path):
    text = NISB.read_text()
    path = tmp_path / "cut.cif"
    path.write_text(text[: text.index("Sb1 Sb3-") + 12])
    assert_names(bad_input(path), path, "cut/0", "contents")


# --- SDF / MOL molecules ---------------------------------------------------------------------------------


def molblocks_from_text(path: Path) -> list[dict]:
    """Independent reading of a V2000 SDF: elements, coordinates and M  CHG charges from the raw text."""
    blocks = []
    for block in path.read_text().split("$$$$\n"):
        lines = block.splitlines()
        if len(lines) < 4:
            continue
        natoms = int(lines[3][:3])
        atom_lines = lines[4 : 4 + natoms]
        charge = sum(int(v) for line in lines if line.startswith("M  CHG") for v in line.split()[4::2])
        blocks.append(
            {
                "symbols": [line[31:34].strip() for line in atom_lines],
                "positions": [[float(line[10 * k : 10 * k + 10]) for k in range(3)] for line in atom_lines],
                "charge": charge,
            }
        )
    return blocks


def test_sdf_matches_the_raw_text():
    expected = molblocks_from_text(CDK2)
    records = read_all(CDK2)

    assert len(records) == len(expected) == 47
    assert [s.key for s in records[:2]] == ["cdk2/0", "cdk2/1"]
    for record, block in zip(records, expected, strict=True):
        assert [ase.data.chemical_symbols[z] for z in record.atomic_numbers] == block["symbols"]
        assert_close(record.positions, block["positions"], atol=1e-4, rtol=0)
        assert record.charge == block["charge"] and record.domain == "molecule" and record.spin == 1
    assert {s.charge for s in records} == {-1, 0, 1}
    assert len({s.group_id for s in records}) == 47 and records[0].group_id == "BEXUQVHWMLPYKY"
    assert records[0].extra["name"] == "ZINC03814457"


def test_conformers_of_one_molecule_share_a_group_id(tmp_path):
    mol = next(Chem.ForwardSDMolSupplier(str(CDK2), removeHs=False))
    AllChem.EmbedMultipleConfs(mol, numConfs=2, randomSeed=7)
    path = tmp_path / "conformers.sdf"
    with Chem.SDWriter(str(path)) as writer:
        for conf in mol.GetConformers():
            writer.write(mol, confId=conf.GetId())

    a, b = read_all(path)
    assert a.group_id == b.group_id == "BEXUQVHWMLPYKY" and a.key != b.key
    assert not np.allclose(a.positions, b.positions)


def test_mol_file_is_one_record(tmp_path):
    path = tmp_path / "ligand.mol"
    path.write_text(CDK2.read_text().split("$$$$\n")[1])
    (record,) = read_all(path)
    assert record.key == "ligand/0" and record.group_id == read_all(CDK2)[1].group_id


def test_2d_sdf_records_are_rejected_and_counted():
    err = bad_input(NCI_2D)
    assert_names(err, NCI_2D, "first_200.props/0", "positions")
    counter: Counter[str] = Counter()
    assert read_all(NCI_2D, options=ReaderOptions(skip_bad=True), counter=counter) == []
    assert counter == Counter({"positions": 200})


def edited_sdf(tmp_path: Path, name: str, edit) -> Path:
    """cdk2.sdf with its second record's first atom line edited."""
    blocks = CDK2.read_text().split("$$$$\n")
    lines = blocks[1].splitlines(keepends=True)
    lines[4] = edit(lines[4])
    blocks[1] = "".join(lines)
    path = tmp_path / name
    path.write_text("$$$$\n".join(blocks))
    return path


@pytest.mark.parametrize(
    ("edit", "field", "words"),
    [
        (lambda line: "       nan" + line[10:], "molblock", "coordinates"),
        (lambda line: line[:31] + "Xx " + line[34:], "molblock", "RDKit cannot parse"),
        (lambda line: line[:31] + "*  " + line[34:], "atomic_numbers", "Z=0"),
        (lambda line: line[:31] + "F  " + line[34:], "bonds", "valence"),
    ],
    ids=["nan_coordinate", "unknown_element", "dummy_atom", "bad_valence"],
)
def test_bad_sdf_record_is_named_and_the_others_survive(tmp_path, edit, field, words):
    path = edited_sdf(tmp_path, "cdk2_bad.sdf", edit)
    err = bad_input(path)
    assert_names(err, path, "cdk2_bad/1", field)
    assert words in str(err)
    counter: Counter[str] = Counter()
    kept = read_all(path, options=ReaderOptions(skip_bad=True), counter=counter)
    assert len(kept) == 46 and "cdk2_bad/1" not in {s.key for s in kept}
    assert counter == Counter({field: 1})


def test_truncated_sdf_names_the_cut_record(tmp_path):
    path = tmp_path / "cut.sdf"
    text = CDK2.read_text()
    path.write_text(text[: text.index("$$$$\n", text.index("$$$$\n") + 1) + 5 + 700])

    assert_names(bad_input(path), path, "cut/2", "molblock")
    counter: Counter[str] = Counter()
    assert len(read_all(path, options=ReaderOptions(skip_bad=True), counter=counter)) == 2
    assert counter == Counter({"molblock": 1})


# --- every format: empty files, registry, domains, options -----------------------------------------------


@pytest.mark.parametrize(
    "suffix", [".xyz", ".traj", ".db", ".json", ".aselmdb", ".pdb", ".cif", ".mmcif", ".sdf"]
)
def test_empty_file_is_bad_input_or_skipped(tmp_path, suffix):
    path = tmp_path / f"empty{suffix}"
    path.touch()
    assert_names(bad_input(path), path, "empty", "contents")
    counter: Counter[str] = Counter()
    assert read_all(path, options=ReaderOptions(skip_bad=True), counter=counter) == []
    assert counter == Counter({"contents": 1})


def test_whitespace_only_file_has_no_records(tmp_path):
    path = tmp_path / "blank.xyz"
    path.write_text("\n\n")
    err = bad_input(path)
    assert_names(err, path, "blank", "contents")
    assert "no records" in str(err)


def test_missing_file_unknown_suffix_and_compressed_database_are_refused_at_once(tmp_path):
    missing = tmp_path / "nowhere.pdb"
    assert_names(bad_input(missing), missing, None, "path")
    odd = tmp_path / "notes.txt"
    odd.write_text("hello")
    assert_names(bad_input(odd), odd, None, "suffix")
    packed = tmp_path / "rows.db.gz"
    packed.write_bytes(gzip.compress(b"sqlite"))
    assert_names(bad_input(packed), packed, None, "suffix")
    with pytest.raises(BadInputError, match="domain"):
        read_structures(MDA / "mmcif" / "1YJP.cif", domain="crystal")


def test_compressed_text_formats_read_like_plain_ones(tmp_path):
    assert {".cif.gz", ".sdf.bz2", ".xyz.xz"} <= set(supported_suffixes())
    assert ".traj.gz" not in supported_suffixes()
    packed = tmp_path / "1YJP.cif.bz2"
    packed.write_bytes(bz2.compress((MDA / "mmcif" / "1YJP.cif").read_bytes()))

    (plain,) = read_all(MDA / "mmcif" / "1YJP.cif")
    for path in (MDA / "mmcif" / "1YJP.cif.gz", packed):
        (unpacked,) = read_all(path)
        assert unpacked.key == plain.key == "1YJP/0"
        np.testing.assert_array_equal(unpacked.atomic_numbers, plain.atomic_numbers)
        assert_close(unpacked.positions, plain.positions)


def test_corrupt_gzip_is_bad_input(tmp_path):
    path = tmp_path / "broken.pdb.gz"
    path.write_bytes(gzip.compress((MDA / "4E43.pdb").read_bytes())[:5000])
    assert_names(bad_input(path), path, "broken/0", "contents")


def test_infer_domain_by_format_and_periodicity(tmp_path):
    assert infer_domain(MDA / "4E43.pdb") == "protein"
    assert infer_domain(MDA / "mmcif" / "1YJP.cif") == "protein"
    assert infer_domain(NISB) == "material"
    assert infer_domain(CDK2) == "molecule"
    assert infer_domain(COLLECTIONS / "g2.json") == "molecule"
    assert infer_domain(COLLECTIONS / "dcdft.json") == "material"
    disordered = write_nisb(tmp_path, "Ni1 Ni3+ 2 a 0. 0. 0. 0.5 0 d\nCo1 Co3+ 2 a 0. 0. 0. 0.5 0 d\n")
    assert infer_domain(disordered) == "material"  # the format tells, even where the record is bad


def test_infer_domain_refuses_a_cif_that_is_neither_mmcif_nor_crystal(tmp_path):
    path = tmp_path / "no_cell.cif"
    path.write_text(NISB.read_text().replace("_cell_length_a", "_cell_length_x"))
    assert_names(pytest.raises(BadInputError, infer_domain, path).value, path, "no_cell", "_cell_length_a")


def test_domain_and_source_can_be_given():
    records = read_all(COLLECTIONS / "s22.json", domain="molecule", source="s22-dimers")
    assert len(records) == 22 and records[0].key == "s22-dimers/1"
    (protein_as_molecule,) = read_all(MDA / "mmcif" / "1YJP.cif", domain="molecule")
    assert protein_as_molecule.domain == "molecule"


def test_reader_options_reject_unknown_choices():
    with pytest.raises(BadInputError, match=re.escape("field 'ReaderOptions.altloc'")):
        ReaderOptions(altloc="highest")
    with pytest.raises(BadInputError, match="ReaderOptions.keep_water"):
        ReaderOptions(keep_water="yes")
