"""Ingestion: group-hashed splits, real files into shards, resume after SIGKILL, skip-bad counts, unique keys."""

from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from collections import Counter
from itertools import islice
from pathlib import Path

import numpy as np
import pytest
from ase.build import bulk
from ase.collections import g2
from ase.io import write
from stream_corpus import as_version_1
from webdataset.tariterators import tarfile_samples

from data_pipeline.cli import register
from data_pipeline.ingest import corpus_lock, ingest_structures
from data_pipeline.inspect_corpus import inspect_corpus
from data_pipeline.manifest import read_manifest
from data_pipeline.readers import read_structures
from data_pipeline.sample_codec import decode_sample
from data_pipeline.schema import BadInputError, Structure
from data_pipeline.splits import assign_split, parse_fractions
from data_pipeline.stream import StreamConfig, StructureStream

REPO = Path(__file__).resolve().parents[1]
PACKAGES = Path(np.__file__).resolve().parents[1]
PEPTIDE_PDB = PACKAGES / "MDAnalysisTests" / "data" / "A6PA6_alpha.pdb"
MINERAL_CIF = PACKAGES / "ase" / "test" / "testdata" / "minerals" / "cod_9007661.cif"


# `atomfm data ...` without the other command groups (whose modules import the whole model).
DATA_CLI = (
    "import argparse, sys; from data_pipeline.cli import register; p = argparse.ArgumentParser(prog='atomfm'); "
    "register(p.add_subparsers()); a = p.parse_args(sys.argv[1:]); sys.exit(a.func(a))"
)


def atomfm(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="atomfm")
    register(parser.add_subparsers())
    args = parser.parse_args(argv)
    return args.func(args)


def g2_extxyz(folder: Path, count: int = len(g2)) -> Path:
    path = folder / "g2.extxyz"
    write(path, list(islice(g2, count)))
    return path


def g2_conformers(count: int, conformers: int, prefix: str = "g2") -> list[Structure]:
    """``conformers`` gently rattled copies of each of the first ``count`` G2 molecules, grouped by name."""
    out = []
    for name in islice(g2.names, count):
        atoms = g2[name]
        for c in range(conformers):
            pos = atoms.positions + np.random.default_rng(c).normal(scale=0.01, size=atoms.positions.shape)
            out.append(
                Structure(
                    key=f"{prefix}/{name}/{c}",
                    domain="molecule",
                    atomic_numbers=atoms.numbers,
                    positions=pos,
                    group_id=name,
                )
            )
    return out


def shard_records(corpus: Path) -> list[tuple[str, Structure]]:
    """(shard split, record) for every sample of every listed shard."""
    records = []
    for info in read_manifest(corpus).shards:
        for sample in tarfile_samples([{"url": str(corpus / info.path)}]):
            records.append((info.split, decode_sample(sample)))
    return records


def shard_digests(corpus: Path) -> dict[str, str]:
    return {s.path: s.sha256 for s in read_manifest(corpus).shards}


def test_split_assignment_is_the_same_in_another_process():
    groups = [f"molecule-{i}" for i in range(300)]
    here = [assign_split(g, 7, (0.6, 0.2, 0.2)) for g in groups]
    code = (
        "import json, sys; from data_pipeline.splits import assign_split; "
        "print(json.dumps([assign_split(g, 7, (0.6, 0.2, 0.2)) for g in json.loads(sys.argv[1])]))"
    )
    env = {**os.environ, "PYTHONHASHSEED": "12345"}
    there = subprocess.run(
        [sys.executable, "-c", code, json.dumps(groups)],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    assert json.loads(there) == here
    assert set(here) == {"train", "val", "test"}


def test_split_fractions_match_within_sampling_error():
    n, fractions = 20_000, (0.8, 0.15, 0.05)
    counts = Counter(assign_split(f"group-{i}", 0, fractions) for i in range(n))
    for split, p in zip(("train", "val", "test"), fractions, strict=True):
        assert abs(counts[split] - n * p) < 4 * np.sqrt(n * p * (1 - p)), (split, counts)


def test_seed_reshuffles_groups():
    groups = [f"group-{i}" for i in range(2000)]
    first = [assign_split(g, 0) for g in groups]
    moved = sum(a != b for a, b in zip(first, (assign_split(g, 1) for g in groups), strict=True))
    assert 0.1 * len(groups) < moved < 0.3 * len(groups)


@pytest.mark.parametrize(
    "text, problem",
    [
        ("0.9,0.1", "expected 3 fractions"),
        ("0.9,x,0.05", "comma-separated"),
        ("0.5,0.5,0.5", "sum to 1"),
        ("1.1,-0.05,-0.05", ">= 0"),
    ],
)
def test_bad_split_fractions_are_named(text, problem):
    with pytest.raises(BadInputError, match=problem) as err:
        parse_fractions(text)
    assert err.value.field == "split_fractions"


def test_conformers_of_one_molecule_never_straddle_splits(tmp_path):
    structures = g2_conformers(40, conformers=3)
    record = ingest_structures(
        structures, tmp_path, source="g2", shard_size=16, split_fractions=(0.5, 0.25, 0.25), progress=False
    )
    records = shard_records(tmp_path)
    assert len(records) == record["structures"] == 120
    splits_of_group: dict[str, set[str]] = {}
    for shard_split, s in records:
        assert s.split == shard_split
        splits_of_group.setdefault(s.group_id, set()).add(s.split)
    assert len(splits_of_group) == 40
    assert all(len(splits) == 1 for splits in splits_of_group.values())
    assert {next(iter(s)) for s in splits_of_group.values()} == {"train", "val", "test"}


def test_ingest_of_real_files_counts_every_record(tmp_path, capsys):
    inputs = tmp_path / "inputs"
    inputs.mkdir()
    files = [g2_extxyz(inputs), inputs / PEPTIDE_PDB.name, inputs / MINERAL_CIF.name]
    files[1].write_bytes(PEPTIDE_PDB.read_bytes())
    files[2].write_bytes(MINERAL_CIF.read_bytes())
    (inputs / "README.txt").write_text("not a structure file: ignored when the folder is searched")
    corpus = tmp_path / "corpus"
    assert atomfm(["data", "ingest", str(inputs), "--out", str(corpus), "--shard-size", "50"]) == 0
    expected = Counter()
    for f in files:
        expected.update(s.domain for s in read_structures(f))
    manifest = read_manifest(corpus)
    summary = manifest.summary()
    assert {d: v["structures"] for d, v in summary["domains"].items()} == dict(expected)
    assert expected["molecule"] == len(g2) and expected["protein"] >= 1 and expected["material"] >= 1
    record = manifest.sources["inputs"]
    assert record["status"] == "complete" and record["structures"] == sum(expected.values())
    assert [f["path"] for f in record["inputs"]["files"]] == sorted(str(f.resolve()) for f in files)
    keys = [s.key for _, s in shard_records(corpus)]
    assert len(keys) == len(set(keys)) == sum(expected.values())
    assert {k.split("/")[1] for k in keys} == {"g2", "A6PA6_alpha", "cod_9007661"}
    assert inspect_corpus(corpus)["verification"]["bad"] == {}
    assert f"{sum(expected.values())} structures" in capsys.readouterr().out


def test_missing_and_unknown_inputs_are_named(tmp_path, capsys):
    notes = tmp_path / "notes.txt"
    notes.write_text("hello")
    for argument, message in (
        (tmp_path / "absent.xyz", "no such file"),
        (notes, "unknown file format"),
        (tmp_path / "*.pdb", "matches no structure file"),
    ):
        assert atomfm(["data", "ingest", str(argument), "--out", str(tmp_path / "c")]) == 2
        err = capsys.readouterr().err
        assert str(argument) in err and message in err
    assert not (tmp_path / "c" / "manifest.json").exists()


def alloy_cells(count: int) -> list:
    """Rattled, strained fcc Cu/Au cells of 8 atoms (EMT's home ground)."""
    rng = np.random.default_rng(0)
    cells = []
    for i in range(count):
        atoms = bulk("Cu", "fcc", a=3.7, cubic=True).repeat((2, 1, 1))
        atoms.numbers[rng.random(len(atoms)) < 0.4] = 79
        atoms.set_cell(atoms.cell.array * (1 + 0.01 * rng.standard_normal()), scale_atoms=True)
        atoms.rattle(0.02, seed=i)
        cells.append(atoms)
    return cells


def test_skip_bad_counts_each_bad_record_by_field(tmp_path, capsys):
    good = alloy_cells(3)
    nan_cell, ghost_cell = good[0].copy(), good[1].copy()
    nan_cell.positions[1, 0] = np.nan
    ghost_cell.numbers[2] = 0
    silicon = bulk("Si", "diamond", a=5.43)
    path = tmp_path / "alloys.extxyz"
    write(path, [good[0], nan_cell, good[1], ghost_cell, silicon, good[2]])
    corpus = tmp_path / "corpus"
    command = ["data", "ingest", str(path), "--out", str(corpus), "--label", "emt", "--workers", "0"]
    assert atomfm(command) == 2
    err = capsys.readouterr().err
    assert str(path) in err and "alloys/1" in err and "'positions'" in err
    assert atomfm([*command, "--skip-bad"]) == 0
    record = read_manifest(corpus).sources["alloys"]
    assert record["skipped"] == {"positions": 1, "atomic_numbers": 1, "labels.emt": 1}
    assert record["structures"] == 3 and record["status"] == "complete"
    assert all(s.level_of_theory == "emt" and s.forces is not None for _, s in shard_records(corpus))
    assert "skipped 3 records" in capsys.readouterr().out


def test_duplicate_keys_name_both_sources(tmp_path):
    ingest_structures(g2_conformers(5, 2), tmp_path, source="g2", shard_size=4, progress=False)
    again = g2_conformers(6, 2)
    with pytest.raises(BadInputError, match=r"record g2/PH3/0.*from source 'g2'.*source 'g2-again'"):
        ingest_structures(again, tmp_path, source="g2-again", shard_size=4, progress=False)
    record = ingest_structures(
        again, tmp_path, source="g2-again", shard_size=4, skip_bad=True, progress=False
    )
    assert record["structures"] == 2 and record["skipped"] == {"duplicate key": 10}
    twice = g2_conformers(1, 2, prefix="twice") * 2
    with pytest.raises(BadInputError, match="appears twice in source 'twice'"):
        ingest_structures(twice, tmp_path, source="twice", progress=False)
    manifest = read_manifest(tmp_path)
    assert manifest.summary()["num_structures"] == 12
    assert inspect_corpus(tmp_path)["verification"]["bad"] == {}


def test_duplicate_keys_are_found_in_the_key_index_without_reading_the_other_shards(tmp_path):
    ingest_structures(g2_conformers(5, 2), tmp_path, source="g2", shard_size=4, progress=False)
    hidden = tmp_path / "hidden"
    hidden.mkdir()
    for tar in tmp_path.glob("g2-*.tar"):
        tar.rename(hidden / tar.name)
    duplicate = r"key already in the corpus from source 'g2'; source 'again' cannot add it again"
    with pytest.raises(BadInputError, match=duplicate):
        ingest_structures(g2_conformers(6, 2), tmp_path, source="again", shard_size=4, progress=False)
    for tar in hidden.glob("*.tar"):
        tar.rename(tmp_path / tar.name)
    (tmp_path / "keys.sqlite").unlink()  # a lost index is read again from the shards
    with pytest.raises(BadInputError, match=duplicate):
        ingest_structures(g2_conformers(6, 2), tmp_path, source="again", shard_size=4, progress=False)


def test_a_version_1_corpus_streams_the_same_and_the_next_ingest_upgrades_it(tmp_path):
    ingest_structures(g2_conformers(6, 2), tmp_path, source="g2", shard_size=4, progress=False)
    current, digests = read_manifest(tmp_path), shard_digests(tmp_path)
    cfg = StreamConfig(corpus=str(tmp_path), cutoff=4.0, max_atoms=30, num_workers=0, repeat=False)
    batches = [list(b.key) for b in StructureStream(cfg)]
    old = read_manifest(as_version_1(tmp_path))
    assert old.version == 1 and not list(tmp_path.glob("*.natoms.npy"))
    assert [s.path for s in old.shards] == [s.path for s in current.shards] and old.resume == current.resume
    assert [list(b.key) for b in StructureStream(cfg)] == batches
    report = inspect_corpus(tmp_path)
    assert report["manifest_version"] == 1 and not report["verification"]["inconsistent"]
    copy = Path(shutil.copytree(tmp_path, tmp_path.parent / f"{tmp_path.name}-copy"))
    assert atomfm(["data", "upgrade", str(copy)]) == 0
    assert read_manifest(copy).shards == current.shards and inspect_corpus(copy)["manifest_version"] == 2
    ingest_structures(g2_conformers(2, 1, prefix="more"), tmp_path, source="more", progress=False)
    upgraded = read_manifest(tmp_path)
    assert upgraded.version == 2 and upgraded.select(source="g2") == current.shards
    assert (
        upgraded.resume.items() >= current.resume.items()
        and shard_digests(tmp_path).items() >= digests.items()
    )
    again = ingest_structures(g2_conformers(6, 2), tmp_path, source="g2", shard_size=4, progress=False)
    assert len(again["runs"]) == 1, "the upgraded source is complete and intact: nothing to do"


def test_rerun_keeps_changed_options_rebuild(tmp_path):
    path = g2_extxyz(tmp_path)
    corpus = tmp_path / "corpus"
    command = ["data", "ingest", str(path), "--out", str(corpus), "--shard-size", "40"]
    assert atomfm(command) == 0
    first = shard_digests(corpus)
    stamps = {p: (corpus / p).stat().st_mtime_ns for p in first}
    assert atomfm(command) == 0
    assert {p: (corpus / p).stat().st_mtime_ns for p in first} == stamps
    assert atomfm([*command[:-1], "25"]) == 0
    rebuilt = read_manifest(corpus)
    assert max(s.num_samples for s in rebuilt.shards) == 25 and rebuilt.summary()["num_structures"] == len(g2)
    assert sorted(p.name for p in corpus.glob("*.tar")) == sorted(s.path for s in rebuilt.shards)
    assert atomfm([*command, "--rebuild"]) == 0
    assert shard_digests(corpus) == first
    assert len(read_manifest(corpus).sources["g2"]["runs"]) == 1


def test_killed_ingest_resumes_to_the_same_corpus(tmp_path):
    path = g2_extxyz(tmp_path, count=80)
    killed, fresh = tmp_path / "killed", tmp_path / "fresh"
    args = [
        "data",
        "ingest",
        str(path),
        "--label",
        "xtb",
        "--workers",
        "0",
        "--shard-size",
        "3",
        "--skip-bad",
    ]
    assert atomfm([*args, "--out", str(fresh)]) == 0
    reference = read_manifest(fresh)
    assert reference.sources["g2"]["skipped"]["labels.xtb"] > 0  # open-shell G2 molecules read as singlets

    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    command = [sys.executable, "-c", DATA_CLI, *args, "--out", str(killed)]
    proc = subprocess.Popen(command, cwd=REPO, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    shard_list, deadline = killed / "g2.shards.jsonl", time.monotonic() + 300
    while not shard_list.exists() or "\n" not in shard_list.read_text():
        assert proc.poll() is None and time.monotonic() < deadline, "ingest ended before its first shard"
        time.sleep(0.005)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    interrupted = read_manifest(killed)
    assert interrupted.sources["g2"]["status"] == "running"
    assert 1 <= len(interrupted.shards) < len(reference.shards)
    assert inspect_corpus(killed)["verification"]["bad"] == {}
    kept = {s.path: (killed / s.path).stat().st_mtime_ns for s in interrupted.shards}

    assert atomfm([*args, "--out", str(killed)]) == 0
    resumed = read_manifest(killed)
    run = resumed.sources["g2"]["runs"][-1]
    assert run["resumed"] >= sum(s.num_samples for s in interrupted.shards)
    assert run["resumed"] + run["labelled"] == 80
    assert {p: (killed / p).stat().st_mtime_ns for p in kept} == kept
    assert not list(killed.glob("*.tmp"))
    assert shard_digests(killed) == shard_digests(fresh)
    assert resumed.sources["g2"]["skipped"] == reference.sources["g2"]["skipped"]
    assert resumed.summary() == reference.summary()


def test_rerun_rewrites_a_damaged_shard_and_what_follows_it(tmp_path):
    path = g2_extxyz(tmp_path)
    corpus = tmp_path / "corpus"
    command = ["data", "ingest", str(path), "--out", str(corpus), "--shard-size", "20"]
    assert atomfm(command) == 0
    original = shard_digests(corpus)
    train = sorted(p for p in original if "-train-" in p)
    damaged = corpus / train[2]
    data = bytearray(damaged.read_bytes())
    data[len(data) // 3] ^= 0xFF
    damaged.write_bytes(bytes(data))
    untouched = {p: (corpus / p).stat().st_mtime_ns for p in train[:2]}
    assert atomfm(command) == 0
    assert shard_digests(corpus) == original
    assert {p: (corpus / p).stat().st_mtime_ns for p in untouched} == untouched
    manifest = read_manifest(corpus)
    run = manifest.sources["g2"]["runs"][-1]
    assert run["resumed"] == 40 + sum(s.num_samples for s in manifest.shards if s.split != "train")
    assert run["written"] == len(g2) - run["resumed"]


def test_a_second_ingest_into_a_locked_corpus_is_refused(tmp_path):
    with corpus_lock(tmp_path):
        with pytest.raises(BadInputError, match="another `atomfm data ingest` is writing this corpus"):
            ingest_structures(g2_conformers(2, 1), tmp_path, source="g2", progress=False)
    record = ingest_structures(g2_conformers(2, 1), tmp_path, source="g2", progress=False)
    assert record["structures"] == 2


@pytest.mark.filterwarnings("ignore::RuntimeWarning")  # EMT divides by the zero distance of a collapsed cell
def test_auto_labelling_charges_each_failure_to_its_own_stream(tmp_path):
    """Failures of two domains between the same two successes are counted in their own (domain, split)."""
    fractions = (0.5, 0.5, 0.0)
    assert (assign_split("north", 0, fractions), assign_split("south", 0, fractions)) == ("train", "val")

    def g2_molecule(name: str, group: str) -> Structure:
        atoms = g2[name]
        return Structure(f"g2/{name}", "molecule", atoms.numbers, atoms.positions, group_id=group)

    def alloy(atoms, key: str, group: str) -> Structure:
        return Structure(
            key, "material", atoms.numbers, atoms.positions, atoms.cell.array, atoms.pbc, group_id=group
        )

    cells = alloy_cells(5)
    for collapsed in cells[3:]:
        collapsed.positions[1] = collapsed.positions[0]  # two atoms on one site: EMT's forces are not finite
    structures = [
        g2_molecule("H2O", "north"),
        g2_molecule("CH3", "north"),  # 9 electrons read as a singlet: xTB refuses the spin
        alloy(cells[3], "alloy/collapsed-0", "north"),
        alloy(cells[0], "alloy/0", "north"),
        g2_molecule("CH4", "south"),
        alloy(cells[4], "alloy/collapsed-1", "south"),
        g2_molecule("OH", "south"),  # 9 electrons as well
        alloy(cells[1], "alloy/1", "south"),
        g2_molecule("NH3", "south"),
        alloy(cells[2], "alloy/2", "north"),
    ]
    record = ingest_structures(
        structures,
        tmp_path,
        source="mixed",
        label="auto",
        workers=0,
        skip_bad=True,
        shard_size=10,
        split_fractions=fractions,
        progress=False,
    )
    assert record["skipped"] == {"labels.emt": 2, "labels.xtb": 2}
    written = Counter()
    for info in read_manifest(tmp_path).shards:
        written[f"{info.domain}-{info.split}"] += info.num_samples
    assert written == {"molecule-train": 1, "molecule-val": 2, "material-train": 2, "material-val": 1}
    assert record["streams"] == {
        "material-train": [{"position": 3, "label_skipped": {"labels.emt": 1}}],
        "material-val": [{"position": 2, "label_skipped": {"labels.emt": 1}}],
        "molecule-train": [{"position": 2, "label_skipped": {"labels.xtb": 1}}],
        "molecule-val": [{"position": 3, "label_skipped": {"labels.xtb": 1}}],
    }
    levels = {s.key: s.level_of_theory for _, s in shard_records(tmp_path)}
    assert levels == {
        "g2/H2O": "gfn2-xtb",
        "g2/CH4": "gfn2-xtb",
        "g2/NH3": "gfn2-xtb",
        "alloy/0": "emt",
        "alloy/1": "emt",
        "alloy/2": "emt",
    }
