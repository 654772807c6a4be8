"""Hostile input to `atomfm export`: an output that cannot be written, and a damaged or missing checkpoint, are
refused with exit code 2, no traceback and a message naming the path."""

from __future__ import annotations

import errno
import os
import shutil
from pathlib import Path

import pytest
from hostile import assert_refused, atomfm, train_config
from stream_corpus import crystals, molecules, write_corpus

from launch.cli import main
from model.checkpoint_layout import list_checkpoints


@pytest.fixture(scope="module")
def trained(tmp_path_factory) -> Path:
    """A finished 4-step run (checkpoints at steps 2 and 4)."""
    folder = tmp_path_factory.mktemp("trained")
    write_corpus(folder / "corpus", molecules(12) + crystals(6), shard_size=6)
    config = train_config(folder / "corpus", folder / "run")
    assert main(["train", "--config", str(config)]) == 0
    return folder / "run"


@pytest.fixture
def run(trained, tmp_path) -> Path:
    """A copy of the trained run, to damage."""
    return Path(shutil.copytree(trained, tmp_path / "run"))


def test_export_to_a_file_is_named(run, tmp_path, capsys):
    (tmp_path / "taken").write_text("x")
    assert_refused(
        atomfm(capsys, "export", run, "--out", tmp_path / "taken"), tmp_path / "taken", "is a file"
    )


def test_export_under_a_file_is_named(run, tmp_path, capsys):
    (tmp_path / "taken").write_text("x")
    outcome = atomfm(capsys, "export", run, "--out", tmp_path / "taken" / "export")
    assert_refused(outcome, f"under {tmp_path / 'taken'}")


def test_export_onto_a_full_disk_names_the_file_and_leaves_no_half_file(run, tmp_path, capsys, monkeypatch):
    import model.checkpoint_io

    def full(*args, **kwargs):
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    monkeypatch.setattr(model.checkpoint_io, "save_file", full)
    out = tmp_path / "export"
    assert_refused(atomfm(capsys, "export", run, "--out", out), out / "model.safetensors", "disk is full")
    assert list(out.iterdir()) == []


def test_export_of_a_folder_without_checkpoints_is_named(tmp_path, capsys):
    (tmp_path / "empty").mkdir()
    outcome = atomfm(capsys, "export", tmp_path / "empty", "--out", tmp_path / "export")
    assert_refused(outcome, tmp_path / "empty", "neither a checkpoint folder")


def test_export_best_of_a_run_that_never_validated_is_named(run, tmp_path, capsys):
    outcome = atomfm(capsys, "export", run, "--best", "--out", tmp_path / "export")
    assert_refused(outcome, run, "best.json")


def test_export_ema_of_a_run_without_ema_names_the_checkpoint(run, tmp_path, capsys):
    latest = list_checkpoints(run)[-1]
    (latest / "ema.pt").unlink()
    outcome = atomfm(capsys, "export", latest, "--ema", "--out", tmp_path / "export")
    assert_refused(outcome, latest, "EMA")
