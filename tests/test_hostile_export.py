"""Hostile input to `atomfm export`: an output that cannot be written, and a damaged or missing checkpoint, are
refused with exit code 2, no traceback and a message naming the path."""

from __future__ import annotations

import errno
import json
import os
import shutil
from pathlib import Path

import hostile
import pytest
from hostile import assert_refused, atomfm, train_config
from stream_corpus import crystals, molecules, write_corpus

from model.checkpoint_layout import list_checkpoints, write_checksums


@pytest.fixture(scope="module")
def trained(tmp_path_factory) -> Path:
    """A finished 4-step run (checkpoints at steps 2 and 4)."""
    folder = tmp_path_factory.mktemp("trained")
    write_corpus(folder / "corpus", molecules(12) + crystals(6), shard_size=6)
    config = train_config(folder / "corpus", folder / "run")
    assert hostile.run("train", "--config", config) == 0
    return folder / "run"


@pytest.fixture
def run(trained, tmp_path) -> Path:
    """A copy of the trained run (and its config), to damage."""
    shutil.copy(trained.parent / "run.yaml", tmp_path / "run.yaml")
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
    write_checksums(latest)  # as a run with optim.ema_decay 0 writes it
    outcome = atomfm(capsys, "export", latest, "--ema", "--out", tmp_path / "export")
    assert_refused(outcome, latest, "EMA")


def flip_byte(path: Path) -> None:
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0x10
    path.write_bytes(bytes(data))


def truncate(path: Path) -> None:
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])


CHECKPOINT_DAMAGE = {
    "optimiser_state_bit_flipped": ("ddp.pt", flip_byte, "ddp.pt fails its sha256"),
    "weights_truncated": ("ddp.pt", truncate, "ddp.pt has"),
    "rank_state_deleted": ("rank_00000.pt", Path.unlink, "rank_00000.pt is missing"),
    "ema_bit_flipped": ("ema.pt", flip_byte, "ema.pt fails"),
    "model_config_edited": (
        "model_config.json",
        lambda p: p.write_text(p.read_text().replace('"long_range": true', '"long_range": false')),
        "model_config.json has",
    ),
    "checksums_garbled": ("checksums.json", lambda p: p.write_text("{"), "checksums.json is unreadable"),
}


@pytest.mark.parametrize("case", sorted(CHECKPOINT_DAMAGE))
def test_export_refuses_a_damaged_checkpoint_naming_the_file(case, run, tmp_path, capsys):
    name, damage, problem = CHECKPOINT_DAMAGE[case]
    latest = list_checkpoints(run)[-1]
    damage(latest / name)
    for target in (run, latest):
        outcome = atomfm(capsys, "export", target, "--out", tmp_path / "export")
        assert_refused(outcome, latest, problem)
    assert not (tmp_path / "export" / "model.safetensors").exists()


def test_export_best_refuses_a_damaged_best_checkpoint(run, tmp_path, capsys):
    first = list_checkpoints(run)[0]
    (run / "checkpoints" / "best.json").write_text(json.dumps({"checkpoint": first.name}))
    flip_byte(first / "ddp.pt")
    outcome = atomfm(capsys, "export", run, "--best", "--out", tmp_path / "export")
    assert_refused(outcome, first, "ddp.pt fails")


def test_an_export_written_before_checksums_still_loads(run, tmp_path, capsys):
    from model.calculator import AtomFMCalculator

    assert atomfm(capsys, "export", run, "--out", tmp_path / "export").code == 0
    (tmp_path / "export" / "checksums.json").unlink()
    AtomFMCalculator.from_checkpoint(tmp_path / "export")


def test_the_calculator_refuses_an_export_whose_weights_changed(run, tmp_path, capsys):
    from data_pipeline.schema import BadInputError
    from model.calculator import AtomFMCalculator

    assert atomfm(capsys, "export", run, "--out", tmp_path / "export").code == 0
    flip_byte(tmp_path / "export" / "model.safetensors")
    with pytest.raises(BadInputError, match="model.safetensors fails its sha256"):
        AtomFMCalculator.from_checkpoint(tmp_path / "export")


def resume(run: Path, capsys, *args: object):
    """Continue the copied run ``run`` with its config."""
    return atomfm(capsys, "train", "--config", run.parent / "run.yaml", f"run.out_dir={run}", *args)


def test_resume_skips_a_damaged_latest_checkpoint_for_the_newest_intact_one(run, capsys):
    first, latest = list_checkpoints(run)
    flip_byte(latest / "ddp.pt")
    outcome = resume(run, capsys, "run.max_steps=6")
    assert outcome.code == 0, outcome.err
    assert f"skipped damaged checkpoint {latest.name} (ddp.pt fails its sha256" in outcome.out
    assert f"resumed from {first}" in outcome.out
    assert (run / "checkpoints" / f"damaged-{latest.name}").is_dir()
    assert [c.name for c in list_checkpoints(run)][-1] == "step_00000006"


def test_resume_refuses_when_every_checkpoint_is_damaged(run, capsys):
    for checkpoint in list_checkpoints(run):
        truncate(checkpoint / "rank_00000.pt")
    assert_refused(resume(run, capsys, "run.max_steps=6"), "every checkpoint is damaged")


def test_resume_from_a_named_damaged_checkpoint_names_the_file(run, capsys):
    latest = list_checkpoints(run)[-1]
    (latest / "ema.pt").unlink()
    assert_refused(resume(run, capsys, "--resume", latest), latest, "ema.pt is missing")


def test_a_checkpoint_records_the_elements_and_shortest_distance_it_was_trained_on(trained):
    from data_pipeline.manifest import read_manifest
    from data_pipeline.readers.elements import atomic_number

    config = json.loads((list_checkpoints(trained)[-1] / "model_config.json").read_text())
    corpus = read_manifest(trained.parent / "corpus")
    elements = {atomic_number(e) for shard in corpus.shards for e in shard.elements}
    assert set(config["coverage"]["elements"]) <= elements and len(config["coverage"]["elements"]) >= 3
    assert 0.5 < config["coverage"]["shortest_distance"] < 2.0
