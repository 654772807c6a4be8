"""The training configuration: one YAML file, validated into typed sections, with dotted command-line overrides.

A misspelled key is an error that names the key and where it came from (the YAML file or the command-line
override); every run writes its resolved configuration next to its checkpoints.
"""

from __future__ import annotations

import copy
import dataclasses
import math
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from data_pipeline.atomic_files import write_text_atomic
from data_pipeline.config_mapping import ConfigOrigin, from_mapping, parse_override
from data_pipeline.schema import DOMAINS, BadInputError
from data_pipeline.stream import StreamConfig
from model.atomfm import ModelConfig
from model.backbone import BackboneConfig
from train.finetune import FinetuneConfig
from train.tasks import ENERGY_DERIVATIVE_TASKS, build_tasks

ENGINES = ("deepspeed", "ddp")
VALIDATION_METRICS = ("energy_mae", "force_mae", "stress_mae")  # meV/atom, meV/Å, meV/Å³
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
    max_time_s: float | None = None  # wall-clock budget of this process: checkpoint and stop when it is spent
    stop_wait_s: float = (
        60.0  # after a stop signal, how long a batch may take to come before the run stops without one
    )


# Model fields the training config sets directly (``model.conservative_forces``), not through ``overrides``;
# their defaults are the model's own.
TRAINING_SWITCHES = ("conservative_forces", "activation_checkpointing")


@dataclass
class ValidationConfig:
    """every: steps between validations (0: never). metric: the key of the best checkpoint (lower is better):
    ``val/<domain|all|mean>/<energy_mae|force_mae|stress_mae>``; ``mean`` weighs every domain once,
    ``all`` pools their atoms (proteins dominate it). patience: validations without
    improvement before the run stops (0: never stop early). max_structures: score a fixed subset, evenly
    spaced over the split (so each domain keeps its share). domains: only these (a stage that does not
    train proteins need not spend minutes scoring them)."""

    every: int = 0
    split: str = "val"
    metric: str = "val/mean/force_mae"
    patience: int = 0
    max_structures: int | None = None
    max_atoms: int = 2048
    domains: list[str] | None = None  # score only these domains (None: every domain of the split)

    def problems(self) -> dict[str, str]:
        out = {}
        if self.every < 0:
            out["every"] = f"must be 0 (off) or a number of steps, got {self.every}"
        if self.patience < 0:
            out["patience"] = f"must not be negative, got {self.patience}"
        parts = self.metric.split("/")
        if (
            len(parts) != 3
            or parts[0] != "val"
            or parts[2] not in VALIDATION_METRICS
            or parts[1] not in ("all", "mean", *DOMAINS)
        ):
            out["metric"] = (
                f"expected val/<all|mean|{'|'.join(DOMAINS)}>/<{'|'.join(VALIDATION_METRICS)}>, got {self.metric!r}"
            )
        unknown = [d for d in self.domains or [] if d not in DOMAINS]
        if unknown:
            out["domains"] = f"unknown domains {unknown}; expected some of {', '.join(DOMAINS)}"
        return out


@dataclass
class ModelSection:
    """Which model: a named size plus overrides of its ``ModelConfig`` / ``BackboneConfig`` fields.

    conservative_forces: train forces (and stress) as −∂E/∂x, a double backward, instead of the direct head;
    the checkpoint's model config records it, so its calculator knows which forces it may serve.
    init_from: a fresh run (not a resume) starts from these weights; the reference energies of every level
    they know are kept, and only new levels are fitted.
    """

    size: str = "tiny"
    overrides: dict[str, Any] = field(default_factory=dict)
    conservative_forces: bool = ModelConfig.conservative_forces
    activation_checkpointing: bool = BackboneConfig.activation_checkpointing
    fit_reference_energies: bool = True  # per-element reference energies per level of theory, from the corpus
    # their fit's ridge towards each level's mean energy per atom: "auto" (chosen per level on the
    # validation split), or λ ≥ 0 (0: plain least squares); docs/training.md, "The config"
    reference_ridge: float | str = "auto"
    init_from: str | None = (
        None  # start from these weights (export, checkpoint or run folder); no optimiser state
    )


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
    """The process group, and how long a rank may wait in one phase of a step (a collective) before the run
    calls it a hang (``train.watchdog``): that rank reports itself, the step and the phase, and exits."""

    backend: str = "auto"  # auto: nccl with CUDA, gloo otherwise
    timeout_s: int = 1800  # the process group's own timeout (setup, rendezvous, collectives)
    collective_timeout_s: float | None = None  # one phase of a step; None: 0.9 × timeout_s (reports first)

    @property
    def watchdog_s(self) -> float:
        return self.collective_timeout_s if self.collective_timeout_s is not None else 0.9 * self.timeout_s


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
    # append every delivered batch's sample keys (with step and stream epoch) to sample_keys/rank_NNNNN.jsonl
    log_sample_keys: bool = False
    # fault injection: rank ``hang_rank`` sleeps ``hang_s`` seconds in step ``hang_at_step`` (tests the watchdog)
    hang_rank: int | None = None
    hang_at_step: int | None = None
    hang_s: float = 3600.0
    poison_gradients_at_step: int | None = None  # rank 0's gradients of this step become NaN (loss finite)


@dataclass(kw_only=True)
class TrainConfig:
    """The whole run. ``data`` is the stream's settings; ``tasks`` maps task names to their settings."""

    run: RunConfig = field(default_factory=RunConfig)
    data: StreamConfig = field(
        metadata={"missing": "no data section: set data.corpus to one or more corpus folders"}
    )
    validation: ValidationConfig = field(default_factory=ValidationConfig)
    finetune: FinetuneConfig = field(default_factory=FinetuneConfig)
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

        switches = {name: getattr(self.model, name) for name in TRAINING_SWITCHES}
        return model_config(self.model.size, **self.model.overrides, **switches)


def load_config(path: str | os.PathLike | None, overrides: list[str] | tuple[str, ...] = ()) -> TrainConfig:
    """Read a YAML config, apply ``key.sub=value`` overrides, validate every section; raise naming the bad key."""
    raw: dict[str, Any] = {}
    if path is not None:
        p = Path(path)
        if not p.is_file():
            raise BadInputError("config file not found", path=str(p))
        try:
            loaded = yaml.safe_load(read_config_text(p))
        except yaml.YAMLError as err:
            raise BadInputError(f"not valid YAML ({err})", path=str(p)) from None
        if loaded is not None and not isinstance(loaded, dict):
            raise BadInputError("top level must be a mapping of sections", path=str(p))
        raw = loaded or {}
    origin = ConfigOrigin(None if path is None else str(path))
    raw = apply_overrides(raw, overrides)
    origin.overridden = {o.split("=", 1)[0].strip() for o in overrides}
    cfg = from_mapping(TrainConfig, raw, origin=origin)
    check_config(cfg, origin)
    return cfg


def read_config_text(path: Path) -> str:
    """The text of a config file; a binary or non-UTF-8 file is a :class:`BadInputError` naming it."""
    try:
        data = path.read_bytes()
    except OSError as err:
        raise BadInputError(f"cannot read ({err.strerror})", path=str(path)) from None
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as err:
        raise BadInputError(
            f"not a text file (byte {err.start} is not UTF-8): is this the YAML config?", path=str(path)
        ) from None
    if "\0" in text:
        raise BadInputError(
            f"not a text file (a NUL byte at {text.index(chr(0))}): is this the YAML config?", path=str(path)
        )
    return text


def config_from_dict(raw: dict[str, Any], source: str = "config") -> TrainConfig:
    """Validate an already-parsed config (e.g. the resolved config saved in a checkpoint)."""
    origin = ConfigOrigin(source)
    cfg = from_mapping(TrainConfig, copy.deepcopy(raw), origin=origin)
    check_config(cfg, origin)
    return cfg


def apply_overrides(raw: dict[str, Any], overrides: list[str] | tuple[str, ...]) -> dict[str, Any]:
    """``["optim.lr=3e-4", "tasks.denoise.weight=2"]`` → a new nested dict; values are parsed as YAML."""
    out = copy.deepcopy(raw)
    for item in overrides:
        parts, value = parse_override(item)
        key = ".".join(parts)
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
        node[parts[-1]] = value
    return out


def check_config(cfg: TrainConfig, origin: ConfigOrigin) -> None:
    """Cross-field checks that a type alone cannot express."""
    for section, settings in (("validation", cfg.validation), ("finetune", cfg.finetune)):
        for name, problem in settings.problems().items():
            raise origin.error(f"{section}.{name}", problem)
    if cfg.finetune.active and not cfg.model.init_from:
        raise origin.error(
            "finetune",
            "fine-tuning options need weights to start from: set model.init_from (atomfm finetune --from)",
        )
    ridge = cfg.model.reference_ridge
    if not (ridge == "auto" or (isinstance(ridge, float) and ridge >= 0 and math.isfinite(ridge))):
        raise origin.error("model.reference_ridge", f'expected "auto" or a number ≥ 0, got {ridge!r}')
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
    timeout = cfg.distributed.collective_timeout_s
    if timeout is not None and not (math.isfinite(timeout) and timeout > 0):
        raise origin.error(
            "distributed.collective_timeout_s", f"must be a positive number of seconds or null, got {timeout}"
        )
    if cfg.distributed.timeout_s < 1:
        raise origin.error("distributed.timeout_s", f"must be at least 1 s, got {cfg.distributed.timeout_s}")
    if not (math.isfinite(cfg.run.stop_wait_s) and cfg.run.stop_wait_s > 0):
        raise origin.error(
            "run.stop_wait_s", f"must be a positive number of seconds, got {cfg.run.stop_wait_s}"
        )
    if cfg.run.max_time_s is not None and not cfg.run.max_time_s > 0:
        raise origin.error(
            "run.max_time_s", f"must be a positive number of seconds, got {cfg.run.max_time_s}"
        )
    if not (math.isfinite(cfg.optim.lr) and cfg.optim.lr > 0):
        raise origin.error("optim.lr", f"learning rate must be a positive finite number, got {cfg.optim.lr}")
    if len(cfg.optim.betas) != 2 or not all(0.0 <= b < 1.0 for b in cfg.optim.betas):
        raise origin.error("optim.betas", f"expected two numbers in [0, 1), got {cfg.optim.betas}")
    if not 0.0 <= cfg.optim.ema_decay < 1.0:
        raise origin.error("optim.ema_decay", f"must be in [0, 1), got {cfg.optim.ema_decay}")
    if not 0.0 <= cfg.optim.min_lr_ratio <= 1.0:
        raise origin.error("optim.min_lr_ratio", f"must be in [0, 1], got {cfg.optim.min_lr_ratio}")
    if cfg.optim.warmup_steps < 0 or cfg.optim.grad_clip < 0:
        raise origin.error("optim", "warmup_steps and grad_clip must not be negative")
    if not cfg.tasks:
        raise origin.error(
            "tasks", "no task enabled: add at least one task (e.g. denoise, forces) under tasks"
        )
    check_model_settings(cfg, origin)
    heads = cfg.model_config().heads
    for name in cfg.finetune.reinit_heads:
        if name not in heads:
            raise origin.error(
                "finetune.reinit_heads", f"the model has no head {name!r}; its heads: {', '.join(heads)}"
            )
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


def check_model_settings(cfg: TrainConfig, origin: ConfigOrigin) -> None:
    """The named size must exist and every override must be a model or backbone field."""
    for name in TRAINING_SWITCHES:
        if name in cfg.model.overrides:
            raise origin.error(f"model.overrides.{name}", f"set model.{name}, not model.overrides.{name}")
    try:
        cfg.model_config()
    except BadInputError as err:
        field_name = err.field or ""
        key = (
            f"model.{field_name}"
            if field_name in ("size", *TRAINING_SWITCHES)
            else f"model.overrides.{field_name}"
        )
        raise origin.error(key, err.reason) from None


def save_resolved_config(cfg: TrainConfig, path: str | os.PathLike) -> Path:
    """Write the resolved config as YAML, atomically (temporary name, then rename)."""
    return write_text_atomic(Path(path), yaml.safe_dump(cfg.to_dict(), sort_keys=False))
