"""The training config: YAML + dotted overrides, misspelled keys named with their origin, cross-field checks."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from data_pipeline.schema import BadInputError
from launch.cli import main as atomfm
from train.config import config_from_dict, load_config, save_resolved_config

DEMO_CONFIG = Path(__file__).resolve().parents[1] / "configs" / "pretrain_demo.yaml"


def write_config(tmp_path: Path, changes: dict) -> Path:
    raw = yaml.safe_load(DEMO_CONFIG.read_text())
    for dotted, value in changes.items():
        *parents, last = dotted.split(".")
        node = raw
        for part in parents:
            node = node[part]
        node[last] = value
    path = tmp_path / "run.yaml"
    path.write_text(yaml.safe_dump(raw))
    return path


def test_demo_config_loads_with_typed_sections():
    cfg = load_config(DEMO_CONFIG)
    assert cfg.engine == "deepspeed" and cfg.deepspeed.zero_stage == 2
    assert cfg.optim.lr == pytest.approx(1e-3) and isinstance(cfg.optim.lr, float)
    assert set(cfg.tasks) == {"dens", "denoise", "masked_atoms", "energy", "forces", "contrast"}
    assert cfg.model_config().backbone.channels == 32


def test_dotted_overrides_parse_values_as_yaml():
    cfg = load_config(
        DEMO_CONFIG,
        [
            "optim.lr=3e-4",
            "deepspeed.zero_stage=3",
            "run.max_steps=17",
            "tasks.denoise.sigma_max=0.2",
            "data.corpus=[a, b]",
            "logging.wandb=false",
        ],
    )
    assert cfg.optim.lr == pytest.approx(3e-4)
    assert cfg.deepspeed.zero_stage == 3 and cfg.run.max_steps == 17
    assert cfg.tasks["denoise"]["sigma_max"] == pytest.approx(0.2)
    assert cfg.data.corpus == ["a", "b"] and cfg.logging.wandb is False


def test_misspelled_key_in_file_names_key_file_and_suggestion(tmp_path):
    path = write_config(tmp_path, {})
    path.write_text(path.read_text().replace("warmup_steps:", "warmup_step:"))
    with pytest.raises(BadInputError) as err:
        load_config(path)
    message = str(err.value)
    assert "optim.warmup_step" in message and str(path) in message and "warmup_steps" in message


@pytest.mark.parametrize(
    "override, key",
    [
        ("optim.lrr=1e-3", "optim.lrr"),
        ("tasks.denoise.sigmaa=0.1", "tasks.denoise.sigmaa"),
        ("data.max_atom=100", "data.max_atom"),
        ("tasks.denoize.weight=1", "tasks.denoize"),
    ],
)
def test_misspelled_override_is_named_as_a_command_line_override(override, key):
    with pytest.raises(BadInputError) as err:
        load_config(DEMO_CONFIG, [override])
    assert key in str(err.value) and "command-line override" in str(err.value)


def test_wrong_types_and_values_are_rejected_with_their_key():
    for override, key in [
        ("optim.lr=fast", "optim.lr"),
        ("run.max_steps=0", "run.max_steps"),
        ("tasks.forces.error=l3", "tasks.forces.error"),
        ("engine=horovod", "engine"),
        ("tasks.denoise.fraction=1.5", "tasks.denoise.fraction"),
        ("data.cutoff=-1", "data.cutoff"),
        ("model.reference_ridge=aut", "model.reference_ridge"),
        ("model.reference_ridge=-1", "model.reference_ridge"),
        ("tasks.forces.domain_weights.crystal=2", "tasks.forces.domain_weights.crystal"),
    ]:
        with pytest.raises(BadInputError) as err:
            load_config(DEMO_CONFIG, [override])
        assert key in str(err.value), (override, str(err.value))


def test_zero3_refuses_conservative_force_training_at_start():
    with pytest.raises(BadInputError, match="ZeRO-3"):
        load_config(DEMO_CONFIG, ["deepspeed.zero_stage=3", "model.conservative_forces=true"])
    with pytest.raises(BadInputError, match="tasks.stress"):
        load_config(DEMO_CONFIG, ["deepspeed.zero_stage=3", "tasks.stress.weight=1"])
    assert load_config(DEMO_CONFIG, ["deepspeed.zero_stage=3"]).deepspeed.zero_stage == 3
    assert load_config(
        DEMO_CONFIG, ["deepspeed.zero_stage=2", "model.conservative_forces=true", "tasks.stress.weight=1"]
    ).model.conservative_forces


def test_resolved_config_round_trips(tmp_path):
    cfg = load_config(DEMO_CONFIG, ["optim.lr=2e-4", "tasks.stress.weight=3"])
    path = save_resolved_config(cfg, tmp_path / "config.yaml")
    again = config_from_dict(yaml.safe_load(path.read_text()), source=str(path))
    assert again == cfg


def test_cli_fails_at_start_naming_the_misspelled_key(tmp_path, capsys):
    path = write_config(tmp_path, {"run.out_dir": str(tmp_path / "run")})
    path.write_text(path.read_text().replace("grad_clip:", "grad_clipping:"))
    assert atomfm(["train", "--config", str(path), "--no-wandb"]) == 2
    err = capsys.readouterr().err
    assert "optim.grad_clipping" in err and str(path) in err and "grad_clip" in err
    assert not (tmp_path / "run").exists()
