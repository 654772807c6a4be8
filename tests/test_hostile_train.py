"""Hostile input to `atomfm train`: a bad config file, override or setting, and a run that cannot go on, are
refused with exit code 2, no traceback and a message naming the file and the key (before any minute is spent)."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import yaml
from hostile import assert_refused, atomfm, train_config
from stream_corpus import crystals, molecules, write_corpus


@pytest.fixture(scope="module")
def corpus(tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("corpus")
    write_corpus(folder, [s for s in molecules(40) + crystals(12) if s.num_atoms > 2][:18], shard_size=6)
    return folder


@pytest.fixture
def config(corpus, tmp_path) -> Path:
    return train_config(corpus, tmp_path / "run")


def test_a_missing_config_file_is_named(tmp_path, capsys):
    assert_refused(atomfm(capsys, "train", "--config", tmp_path / "none.yaml"), tmp_path / "none.yaml")


def test_a_binary_config_file_is_named(tmp_path, capsys):
    path = tmp_path / "random.yaml"
    path.write_bytes(bytes(range(256)) * 4)
    assert_refused(atomfm(capsys, "train", "--config", path), path, "not a text")


def test_a_config_that_is_not_yaml_is_named(tmp_path, capsys):
    path = tmp_path / "broken.yaml"
    path.write_text("run: {out_dir: [\n")
    assert_refused(atomfm(capsys, "train", "--config", path), path, "not valid YAML")


def test_a_config_that_is_a_list_is_named(tmp_path, capsys):
    path = tmp_path / "list.yaml"
    path.write_text("- run\n- data\n")
    assert_refused(atomfm(capsys, "train", "--config", path), path, "mapping")


BAD_OVERRIDES = {
    "not_key_value": ("optim.lr", "key.subkey=value"),
    "value_not_yaml": ("optim.lr=[", "optim.lr"),
    "value_unclosed_quote": ('run.name="abc', "run.name"),
    "empty_key_part": ("optim..lr=1", "empty key part"),
    "into_a_value": ("optim.lr.x=1", "optim.lr"),
    "unknown_key": ("optim.learning_rate=1e-3", "optim.learning_rate"),
    "lr_nan": ("optim.lr=.nan", "optim.lr"),
    "lr_inf": ("optim.lr=.inf", "optim.lr"),
    "lr_string_inf": ("optim.lr=inf", "optim.lr"),
    "lr_negative": ("optim.lr=-1e-3", "optim.lr"),
    "lr_a_word": ("optim.lr=fast", "optim.lr"),
    "max_steps_zero": ("run.max_steps=0", "run.max_steps"),
    "max_steps_a_list": ("run.max_steps=[1, 2]", "run.max_steps"),
    "max_atoms_a_word": ("data.max_atoms=many", "data.max_atoms"),
    "cutoff_negative": ("data.cutoff=-4", "data.cutoff"),
    "engine_unknown": ("engine=horovod", "engine"),
    "zero_stage_five": ("deepspeed.zero_stage=5", "deepspeed.zero_stage"),
    "betas_one_number": ("optim.betas=[0.9]", "optim.betas"),
    "ema_decay_one": ("optim.ema_decay=1.0", "optim.ema_decay"),
    "model_size_unknown": ("model.size=galactic", "model.size"),
    "model_override_unknown": ("model.overrides.lmaxx=2", "lmaxx"),
    "model_override_wrong_type": ("model.overrides.channels=wide", "channels"),
    "tasks_empty": ("tasks={}", "tasks"),
    "task_unknown": ("tasks.docking={}", "docking"),
    "validation_metric_unknown": ("validation.metric=val/all/accuracy", "validation.metric"),
    "max_time_negative": ("run.max_time_s=-5", "run.max_time_s"),
    "stop_wait_zero": ("run.stop_wait_s=0", "run.stop_wait_s"),
    "timeout_negative": ("distributed.collective_timeout_s=-1", "distributed.collective_timeout_s"),
}


@pytest.mark.parametrize("case", sorted(BAD_OVERRIDES))
def test_a_bad_override_is_refused_before_the_run_starts(case, config, capsys):
    override, named = BAD_OVERRIDES[case]
    outcome = atomfm(capsys, "train", "--config", config, override)
    assert_refused(outcome, named)
    assert not (config.parent / "run").exists(), "the run started"


def test_a_bad_key_in_the_file_names_the_file_and_key(config, capsys):
    raw = yaml.safe_load(config.read_text())
    raw["optim"]["lr"] = "nan"
    config.write_text(yaml.safe_dump(raw))
    assert_refused(atomfm(capsys, "train", "--config", config), config, "optim.lr")


def test_a_corpus_folder_without_a_manifest_is_named(config, tmp_path, capsys):
    (tmp_path / "empty").mkdir()
    outcome = atomfm(capsys, "train", "--config", config, f"data.corpus={tmp_path / 'empty'}")
    assert_refused(outcome, tmp_path / "empty", "manifest.json")


def test_a_stream_that_skips_every_structure_stops_the_run_with_a_message(config, capsys):
    outcome = atomfm(capsys, "train", "--config", config, "data.max_atoms=2", "data.skip_oversize=true")
    assert_refused(outcome, "skipped every structure", "data.max_atoms=2")


def test_resume_never_refuses_a_folder_with_checkpoints(config, capsys):
    assert atomfm(capsys, "train", "--config", config, "run.max_steps=2").code == 0
    outcome = atomfm(capsys, "train", "--config", config, "run.resume=never")
    assert_refused(outcome, config.parent / "run", "already holds checkpoints")


def test_resume_from_a_folder_that_is_no_checkpoint_is_named(config, tmp_path, capsys):
    (tmp_path / "nothing").mkdir()
    outcome = atomfm(capsys, "train", "--config", config, "--resume", tmp_path / "nothing")
    assert_refused(outcome, tmp_path / "nothing", "neither a checkpoint folder")


def test_init_from_a_missing_folder_is_named(config, tmp_path, capsys):
    outcome = atomfm(capsys, "train", "--config", config, f"model.init_from={tmp_path / 'gone'}")
    assert_refused(outcome, tmp_path / "gone")


def test_a_second_training_of_the_same_out_dir_is_refused_while_the_first_holds_it(config, capsys):
    from data_pipeline.folder_lock import folder_lock
    from train.trainer import RUN_LOCK

    out = config.parent / "run"
    out.mkdir()
    with folder_lock(out, RUN_LOCK, "held by the test"):
        outcome = atomfm(capsys, "train", "--config", config)
    assert_refused(outcome, out, "another training is writing this run.out_dir", f"process {os.getpid()}")
    assert atomfm(capsys, "train", "--config", config, "run.max_steps=1").code == 0, (
        "released with its holder"
    )


def test_a_run_out_dir_that_is_a_file_is_named(config, capsys):
    (config.parent / "run").write_text("a file")
    assert_refused(atomfm(capsys, "train", "--config", config), config.parent / "run", "is a file")
