"""The diffusion training task and the noise-level conditioning it needs, on real molecules (water,
L-alanine, ethanol) and a copper cell, and through the training machinery (DeepSpeed, checkpoints, resume,
fine-tuning from a checkpoint without the conditioning)."""

from __future__ import annotations

import math
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
from ase.build import bulk, molecule
from model_fixtures import TINY_TRAINING as TINY
from model_fixtures import alanine, small_model
from stream_corpus import molecules, write_corpus
from torch.testing import assert_close
from torch_geometric.data import Batch

from data_pipeline.graph import structure_to_graph
from data_pipeline.schema import BadInputError, Structure, validate
from model.atomfm import AtomFM, model_config
from model.checkpoint_io import save_export
from train.logging import read_metrics
from train.tasks import TASKS, CorruptionState
from train.tasks.diffusion import DiffusionSchedule, complete_graph

CUTOFF = 4.0
ROOT = Path(__file__).resolve().parents[1]


def atomfm(*args: str) -> None:
    env = dict(os.environ, OMP_NUM_THREADS="1", WANDB_MODE="disabled", PYTHONPATH=str(ROOT))
    env.setdefault("TORCH_EXTENSIONS_DIR", str(ROOT / ".torch_extensions"))
    result = subprocess.run(
        [sys.executable, "-m", "launch.cli", *args],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=400,
    )
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-3000:]


def structure(atoms, key: str, domain: str = "molecule") -> Structure:
    periodic = bool(atoms.pbc.any())
    return validate(
        Structure(
            key=key,
            domain=domain,
            atomic_numbers=atoms.numbers,
            positions=atoms.positions,
            cell=np.asarray(atoms.cell) if periodic else None,
            pbc=atoms.pbc.copy(),
            level_of_theory="gfn2-xtb",
        )
    )


@pytest.fixture
def batch() -> Batch:
    cu = bulk("Cu", "fcc", a=3.6, cubic=True)
    items = [
        structure(molecule("H2O"), "water"),
        structure(alanine(), "alanine"),
        structure(cu, "cu", domain="material"),
        structure(molecule("CH3CH2OH"), "ethanol"),
    ]
    return Batch.from_data_list([structure_to_graph(s, CUTOFF) for s in items])


def corrupt(batch: Batch, step: int = 0):
    task = TASKS["diffusion"](TASKS["diffusion"].Settings())
    state = CorruptionState.for_batch(batch, seed=0, step=step, micro=0)
    task.corrupt(batch, state)
    return task, state


def test_molecules_are_noised_in_the_zero_mean_subspace_and_the_crystal_is_left_alone(batch):
    clean_pos, clean_z = batch.pos.clone(), batch.z.clone()
    _, state = corrupt(batch)
    record = state.task_records["diffusion"]
    assert state.claimed["diffusion"].tolist() == [True, True, False, True]
    schedule = DiffusionSchedule()
    for g in (0, 1, 3):
        atoms = batch.batch == g
        t = batch.noise_level[g].double()
        eps = record.eps[atoms].double()
        assert_close(eps.mean(dim=0), torch.zeros(3, dtype=torch.float64), atol=1e-6, rtol=0)
        centred = clean_pos[atoms].double() - clean_pos[atoms].double().mean(dim=0)
        expected = schedule.alpha(t) * centred + schedule.sigma(t) * eps
        assert_close(batch.pos[atoms].double(), expected, atol=1e-5, rtol=0)
        assert_close(
            batch.pos[atoms].double().mean(dim=0), torch.zeros(3, dtype=torch.float64), atol=1e-5, rtol=0
        )
    crystal = batch.batch == 2
    assert torch.equal(batch.pos[crystal], clean_pos[crystal])
    assert torch.equal(batch.z[crystal], clean_z[crystal])
    assert float(batch.noise_level[2]) == 0.0
    hidden = record.hidden
    assert torch.equal(batch.z == 0, hidden) and not hidden[crystal].any()


def test_noised_molecules_get_a_complete_graph_and_the_crystal_keeps_its_neighbour_list(batch):
    crystal_edges = batch.edge_index[:, batch.batch[batch.edge_index[1]] == 2].clone()
    corrupt(batch)
    dst_graph = batch.batch[batch.edge_index[1]]
    assert torch.equal(batch.edge_index[:, dst_graph == 2], crystal_edges)
    for g in (0, 1, 3):
        n = int(batch.natoms[g])
        assert int((dst_graph == g).sum()) == n * (n - 1)
    assert batch.cell_offsets.shape == (batch.edge_index.shape[1], 3)
    assert torch.equal(batch.batch[batch.edge_index[0]], dst_graph)  # no edge between structures


def test_complete_graph_lists_every_ordered_pair_once():
    edges = complete_graph(torch.tensor([3, 2]))
    pairs = {tuple(e) for e in edges.T.tolist()}
    assert pairs == {(0, 1), (0, 2), (1, 0), (1, 2), (2, 0), (2, 1), (3, 4), (4, 3)}


def test_the_same_seed_and_step_corrupt_the_same_way_and_another_step_does_not(batch):
    again = batch.clone()
    corrupt(batch, step=5)
    corrupt(again, step=5)
    assert torch.equal(batch.pos, again.pos) and torch.equal(batch.z, again.z)
    other = batch.clone()
    corrupt(other, step=6)
    assert not torch.equal(other.noise_level, batch.noise_level)


def test_schedule_ends_at_noise_and_types_hide_with_the_noise_variance():
    schedule = DiffusionSchedule()
    t = torch.tensor([0.0, 0.5, 1.0], dtype=torch.float64)
    assert_close(schedule.alpha(t) ** 2 + schedule.sigma(t) ** 2, torch.ones(3, dtype=torch.float64))
    assert float(schedule.sigma(t[0])) == pytest.approx(math.sqrt(schedule.precision))
    assert float(schedule.alpha(t[2])) == pytest.approx(math.sqrt(schedule.precision))
    assert_close(schedule.mask_probability(t), schedule.sigma(t) ** 2)


def test_loss_is_the_epsilon_mse_plus_the_type_cross_entropy_of_hidden_atoms(batch):
    model = small_model(noise_level_embedding=True, cutoff=CUTOFF)
    batch.pos = batch.pos.double()
    batch.cell = batch.cell.double()
    task, state = corrupt(batch)
    out = model(batch, task.outputs)
    terms = task.loss_terms(batch, out, state).values
    record = state.task_records["diffusion"]
    atoms = record.atoms
    sums = torch.zeros(4, 3, dtype=torch.float64).index_add(0, batch.batch, out["noise"])
    noise = out["noise"] - (sums / batch.natoms[:, None])[batch.batch]
    mse = (noise[atoms] - record.eps[atoms]).pow(2).mean(dim=-1)
    ce = torch.nn.functional.cross_entropy(
        out["atom_logits"].float(), state.true_z, reduction="none"
    ).double()
    expected = mse + (ce * record.hidden)[atoms]
    assert_close(terms, expected, rtol=1e-5, atol=1e-6)


def test_a_model_without_the_noise_level_embedding_has_its_old_weights_and_refuses_a_noise_level(batch):
    plain = small_model(cutoff=CUTOFF)
    assert not any("noise_level" in name for name in plain.state_dict())
    batch.pos, batch.cell = batch.pos.double(), batch.cell.double()
    batch.noise_level = torch.full((4,), 0.5, dtype=torch.float64)
    with pytest.raises(BadInputError, match="noise-level conditioning"):
        plain(batch, ("noise",))


def test_a_fresh_noise_level_embedding_starts_at_zero_and_learns(batch):
    """Zero-initialised last layer: a pretrained backbone given the embedding computes what it did."""
    plain = small_model(cutoff=CUTOFF)
    conditioned = small_model(noise_level_embedding=True, cutoff=CUTOFF)
    conditioned.load_state_dict(plain.state_dict(), strict=False)
    batch.pos, batch.cell = batch.pos.double(), batch.cell.double()
    before = plain(batch, ("noise",))["noise"]
    batch.noise_level = torch.tensor([0.1, 0.9, 0.0, 0.5], dtype=torch.float64)
    assert_close(conditioned(batch, ("noise",))["noise"], before, rtol=0, atol=1e-12)
    conditioned(batch, ("noise",))["noise"].pow(2).sum().backward()
    assert conditioned.backbone.noise_level.mlp[-1].weight.grad.abs().sum() > 0
    batch.noise_level = torch.tensor([0.1, 1.5, 0.0, 0.5], dtype=torch.float64)
    with pytest.raises(BadInputError, match="noise_level"):
        conditioned(batch, ("noise",))


@pytest.mark.slow
def test_diffusion_trains_under_deepspeed_resumes_exactly_and_finetunes_from_a_plain_checkpoint(tmp_path):
    """A plain pretraining run (no noise-level embedding) is fine-tuned with the diffusion task for 4 steps;
    resuming its step-2 checkpoint gives steps 3 and 4 exactly."""
    corpus = tmp_path / "corpus"
    write_corpus(corpus, molecules(24), shard_size=8)

    def config(name: str, **changes) -> str:
        cfg = {
            "run": {
                "out_dir": str(tmp_path / name),
                "max_steps": 4,
                "log_every": 1,
                "checkpoint_every": 2,
                "keep_last": 3,
                "progress_bar": False,
            },
            "data": {
                "corpus": [str(corpus)],
                "max_atoms": 48,
                "cutoff": 4.5,
                "shuffle_buffer": 8,
                "num_workers": 0,
            },
            "model": {
                "size": "tiny",
                "overrides": {**TINY, "noise_level_embedding": True},
                "conservative_forces": False,
                "fit_reference_energies": False,
            },
            "tasks": {"diffusion": {"weight": 1.0}},
            "optim": {"lr": 3e-3, "warmup_steps": 0, "ema_decay": 0.0},
            "engine": "deepspeed",
            "logging": {"wandb": False},
        }
        for section, values in changes.items():
            cfg[section] = {**cfg[section], **values} if isinstance(values, dict) else values
        path = tmp_path / f"{name}.yaml"
        path.write_text(yaml.safe_dump(cfg))
        return str(path)

    torch.manual_seed(0)
    save_export(AtomFM(model_config("tiny", **TINY)), tmp_path / "plain")
    atomfm("finetune", "--from", str(tmp_path / "plain"), "--config", config("straight"))
    step_2 = tmp_path / "straight" / "checkpoints" / "step_00000002"
    atomfm("train", "--config", config("resumed"), "--resume", str(step_2))
    straight = [r["loss"] for r in read_metrics(tmp_path / "straight") if "loss" in r]
    resumed = [r["loss"] for r in read_metrics(tmp_path / "resumed") if "loss" in r]
    assert len(straight) == 4 and straight[2:] == resumed
