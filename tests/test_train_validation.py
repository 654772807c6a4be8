"""Validation during training (per-domain val metrics logged, the best checkpoint kept beside the last K, early
stopping) and starting a run from another checkpoint's weights (model.init_from)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import yaml
from model_fixtures import TINY_TRAINING
from stream_corpus import crystals, molecules, write_corpus

from data_pipeline.schema import BadInputError
from model.checkpoint_io import load_model, save_export
from model.checkpoint_layout import best_checkpoint, list_checkpoints
from train.config import load_config
from train.logging import read_metrics
from train.run_setup import build_model, load_initial_weights

ROOT = Path(__file__).resolve().parents[1]
TINY = {**TINY_TRAINING, "num_layers": 1}


@pytest.fixture(scope="module")
def corpus(tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("corpus")
    write_corpus(
        folder,
        molecules(30) + crystals(16) + molecules(8, split="val") + crystals(6, split="val", seed=5),
        shard_size=8,
    )
    return folder


def config_file(corpus: Path, out: Path, **changes) -> Path:
    cfg = {
        "run": {
            "out_dir": str(out),
            "max_steps": 8,
            "log_every": 2,
            "checkpoint_every": 100,
            "keep_last": 1,
            "progress_bar": False,
        },
        "data": {
            "corpus": [str(corpus)],
            "max_atoms": 64,
            "cutoff": 4.5,
            "shuffle_buffer": 8,
            "num_workers": 0,
        },
        "validation": {"every": 2, "metric": "val/all/force_mae"},
        "model": {"size": "tiny", "overrides": TINY, "conservative_forces": False},
        "tasks": {"energy": {}, "forces": {}},
        "optim": {"lr": 3e-3, "warmup_steps": 1},
        "engine": "ddp",
        "logging": {"wandb": False},
    }
    for dotted, value in changes.items():
        section, key = dotted.split(".")
        cfg[section][key] = value
    path = out.parent / f"{out.name}.yaml"
    path.write_text(yaml.safe_dump(cfg))
    return path


def train(config: Path) -> subprocess.CompletedProcess:
    env = dict(os.environ, OMP_NUM_THREADS="1", WANDB_MODE="disabled", PYTHONPATH=str(ROOT))
    result = subprocess.run(
        [sys.executable, "-m", "launch.cli", "train", "--config", str(config)],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    return result


def test_validation_logs_per_domain_metrics_and_keeps_the_best_checkpoint(corpus, tmp_path):
    out = tmp_path / "run"
    result = train(config_file(corpus, out))
    records = [r for r in read_metrics(out) if "val/all/force_mae" in r]
    assert [r["step"] for r in records] == [2, 4, 6, 8]
    assert {"val/molecule/force_mae", "val/material/energy_mae", "val/material/stress_mae"} <= set(records[0])
    best = min(records, key=lambda r: r["val/all/force_mae"])
    assert best_checkpoint(out).name == f"step_{best['step']:08d}"
    kept = [p.name for p in list_checkpoints(out)]
    assert kept[-1] == "step_00000008" and best_checkpoint(out).name in kept and len(kept) <= 2
    assert "val step 2" in result.stdout
    state = json.loads((out / "checkpoints" / "step_00000008" / "trainer_state.json").read_text())
    assert state["best_step"] == best["step"]


def test_early_stopping_stops_after_patience_validations_without_improvement(corpus, tmp_path):
    out = tmp_path / "flat"
    # a learning rate below float32's resolution leaves the weights, hence the val metric, exactly unchanged
    result = train(
        config_file(corpus, out, **{"validation.patience": 2, "optim.lr": 1e-30, "run.max_steps": 20})
    )
    steps = [r["step"] for r in read_metrics(out) if "val/all/force_mae" in r]
    assert steps == [2, 4, 6]
    assert (
        "early stop" in result.stdout
        and json.loads(result.stdout.strip().splitlines()[-1])["finished"] == "early_stop"
    )


def test_init_from_copies_the_weights_and_refuses_another_shape(corpus, tmp_path):
    cfg = load_config(config_file(corpus, tmp_path / "a"))
    torch.manual_seed(7)
    source = build_model(cfg)
    save_export(source, tmp_path / "export")
    target = build_model(cfg)
    assert load_initial_weights(target, tmp_path / "export") == []
    for name, tensor in load_model(tmp_path / "export").state_dict().items():
        torch.testing.assert_close(target.state_dict()[name], tensor)

    wider = load_config(config_file(corpus, tmp_path / "b", **{"model.overrides": {**TINY, "channels": 24}}))
    with pytest.raises(BadInputError, match=r"shape .*channels 16 vs 24"):
        load_initial_weights(build_model(wider), tmp_path / "export")
    longer = load_config(config_file(corpus, tmp_path / "c", **{"model.overrides": {**TINY, "cutoff": 4.0}}))
    with pytest.raises(BadInputError, match="cutoff 4.5 Å"):
        load_initial_weights(build_model(longer), tmp_path / "export")


def test_a_wall_clock_budget_stops_the_run_with_a_checkpoint(corpus, tmp_path):
    out = tmp_path / "timed"
    result = train(
        config_file(corpus, out, **{"run.max_time_s": 2.0, "run.max_steps": 100000, "validation.every": 0})
    )
    final = json.loads(result.stdout.strip().splitlines()[-1])
    assert final["finished"] == "time_limit" and 0 < final["step"] < 100000
    assert list_checkpoints(out)[-1].name == f"step_{final['step']:08d}"


def test_a_capped_validation_set_keeps_every_domains_share(corpus):
    from data_pipeline.stream import StreamConfig
    from train.config import ValidationConfig
    from train.engine.distributed import DistContext
    from train.validation import Validator

    ctx = DistContext(rank=0, world_size=1, local_rank=0, device=torch.device("cpu"), backend="gloo")
    data = StreamConfig(corpus=[str(corpus)])
    full = Validator(ValidationConfig(every=1), data, ctx)
    capped = Validator(ValidationConfig(every=1, max_structures=7), data, ctx)
    assert full.total == 14 and capped.total == 7
    # the split holds 8 molecules and 6 crystals: half of each, not the first 7 in read order
    assert sorted(s.domain for s in capped.mine) == ["material"] * 3 + ["molecule"] * 4
