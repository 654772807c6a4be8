"""Fine-tuning for downstream tasks: the xTB labeller's structure properties, a property head fine-tuned and
scored by the ``property`` evaluation task, and replay of the pretraining corpus (its share of the
structures, an exact resume, pseudo-labels from the initial model)."""

from __future__ import annotations

import json
from collections import Counter
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
from hostile import run
from model_fixtures import TINY_TRAINING as TINY
from stream_corpus import crystals, molecules, write_corpus

from data_pipeline.corpus_reader import read_split
from data_pipeline.labels.xtb import GFN2xTBLabeller
from data_pipeline.schema import BadInputError
from data_pipeline.stream import REPLAY_PREFIX, StreamConfig, StructureStream
from model.checkpoint_io import load_model
from model.checkpoint_layout import list_checkpoints
from train.logging import read_metrics
from train.replay import PseudoLabeller

HEADS = ["energy", "forces_direct", "noise", "charges", "atom_type", "embedding"]


@pytest.fixture(scope="module")
def gap_corpus(tmp_path_factory) -> Path:
    """g2 molecules labelled by GFN2-xTB (gaps and dipoles included); every fifth one in the test split."""
    labeller, labelled = GFN2xTBLabeller(), []
    for i, s in enumerate(molecules(40)):
        try:
            labelled.append(replace(labeller(s), split="test" if i % 5 == 0 else "train"))
        except BadInputError:  # a radical recorded as a singlet
            continue
    folder = tmp_path_factory.mktemp("gap")
    write_corpus(folder, labelled, shard_size=8)
    return folder


@pytest.fixture(scope="module")
def crystal_corpus(tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("crystals")
    write_corpus(folder, crystals(16), shard_size=4)
    return folder


def config(corpus: list[Path], out: Path, **sections) -> Path:
    cfg = {
        "run": {"out_dir": str(out), "max_steps": 2, "log_every": 1, "checkpoint_every": 100},
        "data": {
            "corpus": [str(c) for c in corpus],
            "max_atoms": 64,
            "cutoff": 4.5,
            "shuffle_buffer": 8,
            "num_workers": 0,
        },
        "model": {"size": "tiny", "overrides": TINY, "conservative_forces": False},
        "tasks": {"energy": {}, "forces": {}},
        "optim": {"lr": 3e-3, "warmup_steps": 0, "ema_decay": 0.0},
        "engine": "ddp",
        "logging": {"wandb": False},
    }
    for name, values in sections.items():
        cfg[name] = {**cfg.get(name, {}), **values}
    path = out.parent / f"{out.name}.yaml"
    path.write_text(yaml.safe_dump(cfg))
    return path


def atomfm(*args: object) -> None:
    assert run(*args) == 0


@pytest.fixture(scope="module")
def pretrained(gap_corpus, crystal_corpus, tmp_path_factory) -> Path:
    """A two-step checkpoint over molecules and crystals, exported."""
    out = tmp_path_factory.mktemp("pretrained") / "run"
    atomfm("train", "--config", config([gap_corpus, crystal_corpus], out))
    atomfm("export", out, "--out", out / "export")
    return out / "export"


def test_the_xtb_labeller_records_the_gap_and_the_dipole_moment():
    from ase.build import molecule
    from tblite.ase import TBLite

    from data_pipeline.schema import Structure, validate

    labelled = {}
    for name in ("H2O", "C6H6"):
        atoms = molecule(name)
        s = validate(
            Structure(key=name, domain="molecule", atomic_numbers=atoms.numbers, positions=atoms.positions)
        )
        labelled[name] = GFN2xTBLabeller()(s).properties
        atoms.calc = TBLite(method="GFN2-xTB", verbosity=0)
        dipole = np.linalg.norm(atoms.get_dipole_moment())  # e·Å, through tblite's ASE calculator
        assert labelled[name]["dipole_moment"] == pytest.approx(dipole, abs=1e-6)
    assert labelled["C6H6"]["dipole_moment"] < 1e-6  # centrosymmetric
    assert 0 < labelled["C6H6"]["homo_lumo_gap"] < labelled["H2O"]["homo_lumo_gap"]  # conjugation narrows it


def test_a_property_head_is_fine_tuned_and_scored_against_the_mean_predictor(
    pretrained, gap_corpus, tmp_path
):
    out = tmp_path / "gap"
    overrides = {**TINY, "heads": [*HEADS, "properties"]}
    overrides["head_options"] = {"properties": {"names": ["homo_lumo_gap"]}}
    path = config(
        [gap_corpus],
        out,
        run={"max_steps": 12, "log_every": 4},
        model={"overrides": overrides},
        tasks={"property": {}},
    )
    atomfm("finetune", "--from", pretrained, "--config", path)
    train_gaps = [s.properties["homo_lumo_gap"] for s in read_split([str(gap_corpus)], "train")]
    model = load_model(list_checkpoints(out)[-1], dtype=torch.float64)
    head = model.heads["properties"]
    torch.testing.assert_close(head.shift, torch.tensor([np.mean(train_gaps)], dtype=torch.float64))
    losses = [record["loss/property"] for record in read_metrics(out)]
    assert losses[-1] < losses[0]

    atomfm("eval", "--checkpoint", out, "--data", gap_corpus, "--tasks", "property", "--out", tmp_path / "ev")
    (result_file,) = (tmp_path / "ev").rglob("*.json")
    metrics = json.loads(result_file.read_text())["metrics"]["all"]
    test = list(read_split([str(gap_corpus)], "test"))
    from eval.tasks.head_outputs import head_outputs

    model = load_model(list_checkpoints(out)[-1])
    predicted = np.concatenate(
        [o["properties"][:, 0].numpy() for _, _, o in head_outputs(model, test, ("properties",))]
    )
    target = np.array([s.properties["homo_lumo_gap"] for s in test])
    assert metrics["mae"]["value"] == pytest.approx(np.abs(predicted - target).mean(), rel=1e-5)
    assert metrics["baseline_mae"]["value"] == pytest.approx(np.abs(np.mean(train_gaps) - target).mean())
    assert metrics["mae"]["n"] == len(test)


def replay_stream(gap_corpus: Path, crystal_corpus: Path, fraction: float) -> StructureStream:
    cfg = StreamConfig(
        corpus=[str(gap_corpus)],
        max_atoms=48,
        cutoff=4.5,
        shuffle_buffer=8,
        num_workers=0,
        replay_corpus=[str(crystal_corpus)],
        replay_fraction=fraction,
    )
    return StructureStream(cfg, 0, 1)


def test_replay_draws_its_share_of_structures_and_resumes_exactly(gap_corpus, crystal_corpus):
    stream = replay_stream(gap_corpus, crystal_corpus, 0.25)
    assert stream.probabilities == {"molecule": 0.75, REPLAY_PREFIX + "material": 0.25}
    batches = iter(stream)
    counts: Counter = Counter()
    state = None
    for i in range(60):
        batch = next(batches)
        for key, replayed in zip(batch.key, batch.replay.tolist(), strict=True):
            assert replayed == key.startswith("emt-")  # replayed structures are the crystal corpus's
            counts[replayed] += 1
        if i == 39:
            state = stream.state_dict()
            after = [(b.key, b.replay.tolist()) for b in (next(batches) for _ in range(20))]
            break
    share = counts[True] / sum(counts.values())
    assert 0.18 < share < 0.32, (share, counts)

    resumed = replay_stream(gap_corpus, crystal_corpus, 0.25)
    resumed.load_state_dict(state)
    again = iter(resumed)
    assert [(b.key, b.replay.tolist()) for b in (next(again) for _ in range(20))] == after


def test_pseudo_labels_are_the_initial_models_predictions(pretrained, gap_corpus, crystal_corpus):
    model = load_model(pretrained)
    batch = next(
        b for b in replay_stream(gap_corpus, crystal_corpus, 0.5) if 0 < int(b.replay.sum()) < len(b.key)
    )
    labels = batch.energy.clone()
    with torch.no_grad():
        expected = model(batch, ("energy", "forces"), conservative=False)
    assert PseudoLabeller(model)(batch) == int(batch.replay.sum())
    replayed = batch.replay
    torch.testing.assert_close(batch.energy[replayed], expected["energy"][replayed])
    torch.testing.assert_close(batch.forces[replayed[batch.batch]], expected["forces"][replayed[batch.batch]])
    torch.testing.assert_close(batch.energy[~replayed], labels[~replayed])


def test_a_fine_tune_with_pseudo_label_replay_starts_at_zero_loss_on_the_replayed_structures(
    pretrained, gap_corpus, crystal_corpus, tmp_path
):
    first = {}
    for pseudo in (True, False):
        out = tmp_path / f"pseudo_{pseudo}"
        replay = {"corpus": [str(crystal_corpus)], "fraction": 0.5, "pseudo_label": pseudo}
        path = config([gap_corpus], out, run={"max_steps": 1}, finetune={"replay": replay})
        atomfm("finetune", "--from", pretrained, "--config", path)
        first[pseudo] = read_metrics(out)[0]
    # the replayed crystals (the only materials) carry the initial model's own predictions
    assert first[True]["loss/energy/material"] < 1e-10
    assert first[True]["loss/forces/material"] < 1e-5
    assert first[False]["loss/forces/material"] > 1e-3
    assert first[True]["loss/energy/molecule"] == pytest.approx(first[False]["loss/energy/molecule"])


def peptide_frames(count: int, split: str) -> list:
    """Rattled frames of MDAnalysisTests' helical A6PA6 peptide with the per-atom fields of a protein file."""
    import warnings

    import biotite.structure.io.pdb as pdb
    from ase.data import atomic_numbers
    from stream_corpus import protein_file

    from data_pipeline.schema import Structure, validate

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)
        array = pdb.PDBFile.read(str(protein_file("A6PA6_alpha.pdb"))).get_structure(model=1)
    rng = np.random.default_rng(len(split))
    return [
        validate(
            Structure(
                key=f"A6PA6/{split}/{k}",
                domain="protein",
                atomic_numbers=np.array([atomic_numbers[e.capitalize()] for e in array.element]),
                positions=array.coord + 0.02 * rng.standard_normal(array.coord.shape),
                group_id=f"A6PA6-{split}",
                split=split,
                per_atom={
                    "residue_index": array.res_id,
                    "atom_name": array.atom_name.astype(str),
                    "chain_id": np.full(len(array), "A"),
                },
            )
        )
        for k in range(count)
    ]


def test_dssp_labels_every_atom_with_its_residues_state_as_pydssp_reads_the_pdb_file():
    import pydssp
    from stream_corpus import protein_file

    from data_pipeline.secondary_structure import residue_secondary_structure
    from eval.tasks.secondary_structure import residue_labels

    (s,) = peptide_frames(1, "train")
    s = replace(s, positions=s.positions.round(3))
    labels = residue_secondary_structure(s)
    coord = pydssp.read_pdbtext(protein_file("A6PA6_alpha.pdb").read_text())
    expected = pydssp.assign(coord, out_type="c3")
    per_residue = residue_labels(replace(s, per_atom={**s.per_atom, "secondary_structure": labels}))
    # pydssp's own reader puts every amide on the donor side (the first residue too); ours knows it has no H
    assert "".join("HEC"[k] for k in per_residue[1:]) == "".join(expected[1:]).replace("-", "C")
    assert (per_residue == 0).mean() > 0.5  # the alpha conformer is a helix
    for residue in np.unique(s.per_atom["residue_index"]):
        assert len(set(labels[s.per_atom["residue_index"] == residue])) == 1


def test_a_residue_head_is_fine_tuned_on_secondary_structure_and_scored_by_q3(pretrained, tmp_path):
    from data_pipeline.secondary_structure import with_secondary_structure
    from eval.tasks.secondary_structure import residue_labels

    corpus = tmp_path / "ss"
    frames = [with_secondary_structure(s) for s in peptide_frames(4, "train") + peptide_frames(2, "test")]
    write_corpus(corpus, frames, shard_size=4)
    out = tmp_path / "ss_run"
    overrides = {**TINY, "heads": [*HEADS, "residue"]}
    overrides["head_options"] = {"residue": {"target": "secondary_structure", "dim": 3}}
    path = config(
        [corpus],
        out,
        run={"max_steps": 6, "log_every": 2},
        data={"max_atoms": 256},
        model={"overrides": overrides},
        tasks={"residue_class": {}},
    )
    atomfm("finetune", "--from", pretrained, "--config", path)
    losses = [record["loss/residue_class"] for record in read_metrics(out)]
    assert losses[-1] < losses[0]

    atomfm(
        "eval",
        "--checkpoint",
        out,
        "--data",
        corpus,
        "--tasks",
        "secondary_structure",
        "--out",
        tmp_path / "e",
    )
    (result_file,) = (tmp_path / "e").rglob("*.json")
    metrics = json.loads(result_file.read_text())["metrics"]["protein"]
    model = load_model(list_checkpoints(out)[-1])
    from eval.tasks.head_outputs import head_outputs

    hits = total = majority_hits = 0
    for s in frames[4:]:
        ((_, _, outputs),) = head_outputs(model, [s], ("residue",))
        reference = residue_labels(s)
        keep = reference >= 0
        hits += int((outputs["residue"].argmax(dim=1).numpy()[keep] == reference[keep]).sum())
        majority_hits += int((reference[keep] == 0).sum())  # helix is the training majority
        total += int(keep.sum())
    assert metrics["q3"]["value"] == pytest.approx(100.0 * hits / total)
    assert metrics["baseline_q3"]["value"] == pytest.approx(100.0 * majority_hits / total)
