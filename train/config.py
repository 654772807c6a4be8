"""The training configuration: one YAML file, validated into typed sections, with dotted command-line overrides.

A misspelled key is an error that names the key and where it came from (the YAML file or the command-line
override); every run writes its resolved configuration next to its checkpoints.
"""

from __future__ import annotations

import copy
import dataclasses
import difflib
import os
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from data_pipeline.schema import BadInputError
from train.atomic_files import write_text_atomic

ENGINES = ("deepspeed", "ddp")
PRECISIONS = ("fp32", "bf16")


@dataclass
class RunConfig:
    """Where the run lives, how long it goes, how often it reports and saves."""

    name: str = "atomfm"
    out_dir: str = "runs/atomfm"
    seed: int = 0
    max_steps: int = 1000
    log_every: int = 10
    checkpoint_every: int = 500
    keep_last: int = 3
    resume: str = "auto"  # auto (latest checkpoint of out_dir, if any) | never | a checkpoint folder
    max_nonfinite_in_row: int = 5
    progress_bar: bool = True


@dataclass
class ModelSection:
    """Which model: a named size plus overrides of its ``ModelConfig`` fields."""

    size: str = "tiny"
    overrides: dict[str, Any] = field(default_factory=dict)
    conservative_forces: bool = False  # forces (and stress) as −∂E/∂x: a double backward in training
    activation_checkpointing: bool = False
    fit_reference_energies: bool = True  # per-element reference energies per level of theory, from the corpus


@dataclass
class OptimConfig:
    """AdamW with linear warm-up and cosine decay, gradient clipping, accumulation and an EMA of the weights."""

    lr: float = 3e-4
    weight_decay: float = 0.01
    betas: list[float] = field(default_factory=lambda: [0.9, 0.999])
    eps: float = 1e-8
    warmup_steps: int = 100
    min_lr_ratio: float = 0.01  # the cosine ends at lr * min_lr_ratio
    grad_clip: float = 1.0  # max global gradient norm; 0 disables clipping
    grad_accum_steps: int = 1
    ema_decay: float = 0.999  # 0 disables the EMA


@dataclass
class DeepSpeedSection:
    """DeepSpeed-only settings; ``config`` holds raw DeepSpeed JSON keys merged over the generated ones."""

    zero_stage: int = 2
    config: dict[str, Any] = field(default_factory=dict)


@dataclass
class DistributedConfig:
    backend: str = "auto"  # auto: nccl with CUDA, gloo otherwise
    timeout_s: int = 1800


@dataclass
class LoggingConfig:
    """wandb (offline unless logged in; ``WANDB_MODE`` wins) and a metrics.jsonl in the run folder."""

    wandb: bool = True
    project: str = "atomfm"
    entity: str | None = None
    tags: list[str] = field(default_factory=list)


@dataclass
class DebugConfig:
    """Switches for testing the trainer itself."""

    poison_loss_at_step: int | None = None  # make rank 0's loss NaN at this step (tests the non-finite skip)
    dump_gradients_at_step: int | None = None  # write the reduced gradients of this step to the run folder


@dataclass
class TrainConfig:
    """The whole run. ``data`` holds ``StreamConfig`` fields; ``tasks`` maps task names to their settings."""

    run: RunConfig = field(default_factory=RunConfig)
    data: dict[str, Any] = field(default_factory=dict)
    model: ModelSection = field(default_factory=ModelSection)
    tasks: dict[str, dict[str, Any]] = field(default_factory=dict)
    optim: OptimConfig = field(default_factory=OptimConfig)
    engine: str = "deepspeed"
    precision: str = "fp32"
    deepspeed: DeepSpeedSection = field(default_factory=DeepSpeedSection)
    distributed: DistributedConfig = field(default_factory=DistributedConfig)
    logging: LoggingConfig = field(default_factory=LoggingConfig)
    debug: DebugConfig = field(default_factory=DebugConfig)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @property
    def run_dir(self) -> Path:
        return Path(self.run.out_dir)

    def model_config(self) -> Any:
        """The ``model.atomfm.ModelConfig`` of this run: the named size, overrides and training switches."""
        from model.atomfm import model_config

        overrides = dict(self.model.overrides)
        overrides.setdefault("activation_checkpointing", self.model.activation_checkpointing)
        overrides.setdefault("conservative_forces", self.model.conservative_forces)
        return model_config(self.model.size, **overrides)


class ConfigOrigin:
    """Says where a dotted key came from: the YAML file or a command-line override."""

    def __init__(self, path: str | None, overridden: set[str] | None = None) -> None:
        self.path = path
        self.overridden = overridden or set()

    def describe(self, key: str) -> str:
        for k in self.overridden:
            if key == k or key.startswith(k + ".") or k.startswith(key + "."):
                return "command-line override"
        return str(self.path) if self.path else "config"

    def error(self, key: str, message: str) -> BadInputError:
        return BadInputError(message, path=self.describe(key), field=key)


def load_config(path: str | os.PathLike | None, overrides: list[str] | tuple[str, ...] = ()) -> TrainConfig:
    """Read a YAML config, apply ``key.sub=value`` overrides, validate every section; raise naming the bad key."""
    raw: dict[str, Any] = {}
    if path is not None:
        p = Path(path)
        if not p.is_file():
            raise BadInputError("config file not found", path=str(p))
        try:
            loaded = yaml.safe_load(p.read_text())
        except yaml.YAMLError as err:
            raise BadInputError(f"not valid YAML ({err})", path=str(p)) from None
        if loaded is not None and not isinstance(loaded, dict):
            raise BadInputError("top level must be a mapping of sections", path=str(p))
        raw = loaded or {}
    origin = ConfigOrigin(None if path is None else str(path))
    build_section(TrainConfig, raw, "", origin)
    raw = apply_overrides(raw, overrides)
    origin.overridden = {o.split("=", 1)[0].strip() for o in overrides}
    cfg = build_section(TrainConfig, raw, "", origin)
    check_config(cfg, origin)
    return cfg


def config_from_dict(raw: dict[str, Any], source: str = "config") -> TrainConfig:
    """Validate an already-parsed config (e.g. the resolved config saved in a checkpoint)."""
    origin = ConfigOrigin(source)
    cfg = build_section(TrainConfig, copy.deepcopy(raw), "", origin)
    check_config(cfg, origin)
    return cfg


def apply_overrides(raw: dict[str, Any], overrides: list[str] | tuple[str, ...]) -> dict[str, Any]:
    """``["optim.lr=3e-4", "tasks.denoise.weight=2"]`` → a new nested dict; values are parsed as YAML."""
    out = copy.deepcopy(raw)
    for item in overrides:
        if "=" not in item:
            raise BadInputError(f"override {item!r} is not of the form key.subkey=value", path="command line")
        key, value = (s.strip() for s in item.split("=", 1))
        parts = key.split(".")
        if not key or any(not p for p in parts):
            raise BadInputError(f"override {item!r} has an empty key part", path="command line")
        node = out
        for depth, part in enumerate(parts[:-1]):
            child = node.get(part)
            if child is None:
                child = node[part] = {}
            if not isinstance(child, dict):
                raise BadInputError(
                    f"cannot set {key}: {'.'.join(parts[: depth + 1])} is not a section",
                    path="command line",
                    field=key,
                )
            node = child
        node[parts[-1]] = yaml.safe_load(value) if value else None
    return out


def build_section(cls: type, raw: Any, prefix: str, origin: ConfigOrigin) -> Any:
    """Build dataclass ``cls`` from a mapping, rejecting unknown keys (with a suggestion) and wrong types."""
    where = prefix or "top level"
    if raw is None:
        raw = {}
    if not isinstance(raw, dict):
        raise origin.error(prefix, f"section {where} must be a mapping, got {type(raw).__name__}")
    hints = typing.get_type_hints(cls)
    names = [f.name for f in dataclasses.fields(cls)]
    for key in raw:
        if key not in names:
            dotted = f"{prefix}.{key}" if prefix else str(key)
            raise origin.error(dotted, f"unknown key '{dotted}'{did_you_mean(str(key), names)}")
    values = {}
    for name in names:
        if name in raw:
            dotted = f"{prefix}.{name}" if prefix else name
            values[name] = coerce(hints[name], raw[name], dotted, origin)
    return cls(**values)


def coerce(tp: Any, value: Any, key: str, origin: ConfigOrigin) -> Any:
    """Check ``value`` against the annotation ``tp``; accept ints for floats and YAML's '3e-4' strings."""
    if dataclasses.is_dataclass(tp):
        return build_section(tp, value, key, origin)
    args = typing.get_args(tp)
    if typing.get_origin(tp) in (typing.Union, types.UnionType):
        if value is None and type(None) in args:
            return None
        (inner,) = [a for a in args if a is not type(None)]
        return coerce(inner, value, key, origin)
    if tp is Any:
        return value
    base = typing.get_origin(tp) or tp
    if base is bool:
        if isinstance(value, bool):
            return value
    elif base is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
    elif base is float:
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return float(value)
        if isinstance(value, str):
            try:
                return float(value)
            except ValueError:
                pass
    elif base is str:
        if isinstance(value, str):
            return value
    elif base is list:
        if isinstance(value, (list, tuple)):
            return (
                [coerce(args[0], v, f"{key}[{i}]", origin) for i, v in enumerate(value)]
                if args
                else list(value)
            )
    elif base is dict:
        if isinstance(value, dict):
            return (
                {str(k): coerce(args[1], v, f"{key}.{k}", origin) for k, v in value.items()}
                if args
                else value
            )
    raise origin.error(key, f"expected {type_name(tp)}, got {value!r}")


def check_config(cfg: TrainConfig, origin: ConfigOrigin) -> None:
    """Cross-field checks that a type alone cannot express."""
    if cfg.engine not in ENGINES:
        raise origin.error("engine", f"unknown engine {cfg.engine!r}; expected one of {', '.join(ENGINES)}")
    if cfg.precision not in PRECISIONS:
        raise origin.error(
            "precision", f"unknown precision {cfg.precision!r}; expected one of {', '.join(PRECISIONS)}"
        )
    if cfg.deepspeed.zero_stage not in (0, 1, 2, 3):
        raise origin.error(
            "deepspeed.zero_stage", f"ZeRO stage must be 0, 1, 2 or 3, got {cfg.deepspeed.zero_stage}"
        )
    positive = {
        "run.max_steps": cfg.run.max_steps,
        "run.log_every": cfg.run.log_every,
        "run.checkpoint_every": cfg.run.checkpoint_every,
        "run.keep_last": cfg.run.keep_last,
        "run.max_nonfinite_in_row": cfg.run.max_nonfinite_in_row,
        "optim.grad_accum_steps": cfg.optim.grad_accum_steps,
    }
    for key, value in positive.items():
        if value < 1:
            raise origin.error(key, f"must be at least 1, got {value}")
    if cfg.optim.lr <= 0:
        raise origin.error("optim.lr", f"learning rate must be positive, got {cfg.optim.lr}")
    if len(cfg.optim.betas) != 2 or not all(0.0 <= b < 1.0 for b in cfg.optim.betas):
        raise origin.error("optim.betas", f"expected two numbers in [0, 1), got {cfg.optim.betas}")
    if not 0.0 <= cfg.optim.ema_decay < 1.0:
        raise origin.error("optim.ema_decay", f"must be in [0, 1), got {cfg.optim.ema_decay}")
    if not 0.0 <= cfg.optim.min_lr_ratio <= 1.0:
        raise origin.error("optim.min_lr_ratio", f"must be in [0, 1], got {cfg.optim.min_lr_ratio}")
    if cfg.optim.warmup_steps < 0 or cfg.optim.grad_clip < 0:
        raise origin.error("optim", "warmup_steps and grad_clip must not be negative")
    if not cfg.data.get("corpus"):
        raise origin.error("data.corpus", "no corpus given: set data.corpus to one or more corpus folders")
    if not cfg.tasks:
        raise origin.error(
            "tasks", "no task enabled: add at least one task (e.g. denoise, forces) under tasks"
        )
    from train.tasks import ENERGY_DERIVATIVE_TASKS, build_tasks

    check_data_settings(cfg.data, origin)
    check_model_settings(cfg, origin)
    enabled = [task.name for task in build_tasks(cfg.tasks, origin)]
    if not enabled:
        raise origin.error("tasks", "every task has weight 0: enable at least one")
    if cfg.engine == "deepspeed" and cfg.deepspeed.zero_stage == 3:
        if cfg.model.conservative_forces and "forces" in enabled:
            raise origin.error(
                "model.conservative_forces",
                "conservative forces (−∂E/∂x, a double backward) do not work under ZeRO-3: it releases the "
                "partitioned parameters before the second backward. Use deepspeed.zero_stage: 2 (with "
                "model.activation_checkpointing: true to save memory), or train direct forces under ZeRO-3 "
                "(model.conservative_forces: false)",
            )
        for name in ENERGY_DERIVATIVE_TASKS:
            if name in enabled:
                raise origin.error(
                    f"tasks.{name}",
                    f"the {name} task trains a derivative of the energy (a double backward), which does not work "
                    f"under ZeRO-3; use deepspeed.zero_stage: 2 or turn it off (tasks.{name}.weight: 0)",
                )


def check_data_settings(data: dict[str, Any], origin: ConfigOrigin) -> None:
    """The ``data`` section must be a valid ``StreamConfig`` (its keys are checked by name first)."""
    from data_pipeline.stream import StreamConfig

    names = [f.name for f in dataclasses.fields(StreamConfig)]
    for key in data:
        if key not in names:
            raise origin.error(f"data.{key}", f"unknown key 'data.{key}'{did_you_mean(str(key), names)}")
    try:
        StreamConfig.from_dict(data)
    except BadInputError as err:
        raise origin.error(f"data.{err.field}", err.reason) from None


def check_model_settings(cfg: TrainConfig, origin: ConfigOrigin) -> None:
    """The named size must exist and every override must be a model or backbone field."""
    try:
        cfg.model_config()
    except (TypeError, ValueError) as err:
        raise origin.error("model.overrides" if cfg.model.overrides else "model.size", str(err)) from None


def did_you_mean(key: str, candidates: list[str]) -> str:
    close = difflib.get_close_matches(key, candidates, n=1)
    return f" (did you mean '{close[0]}'?)" if close else f"; known keys: {', '.join(candidates)}"


def type_name(tp: Any) -> str:
    return getattr(tp, "__name__", None) or str(tp).replace("typing.", "")


def save_resolved_config(cfg: TrainConfig, path: str | os.PathLike) -> Path:
    """Write the resolved config as YAML, atomically (temporary name, then rename)."""
    return write_text_atomic(Path(path), yaml.safe_dump(cfg.to_dict(), sort_keys=False))
