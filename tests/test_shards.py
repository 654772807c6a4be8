"""Shard writer and manifest: atomic shards, true checksums and stats, byte-reproducible tars, safe manifests."""

from __future__ import annotations

import json
import tarfile
from collections import Counter
from itertools import islice

import numpy as np
import pytest
import torch
from ase.build import bulk, molecule
from ase.collections import g2
from ase.data import chemical_symbols
from webdataset.tariterators import tarfile_samples

from data_pipeline.manifest import Manifest, manifest_path, read_manifest, write_manifest
from data_pipeline.sample_codec import decode_sample
from data_pipeline.schema import BadInputError, Structure
from data_pipeline.shards import MEMBER_MTIME, ShardWriter, sha256_of, shard_name


def from_atoms(atoms, key: str, domain: str = "molecule", split: str = "train") -> Structure:
    return Structure(
        key=key,
        domain=domain,
        atomic_numbers=atoms.numbers.astype(np.uint8),
        positions=atoms.positions.astype(np.float32),
        cell=atoms.cell.array.astype(np.float32) if atoms.pbc.any() else None,
        pbc=atoms.pbc.copy(),
        group_id=key,
        split=split,
    )


def g2_structures(count: int) -> list[Structure]:
    return [
        from_atoms(atoms, f"g2/{atoms.get_chemical_formula()}/{i}")
        for i, atoms in enumerate(islice(g2, count))
    ]


def write_all(out, structures, shard_size, **kw):
    announced = []
    with ShardWriter(
        out,
        source="g2",
        domain="molecule",
        split="train",
        shard_size=shard_size,
        on_shard=announced.append,
        **kw,
    ) as writer:
        for s in structures:
            writer.write(s)
    return writer.finished, announced


def test_writer_rolls_over_and_records_true_stats(tmp_path):
    structures = g2_structures(5)
    finished, announced = write_all(tmp_path, structures, shard_size=2)
    assert [s.path for s in announced] == [shard_name("g2", "molecule", "train", i) for i in range(3)]
    assert announced == finished
    assert [s.num_samples for s in finished] == [2, 2, 1]
    counts = [int(n) for s in finished for n in s.atom_counts(tmp_path)]
    assert counts == [s.num_atoms for s in structures]  # from the atom-counts file beside each shard
    expected_elements = Counter(chemical_symbols[z] for s in structures for z in s.atomic_numbers)
    assert sum((Counter(s.elements) for s in finished), Counter()) == expected_elements
    for info in finished:
        path = tmp_path / info.path
        assert info.sha256 == sha256_of(path)
        assert info.bytes == path.stat().st_size
        assert info.labels == {} and info.levels_of_theory == {"none": info.num_samples}
    files = sorted([s.path for s in finished] + [s.natoms_file.path for s in finished])
    assert sorted(p.name for p in tmp_path.iterdir()) == files


def test_shard_round_trips_through_webdataset(tmp_path):
    si = bulk("Si", "diamond", a=5.43, cubic=True)
    water = from_atoms(molecule("H2O"), "mol/water")
    crystal = from_atoms(si, "bulk/Si", domain="material").with_labels(
        energy=-43.4,
        forces=np.zeros((8, 3)),
        stress=np.arange(9.0).reshape(3, 3) * 1e-3,
        level_of_theory="emt",
    )
    with ShardWriter(tmp_path, source="t", domain="material", split="train", shard_size=10) as writer:
        writer.write(crystal)
    with ShardWriter(tmp_path, source="t", domain="molecule", split="train", shard_size=10) as writer:
        writer.write(water)
    for original, name in ((crystal, "t-material-train-000000.tar"), (water, "t-molecule-train-000000.tar")):
        (sample,) = list(tarfile_samples([{"url": str(tmp_path / name)}]))
        back = decode_sample(sample)
        assert back.key == original.key
        torch.testing.assert_close(torch.from_numpy(back.positions), torch.from_numpy(original.positions))
        assert np.array_equal(back.atomic_numbers, original.atomic_numbers)
        assert np.array_equal(back.pbc, original.pbc)
    back = decode_sample(
        next(iter(tarfile_samples([{"url": str(tmp_path / "t-material-train-000000.tar")}])))
    )
    torch.testing.assert_close(torch.from_numpy(back.cell), torch.from_numpy(crystal.cell))
    torch.testing.assert_close(torch.from_numpy(back.stress), torch.from_numpy(crystal.stress))
    assert back.energy == pytest.approx(-43.4) and back.level_of_theory == "emt"


def test_same_records_give_byte_identical_shards(tmp_path):
    structures = g2_structures(4)
    first, _ = write_all(tmp_path / "a", structures, shard_size=3)
    second, _ = write_all(tmp_path / "b", structures, shard_size=3)
    assert [s.sha256 for s in first] == [s.sha256 for s in second]
    with tarfile.open(tmp_path / "a" / first[0].path) as tar:
        members = tar.getmembers()
    assert {m.mtime for m in members} == {MEMBER_MTIME}
    assert not any(m.pax_headers for m in members)  # no 1 KB extended header per member


def test_failure_mid_shard_leaves_only_finished_shards(tmp_path):
    structures = g2_structures(3)
    with pytest.raises(RuntimeError, match="labeller crashed"):
        with ShardWriter(tmp_path, source="g2", domain="molecule", split="train", shard_size=2) as writer:
            for s in structures:
                writer.write(s)
            raise RuntimeError("labeller crashed")
    assert sorted(p.name for p in tmp_path.iterdir()) == [
        "g2-molecule-train-000000.natoms.npy",
        "g2-molecule-train-000000.tar",
    ]


def test_writer_refuses_a_record_of_another_stream(tmp_path):
    water = from_atoms(molecule("H2O"), "mol/water", split="val")
    with ShardWriter(tmp_path, source="g2", domain="molecule", split="train", shard_size=2) as writer:
        with pytest.raises(ValueError, match="mol/water"):
            writer.write(water)


def test_manifest_round_trip_is_atomic_and_derives_totals(tmp_path):
    finished, _ = write_all(tmp_path, g2_structures(5), shard_size=2)
    manifest = Manifest(
        shards=finished, sources={"g2": {"status": "complete", "skipped": {"bad positions": 2}}}
    )
    write_manifest(tmp_path, manifest)
    assert not [p for p in tmp_path.iterdir() if "tmp" in p.name]
    back = read_manifest(tmp_path)
    assert back.shards == finished and back.sources == manifest.sources
    summary = json.loads(manifest_path(tmp_path).read_text())["corpus"]
    assert summary["num_structures"] == 5 and summary["splits"] == {"train": 5}
    assert summary["num_atoms"] == sum(s.num_atoms for s in finished)
    assert summary["skipped"] == {"bad positions": 2}


def test_read_manifest_names_the_file_on_bad_input(tmp_path):
    with pytest.raises(BadInputError, match="no manifest.json"):
        read_manifest(tmp_path)
    manifest_path(tmp_path).write_text('{"format": "atomfm-corpus", "shards": [')
    with pytest.raises(BadInputError, match=r"manifest\.json.*unreadable manifest"):
        read_manifest(tmp_path)
    manifest_path(tmp_path).write_text('{"format": "something-else"}')
    with pytest.raises(BadInputError, match="not an atomfm corpus manifest"):
        read_manifest(tmp_path)
    manifest_path(tmp_path).write_text('{"format": "atomfm-corpus", "shards": [{"path": "x.tar"}]}')
    with pytest.raises(BadInputError, match="domain"):
        read_manifest(tmp_path)
