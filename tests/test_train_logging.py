"""Watching a run: wandb's mode, metrics.jsonl (rewritten after a resume), an offline wandb run on disk."""

from __future__ import annotations

from pathlib import Path

import pytest

from train.config import load_config
from train.logging import RunLogger, read_metrics, truncate_metrics, wandb_mode

DEMO_CONFIG = Path(__file__).resolve().parents[1] / "configs" / "pretrain_demo.yaml"


def test_wandb_is_offline_unless_logged_in_and_wandb_mode_wins(monkeypatch, tmp_path):
    monkeypatch.setenv("HOME", str(tmp_path))
    monkeypatch.delenv("WANDB_MODE", raising=False)
    monkeypatch.delenv("WANDB_API_KEY", raising=False)
    monkeypatch.delenv("NETRC", raising=False)
    assert wandb_mode() == "offline"
    (tmp_path / ".netrc").write_text("machine api.wandb.ai\n  login user\n  password 0123456789abcdef\n")
    (tmp_path / ".netrc").chmod(0o600)
    assert wandb_mode() == "online"
    monkeypatch.setenv("WANDB_MODE", "disabled")
    assert wandb_mode() == "disabled"


def test_a_resumed_run_rewrites_the_metrics_after_its_checkpoint(tmp_path):
    cfg = load_config(DEMO_CONFIG, [f"run.out_dir={tmp_path}", "run.progress_bar=false"])
    first = RunLogger(cfg, is_main=True, start_step=0, use_wandb=False)
    for step in range(1, 6):
        first.log(step, {"loss": 1.0 / step})
    first.close()
    truncate_metrics(tmp_path / "metrics.jsonl", 3)
    assert [r["step"] for r in read_metrics(tmp_path)] == [1, 2, 3]
    resumed = RunLogger(cfg, is_main=True, start_step=2, use_wandb=False)
    resumed.log(3, {"loss": 0.5})
    resumed.close()
    assert [(r["step"], r["loss"]) for r in read_metrics(tmp_path)] == [(1, 1.0), (2, 0.5), (3, 0.5)]


def test_other_ranks_write_nothing(tmp_path):
    cfg = load_config(DEMO_CONFIG, [f"run.out_dir={tmp_path / 'run'}"])
    logger = RunLogger(cfg, is_main=False, start_step=0, use_wandb=True)
    logger.log(1, {"loss": 1.0})
    logger.close()
    assert not (tmp_path / "run").exists()


@pytest.mark.timeout(120)
def test_offline_wandb_run_lands_in_the_run_folder(monkeypatch, tmp_path):
    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.setenv("WANDB_SILENT", "true")
    cfg = load_config(DEMO_CONFIG, [f"run.out_dir={tmp_path}", "run.progress_bar=false"])
    logger = RunLogger(cfg, is_main=True, start_step=0, use_wandb=True)
    logger.log(1, {"loss": 2.0, "loss/forces/molecule": 0.5})
    logger.close()
    runs = list((tmp_path / "wandb").glob("offline-run-*"))
    assert len(runs) == 1 and any(runs[0].glob("*.wandb"))
    assert (tmp_path / "wandb_id").read_text() in runs[0].name
