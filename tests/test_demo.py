"""The demo corpus from shipped structures: sources give sensible records, and the smoke scale builds a
three-domain, four-labeller corpus whose shards read back."""

from __future__ import annotations

import glob
from collections import defaultdict

import numpy as np
import pytest
import torch
import webdataset as wds

from data_pipeline.demo import SCALES, build_demo_corpus
from data_pipeline.inspect_corpus import inspect_corpus
from data_pipeline.manifest import read_manifest
from data_pipeline.sample_codec import decode_sample
from data_pipeline.schema import BadInputError
from data_pipeline.sources.conformers import read_smiles, smiles_conformers
from data_pipeline.sources.perturb import rattle

LEVEL_BY_KEY_PREFIX = {
    "ccd": "gfn2-xtb",
    "nci": "gfn2-xtb",
    "g2": "gfn2-xtb",
    "proteins": "amber14",
    "emt_alloys": "emt",
    "crystals": "chgnet",
}


def test_rattle_moves_every_atom_by_at_most_the_bound():
    positions = np.zeros((500, 3))
    moved = np.linalg.norm(rattle(positions, 0.02, np.random.default_rng(0)) - positions, axis=1)
    assert moved.max() <= 0.02 and moved.min() > 0 and moved.mean() > 0.005


def test_conformers_of_one_molecule_share_its_group_and_differ_in_shape():
    records = read_smiles()[:3]
    conformers = list(smiles_conformers(records, conformers=3, seed=1, workers=0))
    by_molecule = defaultdict(list)
    for s in conformers:
        by_molecule[s.key.rsplit("/", 1)[0]].append(s)
    assert sorted(by_molecule) == sorted(f"nci/{record}" for record, _ in records)
    groups = {name: {s.group_id for s in confs} for name, confs in by_molecule.items()}
    assert all(len(g) == 1 for g in groups.values()) and len(set.union(*groups.values())) == len(records)
    for confs in by_molecule.values():
        first = torch.as_tensor(confs[0].positions, dtype=torch.float64)
        for other in confs[1:]:
            assert not torch.allclose(first, torch.as_tensor(other.positions, dtype=torch.float64), atol=0.05)


def test_smoke_corpus_has_three_domains_four_labellers_and_reads_back(tmp_path):
    out = tmp_path / "demo"
    result = build_demo_corpus(out, scale="smoke", workers=2, progress=False)
    corpus = result["corpus"]
    assert set(corpus["domains"]) == {"molecule", "protein", "material"}
    assert corpus["levels_of_theory"] == {
        "gfn2-xtb": SCALES["smoke"].molecules,
        "amber14": SCALES["smoke"].protein_chains * SCALES["smoke"].frames_per_chain,
        "emt": SCALES["smoke"].alloy_cells,
        "chgnet": SCALES["smoke"].crystals,
    }
    assert corpus["labels"]["energy"] == corpus["labels"]["forces"] == corpus["num_structures"]
    assert corpus["labels"]["stress"] == corpus["domains"]["material"]["structures"]
    assert all(part["shards"] >= 4 for part in result["sources"].values())
    verification = inspect_corpus(out)["verification"]
    assert verification["bad"] == {} and verification["orphans"] == []

    samples = [
        decode_sample(raw)
        for raw in wds.WebDataset(
            sorted(glob.glob(str(out / "*.tar"))), shardshuffle=False, empty_check=False
        )
    ]
    assert len(samples) == corpus["num_structures"]
    molecule_forces = []
    for s in samples:
        assert s.level_of_theory == LEVEL_BY_KEY_PREFIX[s.key.split("/")[0]]
        assert np.isfinite(s.energy) and s.forces.shape == (s.num_atoms, 3)
        if s.domain == "molecule":
            molecule_forces.append(np.linalg.norm(s.forces, axis=1))
        if s.domain == "protein":
            assert {"chain_id", "residue_index", "residue_name", "atom_name"} <= set(s.per_atom)
            assert np.any(s.atomic_numbers == 1)
    assert np.median(np.concatenate(molecule_forces)) < 3.0  # eV/Å: gently rattled, not far from equilibrium

    shards_before = read_manifest(out).shards
    again = build_demo_corpus(out, scale="smoke", workers=2, progress=False)
    assert read_manifest(out).shards == shards_before
    assert again["corpus"]["num_structures"] == corpus["num_structures"]

    # another protein chain count: the plan changes (so the build redoes it), and the count is what was asked
    fewer = build_demo_corpus(out, scale="smoke", workers=2, progress=False, protein_chains=2)
    assert fewer["corpus"]["levels_of_theory"]["amber14"] == 2 * SCALES["smoke"].frames_per_chain
    with pytest.raises(BadInputError, match="at least 1"):
        build_demo_corpus(out, scale="smoke", protein_chains=0)
