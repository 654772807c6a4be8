"""`atomfm data inspect`: the corpus table, and every kind of damaged shard found and named."""

from __future__ import annotations

import argparse
import json
import re
import tarfile
from collections import Counter
from itertools import islice
from pathlib import Path

import numpy as np
import pytest
from ase.build import bulk
from ase.collections import g2

from data_pipeline.cli import register
from data_pipeline.ingest import ingest_structures
from data_pipeline.manifest import read_manifest
from data_pipeline.schema import Structure


def atomfm(argv: list[str]) -> int:
    """`atomfm data ...` without the other command groups (whose modules import the whole model)."""
    parser = argparse.ArgumentParser(prog="atomfm")
    register(parser.add_subparsers())
    args = parser.parse_args(argv)
    return args.func(args)


def molecules(count: int) -> list[Structure]:
    return [
        Structure(
            key=f"g2/{name}",
            domain="molecule",
            atomic_numbers=g2[name].numbers,
            positions=g2[name].positions,
            group_id=name,
        )
        for name in islice(g2.names, count)
    ]


def silicon_cells(count: int) -> list[Structure]:
    """Strained diamond-Si cells labelled with a made-up but finite energy/forces/stress."""
    cells = []
    for i in range(count):
        atoms = bulk("Si", "diamond", a=5.43 * (1 + 0.005 * i), cubic=True)
        s = Structure(
            key=f"si/{i}",
            domain="material",
            atomic_numbers=atoms.numbers,
            positions=atoms.positions,
            cell=atoms.cell.array,
            pbc=atoms.pbc,
            group_id="Si",
        )
        cells.append(
            s.with_labels(
                energy=-5.4 * len(atoms),
                forces=np.zeros((len(atoms), 3)),
                stress=np.eye(3) * 1e-3 * i,
                level_of_theory="pbe",
            )
        )
    return cells


@pytest.fixture
def corpus(tmp_path: Path) -> Path:
    ingest_structures(molecules(60), tmp_path, source="g2", shard_size=8, progress=False)
    ingest_structures(silicon_cells(6), tmp_path, source="si", shard_size=4, progress=False)
    return tmp_path


def inspect_json(corpus: Path, capsys, *extra: str) -> tuple[int, dict]:
    code = atomfm(["data", "inspect", str(corpus), "--json", *extra])
    return code, json.loads(capsys.readouterr().out)


def test_good_corpus_passes_with_a_true_table(corpus, capsys):
    assert atomfm(["data", "inspect", str(corpus)]) == 0
    table = capsys.readouterr().out
    assert "all 10 shards intact" in table and "BAD" not in table
    code, report = inspect_json(corpus, capsys)
    assert code == 0 and report["verification"] == {
        "checks": "size, sha256, full read",
        "shards": 10,
        "bad": {},
        "orphans": [],
        "inconsistent": [],
    }
    mol, mat = report["domains"]["molecule"], report["domains"]["material"]
    atoms = [len(g2[name]) for name in islice(g2.names, 60)]
    assert mol["structures"] == 60 and mol["atoms"] == sum(atoms) and mol["max_atoms"] == max(atoms)
    assert mol["mean_atoms"] == pytest.approx(np.mean(atoms))
    assert mol["label_coverage"] == {"energy": 0.0, "forces": 0.0, "stress": 0.0}
    assert mat["label_coverage"] == {"energy": 100.0, "forces": 100.0, "stress": 100.0}
    assert (
        mat["levels_of_theory"] == {"pbe": 6}
        and mat["elements"] == {"Si": 48}
        and list(mat["splits"].values()) == [6]
    )
    expected = Counter()
    for name in islice(g2.names, 60):
        expected.update(g2[name].get_chemical_symbols())
    assert mol["elements"] == dict(expected.most_common())
    assert sum(mol["splits"].values()) == 60
    assert re.search(rf"^molecule\s+60\s+{sum(atoms):,}\s", table, re.MULTILINE)
    assert re.search(r"^material\s+6\s+48\s.*100\.0%\s+100\.0%\s+100\.0%", table, re.MULTILINE)


def flip_npz_bytes(shard: Path) -> str:
    """Flip bytes inside the positions of the shard's second sample; returns that sample's member key."""
    with tarfile.open(shard) as tar:
        member = [m for m in tar.getmembers() if m.name.endswith(".npz")][1]
    data = bytearray(shard.read_bytes())
    middle = member.offset_data + member.size // 2
    data[middle : middle + 8] = bytes(b ^ 0xFF for b in data[middle : middle + 8])
    shard.write_bytes(bytes(data))
    return member.name.split(".")[0]


def test_flipped_and_truncated_shards_are_both_reported(corpus, capsys):
    shards = read_manifest(corpus).shards
    flipped, truncated = corpus / shards[0].path, corpus / shards[3].path
    member = flip_npz_bytes(flipped)
    truncated.write_bytes(truncated.read_bytes()[: truncated.stat().st_size // 2 + 700])
    assert atomfm(["data", "inspect", str(corpus)]) == 1
    table = capsys.readouterr().out
    assert "2 of 10 shards are BAD" in table
    code, report = inspect_json(corpus, capsys)
    bad = report["verification"]["bad"]
    assert code == 1 and set(bad) == {flipped.name, truncated.name}
    assert bad[flipped.name][0].startswith("checksum mismatch")
    assert bad[flipped.name][1].startswith(f"undecodable sample key {member} (record g2/")
    assert bad[truncated.name][0].startswith("size mismatch")
    assert any(p.startswith("unreadable tar after") for p in bad[truncated.name])
    for name in (flipped.name, truncated.name):
        assert f"BAD {name}: " in table


def test_no_verify_checks_presence_and_size_only(corpus, capsys):
    shards = read_manifest(corpus).shards
    flip_npz_bytes(corpus / shards[0].path)
    (corpus / shards[1].path).unlink()
    code, report = inspect_json(corpus, capsys, "--no-verify")
    assert code == 1 and report["verification"]["bad"] == {shards[1].path: ["missing"]}
    code, report = inspect_json(corpus, capsys)
    assert set(report["verification"]["bad"]) == {shards[0].path, shards[1].path}


def test_orphans_and_interrupted_sources_are_reported(corpus, capsys):
    listed = read_manifest(corpus).shards[0]
    (corpus / "g2-molecule-train-000999.tar").write_bytes((corpus / listed.path).read_bytes())
    (corpus / "g2-molecule-train-000007.tar.tmp").write_bytes(b"half a shard")
    manifest = json.loads((corpus / "manifest.json").read_text())
    manifest["sources"]["si"]["status"] = "running"
    (corpus / "manifest.json").write_text(json.dumps(manifest))
    assert atomfm(["data", "inspect", str(corpus)]) == 0
    table = capsys.readouterr().out
    assert (
        "orphan g2-molecule-train-000999.tar" in table and "orphan g2-molecule-train-000007.tar.tmp" in table
    )
    assert "source    si (running)" in table and "re-run the same command to resume" in table


def test_a_folder_without_manifest_is_a_clear_error(tmp_path, capsys):
    assert atomfm(["data", "inspect", str(tmp_path)]) == 2
    assert f"file {tmp_path / 'manifest.json'}: no manifest.json" in capsys.readouterr().err
