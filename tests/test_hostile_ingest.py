"""Hostile input to `atomfm data ingest`: every bad file, record and output folder is refused with exit code 2,
no traceback and a message naming the file and the field; with --skip-bad a bad record is counted instead."""

from __future__ import annotations

import errno
import json
import os
import tempfile
from pathlib import Path

import ase
import pytest
from hostile import assert_refused, atomfm

from data_pipeline.manifest import read_manifest

WATER = "O 0.0 0.0 0.119\nH 0.0 0.763 -0.477\nH 0.0 -0.763 -0.477\n"


def xyz(comment: str = "", atoms: str = WATER, count: int | None = None) -> str:
    """One extended-XYZ frame (water unless ``atoms``)."""
    lines = atoms.strip("\n").split("\n")
    return f"{len(lines) if count is None else count}\n{comment}\n" + "\n".join(lines) + "\n"


FORCES = "Properties=species:S:1:pos:R:3:forces:R:3 energy=-1.0"
BAD_XYZ = {
    "energy_word": (xyz("energy=hello"), "energy"),
    "energy_three_numbers": (xyz('energy="1 2 3"'), "energy"),
    "energy_nan": (xyz("energy=nan"), "energy"),
    "energy_inf": (xyz("energy=inf"), "energy"),
    "stress_two_numbers": (xyz('stress="1 2"'), "contents"),
    "charge_fraction": (xyz("charge=0.5"), "charge"),
    "charge_word": (xyz("charge=minus"), "charge"),
    "spin_zero": (xyz("spin=0"), "spin"),
    "forces_two_columns": (
        xyz("Properties=species:S:1:pos:R:3:forces:R:2", "O 0 0 0 1 1\nH 0 0 1 1 1"),
        "forces",
    ),
    "forces_nan": (xyz(FORCES, "O 0 0 0 nan 0 0\nH 0 0 1 0 0 0"), "forces"),
    "atom_a_million_angstrom_away": (xyz(atoms=WATER + "H 1000000.0 0.0 0.0\n"), "positions"),
    "coordinate_1e30": (xyz(atoms="O 0 0 0\nH 0 0 1e30\n"), "positions"),
    "coordinate_nan": (xyz(atoms="O 0 0 0\nH 0 nan 1\n"), "positions"),
    "lattice_vector_a_million_long": (
        xyz('Lattice="1000000 0 0 0 5 0 0 0 5" pbc="T T T"', "Cu 0 0 0\nCu 1.8 1.8 0"),
        "cell",
    ),
    "degenerate_lattice": (xyz('Lattice="3 0 0 3 0 0 0 0 3" pbc="T T T"', "Cu 0 0 0"), "cell"),
    "atomic_number_zero": (xyz("Properties=Z:I:1:pos:R:3", "0 0 0 0\n1 0 0 1"), "atomic_numbers"),
    "unknown_element": (xyz(atoms="Xx 0 0 0\nH 0 0 1\n"), "atomic_numbers"),
    "count_not_a_number": ("two\nwater\n" + WATER, "contents"),
    "fewer_atoms_than_claimed": (xyz(count=5), "contents"),
    "count_negative": (xyz(count=-3), "contents"),
}


@pytest.mark.parametrize("case", sorted(BAD_XYZ))
def test_bad_extxyz_record_is_refused_naming_file_and_field(case, tmp_path, capsys):
    text, field = BAD_XYZ[case]
    path = tmp_path / f"{case}.extxyz"
    path.write_text(text)
    outcome = atomfm(capsys, "data", "ingest", path, "--out", tmp_path / "corpus")
    assert_refused(outcome, path, f"field '{field}'")


@pytest.mark.parametrize("case", ["energy_word", "energy_three_numbers", "atom_a_million_angstrom_away"])
def test_bad_extxyz_record_is_counted_under_skip_bad_and_the_good_ones_kept(case, tmp_path, capsys):
    text, field = BAD_XYZ[case]
    path = tmp_path / f"{case}.extxyz"
    path.write_text(xyz("energy=-2.0") + text + xyz("energy=-3.0"))
    outcome = atomfm(capsys, "data", "ingest", path, "--out", tmp_path / "corpus", "--skip-bad")
    assert outcome.code == 0, outcome.err
    record = read_manifest(tmp_path / "corpus").sources[case]
    assert record["structures"] == 2 and record["skipped"] == {field: 1}, json.dumps(record)


def test_a_label_of_the_wrong_type_in_an_ase_database_names_the_row(tmp_path, capsys):
    import ase.db
    from ase.build import molecule

    path = tmp_path / "labels.db"
    with ase.db.connect(path) as db:
        db.write(molecule("H2O"), energy_label="x", data={"energy": "high"})
    outcome = atomfm(capsys, "data", "ingest", path, "--out", tmp_path / "corpus")
    assert_refused(outcome, path, "record labels/1", "field 'energy'")


@pytest.mark.timeout(30)
@pytest.mark.parametrize("suffix", [".xyz", ".xyz.gz"])
def test_a_header_claiming_a_billion_atoms_fails_at_once_naming_the_line(suffix, tmp_path, capsys):
    import gzip

    text = xyz("energy=-1.0") + xyz(count=10**9)
    path = tmp_path / f"claims{suffix}"
    path.write_bytes(gzip.compress(text.encode()) if suffix.endswith(".gz") else text.encode())
    outcome = atomfm(capsys, "data", "ingest", path, "--out", tmp_path / "corpus")
    assert_refused(
        outcome, path, "record claims/1", "line 6", "1,000,000,000" if suffix == ".xyz" else "1000000000"
    )


def test_an_unparsable_frame_is_counted_and_the_frames_after_it_are_kept(tmp_path, capsys):
    path = tmp_path / "frames.extxyz"
    path.write_text(xyz() + xyz(atoms="Xx 0 0 0\nH 0 0 1\n") + xyz())
    outcome = atomfm(capsys, "data", "ingest", path, "--out", tmp_path / "corpus", "--skip-bad")
    assert outcome.code == 0, outcome.err
    record = read_manifest(tmp_path / "corpus").sources["frames"]
    assert record["structures"] == 2 and record["skipped"] == {"atomic_numbers": 1}


def many_waters(folder: Path, count: int = 12) -> Path:
    path = folder / "waters.extxyz"
    path.write_text("".join(xyz(f"energy={-i}.0") for i in range(count)))
    return path


def test_an_out_that_is_a_file_is_named(tmp_path, capsys):
    (tmp_path / "taken").write_text("not a folder")
    outcome = atomfm(capsys, "data", "ingest", many_waters(tmp_path), "--out", tmp_path / "taken")
    assert_refused(outcome, tmp_path / "taken", "is a file")


def test_an_out_under_a_file_names_the_file(tmp_path, capsys):
    (tmp_path / "taken").write_text("not a folder")
    outcome = atomfm(capsys, "data", "ingest", many_waters(tmp_path), "--out", tmp_path / "taken" / "corpus")
    assert_refused(outcome, tmp_path / "taken" / "corpus", f"under {tmp_path / 'taken'}")


def test_a_read_only_out_is_named(tmp_path, capsys, monkeypatch):
    """As root no folder is read-only to us, so the file system's refusal is what the test gives."""
    out = tmp_path / "readonly"
    real_mkstemp = tempfile.mkstemp

    def refuse(*args, dir=None, **kwargs):
        if dir is not None and Path(dir) == out:
            raise PermissionError(errno.EROFS, os.strerror(errno.EROFS))
        return real_mkstemp(*args, dir=dir, **kwargs)

    monkeypatch.setattr(tempfile, "mkstemp", refuse)
    outcome = atomfm(capsys, "data", "ingest", many_waters(tmp_path), "--out", out)
    assert_refused(outcome, out, "read-only")


def test_a_disk_that_fills_up_in_a_shard_is_named_and_the_manifest_stays_consistent(
    tmp_path, capsys, monkeypatch
):
    import webdataset

    real_write = webdataset.TarWriter.write
    written = []

    def fill_up(self, sample):
        written.append(sample)
        if len(written) > 7:
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        return real_write(self, sample)

    monkeypatch.setattr(webdataset.TarWriter, "write", fill_up)
    out = tmp_path / "corpus"
    args = (
        "data",
        "ingest",
        many_waters(tmp_path),
        "--out",
        out,
        "--shard-size",
        "3",
        "--split-fractions",
        "1,0,0",
    )
    assert_refused(atomfm(capsys, *args), "waters-molecule-train-000002.tar", "disk is full")
    manifest = read_manifest(out)
    assert [s.path for s in manifest.shards] == [f"waters-molecule-train-00000{i}.tar" for i in (0, 1)]
    assert sorted(p.name for p in out.glob("*.tar*")) == [s.path for s in manifest.shards]
    assert atomfm(capsys, "data", "inspect", out).code == 0
    monkeypatch.setattr(webdataset.TarWriter, "write", real_write)
    assert atomfm(capsys, *args).code == 0, "the same command resumes once there is space"
    assert read_manifest(out).sources["waters"]["structures"] == 12


def test_a_disk_that_fills_up_writing_the_manifest_is_named(tmp_path, capsys, monkeypatch):
    import data_pipeline.atomic_files as atomic_files

    real_publish = atomic_files.publish

    def fill_up(tmp, final):
        if (
            Path(final).name == "manifest.json"
            and (Path(final).parent / "waters-molecule-train-000000.tar").exists()
        ):
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        return real_publish(tmp, final)

    monkeypatch.setattr(atomic_files, "publish", fill_up)
    out = tmp_path / "corpus"
    args = (
        "data",
        "ingest",
        many_waters(tmp_path),
        "--out",
        out,
        "--shard-size",
        "3",
        "--split-fractions",
        "1,0,0",
    )
    assert_refused(atomfm(capsys, *args), out / "manifest.json", "disk is full")
    manifest = read_manifest(out)  # the manifest.json of the run's start, and the shards listed since
    assert manifest.sources["waters"]["status"] == "running" and not list(out.glob(".manifest.json*"))
    assert sorted(p.name for p in out.glob("*.tar")) == [s.path for s in manifest.shards]
    assert atomfm(capsys, "data", "inspect", out).code == 0
    monkeypatch.setattr(atomic_files, "publish", real_publish)
    assert atomfm(capsys, *args).code == 0, "the same command finishes once there is space"
    assert read_manifest(out).sources["waters"]["status"] == "complete"


def test_a_shard_list_cut_mid_line_by_a_crash_resumes_to_the_same_corpus(tmp_path, capsys):
    out = tmp_path / "corpus"
    args = (
        "data",
        "ingest",
        many_waters(tmp_path),
        "--out",
        out,
        "--shard-size",
        "3",
        "--split-fractions",
        "1,0,0",
    )
    assert atomfm(capsys, *args).code == 0
    digests = {s.path: s.sha256 for s in read_manifest(out).shards}
    shard_list = out / "waters.shards.jsonl"
    text = shard_list.read_text()
    shard_list.write_text(text[: text.rindex("\n", 0, -1) + 40])  # the last entry cut 40 bytes in
    manifest = json.loads((out / "manifest.json").read_text())
    manifest["sources"]["waters"].update(status="running", shards=0, structures=0)  # as at the run's start
    (out / "manifest.json").write_text(json.dumps(manifest))
    assert len(read_manifest(out).shards) == len(digests) - 1
    assert atomfm(capsys, *args).code == 0
    resumed = read_manifest(out)
    assert {s.path: s.sha256 for s in resumed.shards} == digests and resumed.sources["waters"][
        "status"
    ] == "complete"
    assert resumed.sources["waters"]["runs"][-1]["resumed"] == 9 and shard_list.read_text() == text


# --- CIF: the real NiSb cell (ASE's test minerals), one site edited ---------------------------------------

NISB = Path(ase.__file__).parent / "test" / "testdata" / "minerals" / "cod_1010930.cif"
NI_SITE = "Ni1 Ni3+ 2 a 0. 0. 0. 1. 0 d\n"
BAD_CIF = {
    "occupancy_zero": (NI_SITE.replace(" 1. ", " 0. "), "_atom_site_occupancy"),
    "occupancy_negative": (NI_SITE.replace(" 1. ", " -0.5 "), "_atom_site_occupancy"),
    "occupancy_above_one": (NI_SITE.replace(" 1. ", " 1.5 "), "_atom_site_occupancy"),
    "occupancy_a_word": (NI_SITE.replace(" 1. ", " full "), "_atom_site_occupancy"),
    "occupancy_partial": (NI_SITE.replace(" 1. ", " 0.5 "), "_atom_site_occupancy"),
    "unknown_element": ("Ni1 Xx 2 a 0. 0. 0. 1. 0 d\n", "_atom_site_type_symbol"),
    "coordinate_nan": ("Ni1 Ni3+ 2 a nan 0. 0. 1. 0 d\n", "_atom_site_fract_x"),
    "coordinate_a_word": ("Ni1 Ni3+ 2 a zero 0. 0. 1. 0 d\n", "_atom_site_fract_x"),
}


@pytest.mark.parametrize("case", sorted(BAD_CIF))
def test_bad_cif_site_is_refused_naming_the_site_and_tag(case, tmp_path, capsys):
    site, tag = BAD_CIF[case]
    path = tmp_path / f"{case}.cif"
    path.write_text(NISB.read_text().replace(NI_SITE, site))
    outcome = atomfm(capsys, "data", "ingest", path, "--out", tmp_path / "corpus")
    assert_refused(outcome, path, f"field '{tag}'", "'Ni1'")


def test_a_cif_site_of_occupancy_zero_is_counted_under_skip_bad(tmp_path, capsys):
    path = tmp_path / "empty_site.cif"
    path.write_text(NISB.read_text().replace(NI_SITE, NI_SITE.replace(" 1. ", " 0. ")))
    outcome = atomfm(capsys, "data", "ingest", path, NISB, "--out", tmp_path / "corpus", "--skip-bad")
    assert outcome.code == 0, outcome.err
    record = read_manifest(tmp_path / "corpus").sources["empty_site"]
    assert record["structures"] == 1 and record["skipped"] == {"_atom_site_occupancy": 1}


BAD_CELLS = {
    "cell_length_zero": (("_cell_length_c                   5.12", "_cell_length_c 0"), "cell"),
    "cell_angle_flat": (("_cell_angle_gamma                120", "_cell_angle_gamma 180"), "cell"),
    "cell_length_a_word": (
        ("_cell_length_a                   3.928", "_cell_length_a long"),
        "_cell_length_a",
    ),
    "cell_missing": (("_cell_length_a                   3.928\n", ""), "_cell_length_a"),
}


@pytest.mark.parametrize("case", sorted(BAD_CELLS))
def test_bad_cif_cell_is_refused_naming_the_tag(case, tmp_path, capsys):
    (old, new), field = BAD_CELLS[case]
    path = tmp_path / f"{case}.cif"
    path.write_text(NISB.read_text().replace(old, new))
    assert_refused(
        atomfm(capsys, "data", "ingest", path, "--out", tmp_path / "corpus"), path, f"field '{field}'"
    )


# --- SDF: water as a V2000 molblock, one line edited --------------------------------------------------------

WATER_ATOMS = [
    "    0.0000    0.0000    0.1190 O   0  0  0  0  0  0  0  0  0  0  0  0",
    "    0.0000    0.7630   -0.4770 H   0  0  0  0  0  0  0  0  0  0  0  0",
    "    0.0000   -0.7630   -0.4770 H   0  0  0  0  0  0  0  0  0  0  0  0",
]


def molblock(
    atoms: list[str] = WATER_ATOMS, bonds: tuple[str, ...] = ("  1  2  1  0", "  1  3  1  0"), dim: str = "3D"
) -> str:
    counts = f"{len(atoms):3d}{len(bonds):3d}  0  0  0  0  0  0  0  0999 V2000"
    return "\n".join(
        ["water", f"     hostile        {dim}", "", counts, *atoms, *bonds, "M  END", "$$$$", ""]
    )


V3000_WATER = """water
     hostile        3D

  0  0  0     0  0            999 V3000
M  V30 BEGIN CTAB
M  V30 COUNTS 3 2 0 0 0
M  V30 BEGIN ATOM
M  V30 1 O 0.0 0.0 0.119 0
M  V30 2 H 0.0 0.763 -0.477 0
M  V30 3 H 0.0 -0.763 -0.477 0
M  V30 END ATOM
M  V30 BEGIN BOND
M  V30 1 {kind} 1 2
M  V30 2 1 1 3
M  V30 END BOND
M  V30 END CTAB
M  END
$$$$
"""
BAD_SDF = {
    **{
        f"bond_type_{k}": (molblock(bonds=(f"  1  2{k:3d}  0", "  1  3  1  0")), "bonds")
        for k in (0, 5, 6, 7, 8, 10, 12)
    },
    "v3000_query_bond": (V3000_WATER.format(kind=6), "bonds"),
    "flat_2d": (molblock([a[:20] + "    0.0000" + a[30:] for a in WATER_ATOMS], dim="2D"), "positions"),
    "implicit_hydrogens": (molblock(WATER_ATOMS[:1], ()), "hydrogens"),
    "bad_valence": (molblock(bonds=("  1  2  2  0", "  1  3  2  0")), "bonds"),
    "unknown_element": (
        molblock([WATER_ATOMS[0][:31] + "Qq " + WATER_ATOMS[0][34:], *WATER_ATOMS[1:]]),
        "molblock",
    ),
    "dummy_atom": (
        molblock([WATER_ATOMS[0][:31] + "*  " + WATER_ATOMS[0][34:], *WATER_ATOMS[1:]]),
        "atomic_numbers",
    ),
    "coordinate_nan": (molblock(["       nan" + WATER_ATOMS[0][10:], *WATER_ATOMS[1:]]), "molblock"),
    "bond_to_a_missing_atom": (molblock(bonds=("  1  2  1  0", "  1  9  1  0")), "molblock"),
}


@pytest.mark.parametrize("case", sorted(BAD_SDF))
def test_bad_sdf_record_is_refused_naming_the_field(case, tmp_path, capsys):
    text, field = BAD_SDF[case]
    path = tmp_path / f"{case}.sdf"
    path.write_text(text)
    assert_refused(
        atomfm(capsys, "data", "ingest", path, "--out", tmp_path / "corpus"), path, f"field '{field}'"
    )


def test_a_query_bond_is_counted_under_skip_bad_and_the_good_molecules_kept(tmp_path, capsys):
    path = tmp_path / "mixed.sdf"
    path.write_text(molblock() + BAD_SDF["bond_type_5"][0] + V3000_WATER.format(kind=1))
    outcome = atomfm(capsys, "data", "ingest", path, "--out", tmp_path / "corpus", "--skip-bad")
    assert outcome.code == 0, outcome.err
    record = read_manifest(tmp_path / "corpus").sources["mixed"]
    assert record["structures"] == 2 and record["skipped"] == {"bonds": 1}


def test_a_different_file_of_the_same_stem_does_not_replace_the_first_ones_records(tmp_path, capsys):
    first, second = tmp_path / "a" / "water.extxyz", tmp_path / "b" / "water.extxyz"
    for path, count in ((first, 3), (second, 2)):
        path.parent.mkdir()
        path.write_text("".join(xyz(f"energy={-i}.0") for i in range(count)))
    out = tmp_path / "corpus"
    assert atomfm(capsys, "data", "ingest", first, "--out", out).code == 0
    outcome = atomfm(capsys, "data", "ingest", second, "--out", out)
    assert_refused(outcome, str(first.resolve()), str(second.resolve()), "--source", "--rebuild")
    assert read_manifest(out).sources["water"]["structures"] == 3
    assert atomfm(capsys, "data", "ingest", second, "--out", out, "--source", "water_b").code == 0
    assert atomfm(capsys, "data", "ingest", second, "--out", out, "--rebuild").code == 0
    assert {name: rec["structures"] for name, rec in read_manifest(out).sources.items()} == {
        "water": 2,
        "water_b": 2,
    }


def test_an_edited_input_file_still_rebuilds_its_source(tmp_path, capsys):
    path = tmp_path / "water.extxyz"
    path.write_text(xyz("energy=-1.0"))
    out = tmp_path / "corpus"
    assert atomfm(capsys, "data", "ingest", path, "--out", out).code == 0
    path.write_text(xyz("energy=-1.0") + xyz("energy=-2.0"))
    assert atomfm(capsys, "data", "ingest", path, "--out", out).code == 0
    assert read_manifest(out).sources["water"]["structures"] == 2
