"""The shared seams: one config builder for every stage, the stream's resume fingerprint, atomic writes, the
batch type, and the run-setup pieces fine-tuning reuses (reference energies kept for known levels)."""

from __future__ import annotations

import dataclasses
import json
import os
from pathlib import Path

import pytest
import torch
from stream_corpus import crystals, molecules, write_corpus

from data_pipeline.atomic_files import atomic_path, is_temporary_of, write_text_atomic
from data_pipeline.batch import AtomBatch
from data_pipeline.config_mapping import from_mapping
from data_pipeline.schema import BadInputError
from data_pipeline.stream import SETUP_DERIVED, StreamConfig, StructureStream
from data_pipeline.vocab import level_index
from model.atomfm import AtomFM, ModelConfig, model_config
from model.backbone import BackboneConfig
from model.checkpoint_io import read_config
from train.config import TrainConfig, load_config
from train.engine.distributed import DistContext
from train.run_setup import fit_reference_energies, known_levels

DEMO_CONFIG = Path(__file__).resolve().parents[1] / "configs" / "pretrain_demo.yaml"
ONE_PROCESS = DistContext(rank=0, world_size=1, local_rank=0, device=torch.device("cpu"), backend="gloo")


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    folder = tmp_path_factory.mktemp("corpus")
    write_corpus(folder, molecules(20) + crystals(12), shard_size=8)
    return folder


@pytest.mark.parametrize(
    "cls, raw, key",
    [
        (StreamConfig, {"corpus": "c", "max_atom": 5}, "max_atom"),
        (BackboneConfig, {"chanels": 8}, "chanels"),
        (ModelConfig, {"backbone": {"lmax": "two"}}, "backbone.lmax"),
        (ModelConfig, {"reference_energies": {"pbe": {"Si": "low"}}}, "reference_energies.pbe.Si"),
        (TrainConfig, {"data": {"corpus": "c"}, "optim": {"lr": "fast"}}, "optim.lr"),
    ],
)
def test_every_stage_config_names_the_file_and_dotted_key(cls, raw, key):
    with pytest.raises(BadInputError) as err:
        from_mapping(cls, raw, source="run.yaml")
    assert err.value.path == "run.yaml" and err.value.field == key, str(err.value)


def test_range_checks_inside_a_nested_config_reach_the_user_under_the_dotted_key():
    with pytest.raises(BadInputError) as err:
        from_mapping(ModelConfig, {"backbone": {"lmax": 9}}, source="model_config.json")
    assert err.value.field == "backbone.lmax" and "model_config.json" in str(err.value)


def test_a_missing_required_key_says_what_to_set():
    with pytest.raises(BadInputError, match="corpus folders") as err:
        from_mapping(TrainConfig, {"data": {}}, source="run.yaml")
    assert err.value.field == "data.corpus"


def test_damaged_model_config_names_the_file_and_key(tmp_path):
    path = tmp_path / "model_config.json"
    path.write_text(json.dumps({**model_config("tiny").to_dict(), "long_rang": True}))
    with pytest.raises(BadInputError) as err:
        read_config(path)
    assert err.value.path == str(path) and err.value.field == "long_rang" and "long_range" in str(err.value)


def test_train_config_parses_the_stream_section_once_into_its_type():
    cfg = load_config(DEMO_CONFIG)
    assert isinstance(cfg.data, StreamConfig) and cfg.data.max_atoms == 256


def test_conservative_forces_has_one_default_and_one_place(tmp_path):
    path = tmp_path / "run.yaml"
    path.write_text(DEMO_CONFIG.read_text().replace("  conservative_forces: false", ""))
    assert load_config(path).model_config().conservative_forces is ModelConfig().conservative_forces
    with pytest.raises(BadInputError, match="set model.conservative_forces"):
        load_config(DEMO_CONFIG, ["model.overrides.conservative_forces=true"])


def test_every_stream_setting_enters_the_resume_fingerprint(corpus):
    cfg = StreamConfig(corpus=[str(corpus)], num_workers=0, cutoff=5.0)
    setup = StructureStream(cfg).state_dict()["setup"]
    for f in dataclasses.fields(StreamConfig):
        assert f.name in setup or SETUP_DERIVED.get(f.name) in setup, f.name


def test_a_changed_stream_setting_refuses_an_exact_resume(corpus):
    cfg = StreamConfig(corpus=[str(corpus)], num_workers=0, cutoff=5.0, shuffle_buffer=4)
    state = StructureStream(cfg).state_dict()
    with pytest.raises(ValueError, match="shuffle_buffer"):
        StructureStream(dataclasses.replace(cfg, shuffle_buffer=8)).load_state_dict(state)


def test_stream_batches_are_atom_batches(corpus):
    batch = next(iter(StructureStream(StreamConfig(corpus=[str(corpus)], num_workers=0, cutoff=5.0))))
    assert isinstance(batch, AtomBatch)
    del batch.cell_offsets
    assert not isinstance(batch, AtomBatch)


def test_atomic_write_leaves_the_old_file_when_the_writer_fails(tmp_path):
    target = write_text_atomic(tmp_path / "manifest.json", "old")
    with pytest.raises(RuntimeError), atomic_path(target) as tmp:
        tmp.write_text("half")
        raise RuntimeError("disk full")
    assert target.read_text() == "old" and os.listdir(tmp_path) == ["manifest.json"]
    assert is_temporary_of(".manifest.json.abc123.tmp", "manifest.json")


def test_reference_fit_keeps_the_tables_a_pretrained_model_already_knows(corpus):
    data = StreamConfig(corpus=[str(corpus)], num_workers=0, cutoff=5.0)
    fresh = AtomFM(model_config("tiny", num_layers=1))
    fit_reference_energies(fresh, data, ONE_PROCESS, keep_known_levels=False)
    emt = level_index("emt")
    assert known_levels(fresh).tolist() == [i == emt for i in range(len(known_levels(fresh)))]

    pretrained = AtomFM(model_config("tiny", num_layers=1))
    table = torch.zeros_like(pretrained.reference_energies.energies)
    table[emt, 29] = -3.5  # a table this model brought for EMT (Cu), and one for another level
    table[level_index("gfn2-xtb"), 1] = -10.7
    pretrained.reference_energies.set_table(table)
    fit_reference_energies(pretrained, data, ONE_PROCESS, keep_known_levels=True)
    torch.testing.assert_close(pretrained.reference_energies.energies, table)

    refit = AtomFM(model_config("tiny", num_layers=1))
    refit.reference_energies.set_table(table)
    fit_reference_energies(refit, data, ONE_PROCESS, keep_known_levels=False)
    torch.testing.assert_close(refit.reference_energies.energies[emt], fresh.reference_energies.energies[emt])
