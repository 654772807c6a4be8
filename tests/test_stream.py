"""The stream on real shards: round trip, packing, mixing, damaged shards, exact resume in a new process."""

from __future__ import annotations

import json
import math
import shutil
import subprocess
import sys
import tarfile
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
import torch
from stream_corpus import crystals, molecules, protein_frames, write_corpus
from torch_geometric.data import Batch

from data_pipeline.graph import structure_to_graph
from data_pipeline.mixing import domain_probabilities
from data_pipeline.neighbours import radius_graph_pbc
from data_pipeline.schema import DOMAINS, BadInputError
from data_pipeline.stream import StreamConfig, StructureStream
from data_pipeline.vocab import level_index

REPO = Path(__file__).resolve().parents[1]
CUTOFF = 5.0


@pytest.fixture(scope="module")
def structures():
    train = molecules(60) + crystals(28) + protein_frames(6)
    held_out = crystals(3, split="val", seed=99)
    return train, held_out


@pytest.fixture(scope="module")
def corpus(tmp_path_factory, structures):
    folder = tmp_path_factory.mktemp("corpus")
    train, held_out = structures
    write_corpus(folder, train + held_out, shard_size=8)
    return folder


@pytest.fixture(scope="module")
def damaged_corpus(tmp_path_factory, corpus, structures):
    """The corpus with three damaged molecule shards (8 samples each) and one deleted. Returns the folder, the
    keys whose samples are unreadable (flipped bytes in one; the other cut in half by the truncation) and the
    keys of the samples the damaged or missing tars no longer hold."""
    folder = tmp_path_factory.mktemp("damaged") / "corpus"
    shutil.copytree(corpus, folder)
    names = sorted(p.name for p in folder.glob("test-molecule-train-*.tar"))
    flipped, truncated, bad_header = (folder / names[i] for i in (1, 4, 6))
    with tarfile.open(flipped) as tar:
        npz = tar.getmember("000000003.npz")
    _flip(flipped, npz.offset_data + npz.size // 2, 8)
    with tarfile.open(truncated) as tar:
        cut = tar.getmember("000000005.npz")
    truncated.write_bytes(truncated.read_bytes()[: cut.offset_data + cut.size // 2])
    with tarfile.open(bad_header) as tar:
        header = tar.getmember("000000004.json")
    _flip(bad_header, header.offset + 10, 4)  # tar reading stops at a header whose checksum fails
    (folder / names[7]).unlink()
    keys = [s.key for s in structures[0] if s.domain == "molecule"]
    lost = keys[4 * 8 + 6 : 4 * 8 + 8] + keys[6 * 8 + 4 : 6 * 8 + 8] + keys[7 * 8 :]
    return folder, {keys[8 + 3], keys[4 * 8 + 5]}, set(lost)


def _flip(path: Path, offset: int, count: int) -> None:
    data = bytearray(path.read_bytes())
    for k in range(offset, offset + count):
        data[k] ^= 0xFF
    path.write_bytes(bytes(data))


def _config(corpus: Path, **options) -> StreamConfig:
    settings = {"corpus": [str(corpus)], "cutoff": CUTOFF, "num_workers": 0, "shuffle_buffer": 16} | options
    return StreamConfig(**settings)


def _one_epoch(cfg: StreamConfig) -> list[Batch]:
    return list(StructureStream(cfg))


def test_config_names_an_unknown_key_and_the_file():
    with pytest.raises(BadInputError, match=r"run\.yaml.*'max_atom'.*did you mean 'max_atoms'"):
        StreamConfig.from_dict({"corpus": ["data/demo"], "max_atom": 100}, source="run.yaml")
    with pytest.raises(BadInputError, match=r"run\.yaml.*field 'cutoff'"):
        StreamConfig.from_dict({"corpus": "data/demo", "cutoff": -1.0}, source="run.yaml")
    cfg = StreamConfig.from_dict({"corpus": "data/demo", "domain_weights": {"molecule": 2, "protein": 1}})
    assert StreamConfig.from_dict(cfg.to_dict()) == cfg
    assert cfg.corpus == ["data/demo"]


def test_graph_fields_follow_the_batch_contract(structures):
    train, _ = structures
    chosen = [train[0], next(s for s in train if s.domain == "material"), train[-1]]
    batch = Batch.from_data_list([structure_to_graph(s, CUTOFF) for s in chosen])
    n, b, e = batch.num_nodes, 3, batch.edge_index.shape[1]
    expected = {
        "z": (torch.int64, (n,)),
        "pos": (torch.float32, (n, 3)),
        "batch": (torch.int64, (n,)),
        "natoms": (torch.int64, (b,)),
        "cell": (torch.float32, (b, 3, 3)),
        "pbc": (torch.bool, (b, 3)),
        "edge_index": (torch.int64, (2, e)),
        "cell_offsets": (torch.float32, (e, 3)),
        "charge": (torch.int64, (b,)),
        "spin": (torch.int64, (b,)),
        "level_of_theory": (torch.int64, (b,)),
        "domain": (torch.int64, (b,)),
        "energy": (torch.float32, (b,)),
        "forces": (torch.float32, (n, 3)),
        "stress": (torch.float32, (b, 3, 3)),
        "has_energy": (torch.bool, (b,)),
        "has_forces": (torch.bool, (b,)),
        "has_stress": (torch.bool, (b,)),
        "residue_id": (torch.int64, (n,)),
        "group_hash": (torch.int64, (b,)),
    }
    for name, (dtype, shape) in expected.items():
        assert batch[name].dtype == dtype and tuple(batch[name].shape) == shape, name
    assert batch.key == [s.key for s in chosen]
    assert batch.cell[0].abs().sum() == 0 and batch.cell[1].abs().sum() > 0
    assert batch.residue_id[batch.batch == 0].eq(-1).all()
    assert batch.residue_id[batch.batch == 2].max() == 12, (
        "A6PA6 has 13 residues, numbered from 0 (no PyG offset)"
    )
    j, i = batch.edge_index
    vectors = (
        batch.pos[j]
        - batch.pos[i]
        + torch.einsum("ek,ekl->el", batch.cell_offsets, batch.cell[batch.batch[i]])
    )
    assert (vectors.norm(dim=1) < CUTOFF + 1e-4).all()


def test_round_trip_gives_back_every_structure_once(corpus, structures):
    train, held_out = structures
    originals = {s.key: s for s in train}
    seen = set()
    for batch in _one_epoch(_config(corpus, repeat=False, max_atoms=300)):
        for graph in batch.to_data_list():
            assert graph.key not in seen
            seen.add(graph.key)
            s = originals[graph.key]
            torch.testing.assert_close(graph.z, torch.as_tensor(s.atomic_numbers, dtype=torch.int64))
            torch.testing.assert_close(graph.pos, torch.as_tensor(s.positions), rtol=0, atol=0)
            torch.testing.assert_close(graph.pbc[0], torch.as_tensor(s.pbc))
            if s.is_periodic:
                torch.testing.assert_close(graph.cell[0], torch.as_tensor(s.cell), rtol=0, atol=0)
            assert bool(graph.has_energy) == (s.energy is not None)
            if s.energy is not None:
                torch.testing.assert_close(graph.energy, torch.tensor([s.energy], dtype=torch.float32))
            if s.forces is not None:
                torch.testing.assert_close(graph.forces, torch.as_tensor(s.forces), rtol=0, atol=0)
            if s.stress is not None:
                torch.testing.assert_close(graph.stress[0], torch.as_tensor(s.stress), rtol=0, atol=0)
            assert int(graph.level_of_theory) == level_index(s.level_of_theory)
            assert DOMAINS[int(graph.domain)] == s.domain
            if "residue_index" in s.per_atom:
                torch.testing.assert_close(graph.residue_id, torch.as_tensor(s.per_atom["residue_index"]))
            edge_index, shifts = radius_graph_pbc(s.positions, s.cell, s.pbc, CUTOFF)
            torch.testing.assert_close(graph.edge_index, edge_index)
            torch.testing.assert_close(graph.cell_offsets, shifts.to(torch.float32))
    assert seen == set(originals), "every train structure exactly once, no val structure"
    assert not seen & {s.key for s in held_out}


def test_no_batch_exceeds_its_budgets_and_oversize_structures_are_counted(tmp_path):
    big = protein_frames(1, name="adk_open.pdb")  # 3341 atoms
    structures = molecules(40) + crystals(10) + big + protein_frames(3)
    write_corpus(tmp_path, structures, shard_size=10)
    budgets = {"max_atoms": 400, "max_edges": 4000, "max_structures": 12}
    oversize = {
        s.key
        for s in structures
        if s.num_atoms > 400 or radius_graph_pbc(s.positions, s.cell, s.pbc, CUTOFF)[0].shape[1] > 4000
    }
    assert big[0].key in oversize and len(oversize) > 1, "the peptide frames alone have more than 4000 edges"
    stream = StructureStream(_config(tmp_path, repeat=False, **budgets))
    keys = []
    for batch in stream:
        keys += batch.key
        if batch.num_graphs > 1:
            assert batch.num_nodes <= 400 and batch.edge_index.shape[1] <= 4000 and batch.num_graphs <= 12
        else:
            assert batch.key[0] in oversize or batch.edge_index.shape[1] <= 4000
    assert sorted(keys) == sorted(s.key for s in structures)
    assert stream.stats.oversize == len(oversize) and stream.stats.structures == len(keys)
    atoms_only = StructureStream(_config(tmp_path, repeat=False, max_atoms=400, max_structures=12))
    assert any(b.num_graphs > 1 and b.edge_index.shape[1] > 4000 for b in atoms_only), "max_edges must bind"
    skipping = StructureStream(_config(tmp_path, repeat=False, skip_oversize=True, **budgets))
    kept = [k for batch in skipping for k in batch.key]
    assert sorted(kept) == sorted(set(keys) - oversize)
    assert skipping.stats.skipped_samples == {"oversize": len(oversize)}
    assert skipping.stats.oversize == len(oversize)


def test_temperature_sampling_follows_corpus_sizes():
    sizes = {"molecule": 900, "protein": 100}
    assert domain_probabilities(sizes) == pytest.approx({"molecule": 0.9, "protein": 0.1})
    assert domain_probabilities(sizes, temperature=2.0) == pytest.approx({"molecule": 0.75, "protein": 0.25})
    assert domain_probabilities(sizes, {"protein": 1.0}) == {"molecule": 0.0, "protein": 1.0}
    with pytest.raises(ValueError, match="'material' has weight"):
        domain_probabilities(sizes, {"material": 1.0})


def test_mixing_proportions_match_the_weights(corpus):
    weights = {"molecule": 0.5, "material": 0.3, "protein": 0.2}
    domains = []
    for batch in StructureStream(_config(corpus, domain_weights=weights, max_atoms=1500, seed=5)):
        domains += [DOMAINS[d] for d in batch.domain.tolist()]
        if len(domains) >= 1000:
            break
    counts, n = Counter(domains), len(domains)
    for domain, p in weights.items():
        bound = 4 * math.sqrt(n * p * (1 - p))  # binomial standard deviations
        assert abs(counts[domain] - n * p) <= bound, (domain, counts[domain], n * p, bound)


def test_damaged_shards_are_skipped_logged_and_counted(damaged_corpus, structures, caplog):
    folder, unreadable, lost = damaged_corpus
    stream = StructureStream(_config(folder, repeat=False, num_workers=2, max_atoms=200))
    delivered = [k for batch in stream for k in batch.key]
    stats = stream.stats
    assert sorted(delivered) == sorted({s.key for s in structures[0]} - unreadable - lost)
    assert stats.skipped_samples == {"undecodable": len(unreadable), "missing": len(lost)}
    assert stats.skipped_shards == 3
    assert all(any(key in where for where in stats.skipped_keys) for key in unreadable)
    in_process = StructureStream(_config(folder, repeat=False, num_workers=0, max_atoms=200))
    with caplog.at_level("WARNING"):
        assert sorted(k for batch in in_process for k in batch.key) == sorted(delivered)
    assert in_process.stats.skipped_samples == stats.skipped_samples
    assert in_process.stats.skipped_shards == stats.skipped_shards
    assert "damaged shard" in caplog.text and all(key in caplog.text for key in unreadable)


def test_every_epoch_reshuffles_and_delivers_everything(corpus, structures):
    stream = StructureStream(_config(corpus, repeat=False, max_atoms=300))
    first = [k for batch in stream for k in batch.key]
    second = [k for batch in stream for k in batch.key]
    assert sorted(first) == sorted(second) == sorted(s.key for s in structures[0])
    assert first != second and stream.epoch == 2


def test_resume_after_the_last_batch_of_an_epoch_goes_on_with_the_next(corpus):
    cfg = _config(corpus, repeat=False, max_atoms=300)
    uninterrupted = StructureStream(cfg)
    first = [batch.key for batch in uninterrupted]
    second = [batch.key for batch in uninterrupted]
    interrupted = StructureStream(cfg)
    for count, _ in enumerate(interrupted, start=1):
        if count == len(first):
            saved = interrupted.state_dict()  # after the epoch's last batch, before the stream sees the end
            break
    restarted = StructureStream(cfg)
    restarted.load_state_dict(saved)
    assert [batch.key for batch in restarted] == second
    assert restarted.epoch == 2


RESUME_SCRIPT = """
import json, sys, torch
from data_pipeline.stream import StreamConfig, StructureStream
job = json.load(open(sys.argv[1]))
results = []
for state in job["states"]:
    stream = StructureStream(StreamConfig(**job["config"]))
    stream.load_state_dict(state)
    batches = []
    for batch in stream:
        batches.append(batch.to_dict())
        if len(batches) == job["count"]:
            break
    results.append({"batches": batches, "stats": stream.stats.to_dict()})
torch.save(results, sys.argv[2])
"""


def test_resume_in_a_new_process_continues_with_identical_batches(damaged_corpus, tmp_path):
    folder = damaged_corpus[0]
    cfg = _config(folder, num_workers=2, max_atoms=150, max_edges=3000, seed=3)
    stream = StructureStream(cfg)
    batches, states, stats = [], [], []
    for batch in stream:
        batches.append(batch.to_dict())
        states.append(json.loads(json.dumps(stream.state_dict())))
        stats.append(stream.stats.to_dict())
        if len(batches) == 24:
            break
    assert stats[-1]["skipped_samples"], "the run should have met the damaged shards"
    mid_split = next(b for b in range(3, 14) if any(part for _, part in states[b]["progress"]))
    resume_after = [mid_split, 13]  # states saved after these batches (0-based)
    count = 6
    job = tmp_path / "job.json"
    job.write_text(
        json.dumps({"config": cfg.to_dict(), "states": [states[b] for b in resume_after], "count": count})
    )
    out = tmp_path / "resumed.pt"
    subprocess.run(
        [sys.executable, "-c", RESUME_SCRIPT, str(job), str(out)], cwd=REPO, check=True, timeout=300
    )
    results = torch.load(out, weights_only=False)
    for b, result in zip(resume_after, results, strict=True):
        expected = batches[b + 1 : b + 1 + count]
        assert [r["key"] for r in result["batches"]] == [e["key"] for e in expected]
        for got, want in zip(result["batches"], expected, strict=True):
            assert got.keys() == want.keys()
            for name, value in want.items():
                if isinstance(value, torch.Tensor):
                    torch.testing.assert_close(got[name], value, rtol=0, atol=0)
        assert result["stats"] == stats[b + count]


def test_resume_refuses_a_different_layout(corpus):
    saved = StructureStream(_config(corpus, num_workers=2)).state_dict()
    other = StructureStream(_config(corpus, num_workers=3))
    with pytest.raises(ValueError, match="readers: saved 2, now 3"):
        other.load_state_dict(saved)
    other.load_state_dict(saved, strict=False)
    assert other.epoch == saved["epoch"]
    assert np.array_equal(other.state_dict()["progress"], [[0, 0]] * 3)
