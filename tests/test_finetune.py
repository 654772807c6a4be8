"""Fine-tuning: from a checkpoint's weights (ZeRO-3 shards or their export give the same first loss), frozen and
unfrozen backbones, layer-wise learning rates, LoRA adapters merged at export."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import yaml
from model_fixtures import TINY_TRAINING as TINY
from stream_corpus import crystals, molecules, write_corpus

from model.checkpoint_io import load_model
from model.checkpoint_layout import list_checkpoints
from model.lora import is_adapter
from train.config import load_config
from train.engine.base import parameter_groups
from train.finetune import FinetuneConfig, learning_plan
from train.logging import read_metrics
from train.run_setup import build_model
from train.schedule import WarmupCosine

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def corpus(tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("corpus")
    write_corpus(folder, molecules(24) + crystals(16), shard_size=8)
    return folder


def config(corpus: Path, out: Path, **sections) -> Path:
    cfg = {
        "run": {
            "out_dir": str(out),
            "max_steps": 3,
            "log_every": 1,
            "checkpoint_every": 100,
            "progress_bar": False,
        },
        "data": {
            "corpus": [str(corpus)],
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
        cfg[name] = {**cfg.get(name, {}), **values} if isinstance(values, dict) else values
    path = out.parent / f"{out.name}.yaml"
    path.write_text(yaml.safe_dump(cfg))
    return path


def atomfm(*args: str, launcher: list[str] | None = None) -> subprocess.CompletedProcess:
    env = dict(os.environ, OMP_NUM_THREADS="1", WANDB_MODE="disabled", PYTHONPATH=str(ROOT))
    env.setdefault("TORCH_EXTENSIONS_DIR", str(ROOT / ".torch_extensions"))
    command = (launcher or [sys.executable, "-m", "launch.cli"]) + list(args)
    result = subprocess.run(command, cwd=ROOT, env=env, capture_output=True, text=True, timeout=400)
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-3000:]
    return result


@pytest.fixture(scope="module")
def pretrained(corpus, tmp_path_factory) -> Path:
    """A ZeRO-3 DeepSpeed checkpoint (direct forces) and its export."""
    base = tmp_path_factory.mktemp("pretrained")
    path = config(corpus, base / "zero3", engine="deepspeed", deepspeed={"zero_stage": 3})
    atomfm("train", "--config", str(path))
    atomfm("export", str(base / "zero3"), "--out", str(base / "zero3" / "export"))
    return base / "zero3"


def first_loss(run: Path) -> float:
    return read_metrics(run)[0]["loss"]


def test_finetuning_from_zero3_shards_and_from_their_export_gives_the_same_first_loss(
    pretrained, corpus, tmp_path
):
    losses = []
    for name, source in (
        ("from_shards", list_checkpoints(pretrained)[-1]),
        ("from_export", pretrained / "export"),
    ):
        atomfm(
            "finetune",
            "--from",
            str(source),
            "--config",
            str(config(corpus, tmp_path / name)),
            "run.max_steps=1",
        )
        losses.append(first_loss(tmp_path / name))
    assert losses[0] == pytest.approx(losses[1], rel=1e-6)


def test_a_frozen_backbone_stays_put_until_it_is_unfrozen(pretrained, corpus, tmp_path):
    start = load_model(pretrained / "export").state_dict()
    frozen = tmp_path / "frozen"
    atomfm(
        "finetune",
        "--from",
        str(pretrained / "export"),
        "--config",
        str(config(corpus, frozen, finetune={"freeze_backbone": True})),
    )
    after = load_model(list_checkpoints(frozen)[-1]).state_dict()
    for name, tensor in start.items():
        if name.startswith("backbone."):
            torch.testing.assert_close(after[name], tensor, rtol=0, atol=0, msg=name)
    assert not torch.equal(after["heads.energy.mlp.0.weight"], start["heads.energy.mlp.0.weight"])

    thawed = tmp_path / "thawed"
    atomfm(
        "finetune",
        "--from",
        str(pretrained / "export"),
        "--config",
        str(config(corpus, thawed, finetune={"freeze_backbone": True, "unfreeze_after": 2})),
    )
    after = load_model(list_checkpoints(thawed)[-1]).state_dict()
    assert not torch.equal(
        after["backbone.blocks.0.attention.output.weight"], start["backbone.blocks.0.attention.output.weight"]
    )


def test_layer_wise_learning_rates_decay_towards_the_embeddings(corpus, tmp_path):
    cfg = load_config(config(corpus, tmp_path / "r"))
    model = build_model(cfg)
    plan = learning_plan(model, FinetuneConfig(layer_lr_decay=0.5, freeze_layers=1, unfreeze_after=10), 2)
    assert plan["heads.energy.mlp.0.weight"] == (1.0, 0)
    assert plan["backbone.blocks.1.attention.output.weight"] == (0.5, 0)
    assert plan["backbone.blocks.0.attention.output.weight"] == (0.25, 10)  # frozen: embeddings + block 0
    assert plan["backbone.conditioning.element.weight"] == (0.125, 10)
    optimizer = torch.optim.AdamW(parameter_groups(model, 0.01, plan), lr=1e-3)
    schedule = WarmupCosine(optimizer, warmup_steps=0, total_steps=100, min_ratio=1.0)
    rates = {(g["lr_scale"], g["train_from"]): g["lr"] for g in optimizer.param_groups}
    assert rates[(1.0, 0)] == pytest.approx(1e-3) and rates[(0.5, 0)] == pytest.approx(5e-4)
    assert rates[(0.25, 10)] == 0.0
    for _ in range(10):
        optimizer.step()
        schedule.step()
    rates = {(g["lr_scale"], g["train_from"]): g["lr"] for g in optimizer.param_groups}
    assert rates[(0.25, 10)] == pytest.approx(2.5e-4) and rates[(0.125, 10)] == pytest.approx(1.25e-4)


def test_lora_finetuning_trains_adapters_only_and_exports_a_plain_model(pretrained, corpus, tmp_path):
    run = tmp_path / "lora"
    atomfm(
        "finetune",
        "--from",
        str(pretrained / "export"),
        "--config",
        str(config(corpus, run, model={"overrides": {**TINY, "lora": {"rank": 4}}})),
    )
    checkpoint = list_checkpoints(run)[-1]
    adapted = load_model(checkpoint, dtype=torch.float64)
    names = [n for n, _ in adapted.named_parameters()]
    assert any(is_adapter(n) for n in names)
    start = load_model(pretrained / "export").state_dict()
    base = dict(adapted.named_parameters())[
        "backbone.blocks.0.attention.output.parametrizations.weight.original"
    ]
    torch.testing.assert_close(
        base.float(), start["backbone.blocks.0.attention.output.weight"], rtol=0, atol=0
    )

    atomfm("export", str(run), "--out", str(run / "export"))
    plain = load_model(run / "export", dtype=torch.float64)
    assert not any(is_adapter(n) for n, _ in plain.named_parameters())
    assert json.loads((run / "export" / "model_config.json").read_text())["lora"]["rank"] == 0
    from model_fixtures import alanine, batch_of

    batch = batch_of(alanine(), cutoff=4.5)
    torch.testing.assert_close(
        plain(batch, ("energy",))["energy"], adapted(batch, ("energy",))["energy"], rtol=1e-6, atol=1e-6
    )
    assert not torch.allclose(
        plain.state_dict()["backbone.blocks.0.attention.output.weight"].float(),
        start["backbone.blocks.0.attention.output.weight"],
    )


def test_a_new_level_of_theory_grows_the_vocabulary_and_keeps_the_old_tables(pretrained, corpus, tmp_path):
    from dataclasses import replace

    from model_fixtures import water

    from data_pipeline.corpus_reader import read_split
    from model.calculator import AtomFMCalculator

    new_corpus = tmp_path / "user_dft"
    # the user's own level: EMT-labelled structures under a name the model has never seen
    structures = [replace(s, level_of_theory="my-dft/def2-tzvp") for s in read_split([str(corpus)], "train")]
    write_corpus(new_corpus, structures, shard_size=8)
    run = tmp_path / "new_level"
    atomfm(
        "finetune",
        "--from",
        str(pretrained / "export"),
        "--config",
        str(config(new_corpus, run, optim={"lr": 1e-3})),
        "run.max_steps=2",
    )
    before, after = load_model(pretrained / "export"), load_model(list_checkpoints(run)[-1])
    old = before.config.levels_of_theory
    assert after.config.levels_of_theory == [*old, "my-dft/def2-tzvp"]
    new_row = len(old)
    torch.testing.assert_close(
        after.reference_energies.energies[:new_row], before.reference_energies.energies
    )
    assert after.reference_energies.energies[new_row].abs().sum() > 0  # fitted on the new level's data
    emt = old.index("emt")
    assert not torch.equal(
        after.reference_energies.energies[new_row], before.reference_energies.energies[emt]
    )

    atomfm("export", str(run), "--out", str(run / "export"))
    molecule = water()
    energies = {}
    for level in ("my-dft/def2-tzvp", "emt", "gfn2-xtb"):
        molecule.calc = AtomFMCalculator.from_checkpoint(run / "export", level_of_theory=level)
        energies[level] = molecule.get_potential_energy()
    assert len(set(energies.values())) == 3


def test_a_new_level_starts_from_the_nearest_known_name():
    from data_pipeline.vocab import LEVELS_OF_THEORY
    from train.run_setup import nearest_level

    assert nearest_level("wb97x-d/def2-tzvp", list(LEVELS_OF_THEORY)) == "wb97x-d"
    assert nearest_level("pbe0", list(LEVELS_OF_THEORY)) == "pbe"
    assert nearest_level("my-dft", list(LEVELS_OF_THEORY)) is None


def test_an_export_keeps_how_it_was_trained_for_reports(pretrained):
    from eval.predictors import CheckpointPredictor, training_curve

    export = pretrained / "export"
    assert {"config.yaml", "trainer_state.json", "metrics.jsonl"} <= {p.name for p in export.iterdir()}
    identity = CheckpointPredictor(export).identity()
    training = identity["training"]
    assert training["init_from"] is None and training["step"] == training["max_steps"] > 0
    assert training["tasks"] and training["corpus"]
    assert [r["step"] for r in training_curve(export)] == [r["step"] for r in read_metrics(pretrained)]
    load_model(export)  # the copies are in its checksums: it still verifies and loads


def test_elements_a_new_level_did_not_see_take_the_nearest_known_levels_references():
    from train.run_setup import _unseen_elements_from_nearest_level

    levels = ["none", "other", "gfn2-xtb", "emt", "pbe", "gfn1-xtb"]
    table = torch.zeros(len(levels), 119, dtype=torch.float64)
    table[2, [1, 6, 9]] = torch.tensor([-13.9, -58.2, -170.0], dtype=torch.float64)  # gfn2-xtb, known
    table[3, [29]] = -3.5  # emt, known
    table[5, [1, 6]] = torch.tensor([-14.5, -57.6], dtype=torch.float64)  # gfn1-xtb fitted on data without F
    table[5, 9] = -3e-13  # what least squares leaves for an element it never saw
    known = torch.tensor([False, False, True, True, False, False])
    out = _unseen_elements_from_nearest_level(table, known, levels)
    assert out[5, 1] == -14.5 and out[5, 6] == -57.6  # fitted values stay
    assert out[5, 9] == -170.0 and out[5, 29] == 0  # F from gfn2-xtb (its nearest name), not EMT's Cu
    assert torch.equal(out[:5], table[:5])  # known levels and a level absent from the data are untouched
