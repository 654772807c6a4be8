"""Fine-tuning options: which weights train, and how fast, when a run starts from a checkpoint's weights.

A fine-tuning run is a training run with ``model.init_from`` (``atomfm finetune --from CKPT`` sets it) and a
``finetune`` section. Every parameter gets a learning-rate scale and a step before which it is frozen;
the schedule (``train/schedule.py``) multiplies each optimiser group's rate by its scale, and by 0 while
it is frozen, so freezing, unfreezing after N steps and layer-wise decay are one mechanism that works the
same under DeepSpeed (ZeRO 0–3) and DDP. A frozen weight gets no update and no weight decay (AdamW's decay
is scaled by the rate). With LoRA adapters (``model.overrides.lora.rank``) the adapted base weights stay
frozen and the adapters train. ``replay`` mixes a share of the pretraining corpus into every batch
(``train/replay.py``).
"""

from __future__ import annotations

from dataclasses import dataclass, field

from torch import nn

from model.lora import is_adapted_base

NEVER = 2**62  # "frozen until" for weights that never train (LoRA base weights)


@dataclass
class ReplayConfig:
    """corpus: pretraining corpus folders replayed beside the fine-tuning data (empty: no replay).
    fraction: the expected share of each batch's structures drawn from them (the stream mixes them per
    structure, as it mixes domains). pseudo_label: replace the replayed structures' energies and forces by
    the initial model's predictions (MACE's pseudo-label replay), so replay keeps the model near what it was
    rather than near the labels. split: the replayed split. domain_weights: the replayed domains' mix (None:
    the stream's temperature over their sizes)."""

    corpus: list[str] = field(default_factory=list)
    fraction: float = 0.0
    pseudo_label: bool = False
    split: str = "train"
    domain_weights: dict[str, float] | None = None

    def __post_init__(self) -> None:
        if isinstance(self.corpus, str):
            self.corpus = [self.corpus]

    def problems(self) -> dict[str, str]:
        out = {}
        if not 0.0 <= self.fraction < 1.0:
            out["fraction"] = f"must lie in [0, 1), got {self.fraction}"
        if self.fraction > 0 and not self.corpus:
            out["corpus"] = "replay.fraction is set: name the pretraining corpus folders to replay"
        if self.corpus and self.fraction == 0:
            out["fraction"] = "replay.corpus is set: give the share of each batch to replay (e.g. 0.2)"
        return out

    @property
    def active(self) -> bool:
        return bool(self.corpus) and self.fraction > 0


@dataclass
class FinetuneConfig:
    """freeze_backbone: freeze every backbone weight (heads train). freeze_layers: freeze the embeddings and
    the first N transformer blocks. unfreeze_after: steps after which frozen weights train (null: never).
    layer_lr_decay: learning rate × decay^(depth from the top): heads and the final norm 1, the last block
    decay, ..., the embeddings decay^(blocks + 1) (1: off). reinit_heads: heads re-initialised instead of
    loaded (a new target for an existing head). replay: see :class:`ReplayConfig`."""

    freeze_backbone: bool = False
    freeze_layers: int = 0
    unfreeze_after: int | None = None
    layer_lr_decay: float = 1.0
    reinit_heads: list[str] = field(default_factory=list)
    replay: ReplayConfig = field(default_factory=ReplayConfig)

    def problems(self) -> dict[str, str]:
        out = {f"replay.{name}": problem for name, problem in self.replay.problems().items()}
        if self.freeze_layers < 0:
            out["freeze_layers"] = f"must be >= 0, got {self.freeze_layers}"
        if not 0.0 < self.layer_lr_decay <= 1.0:
            out["layer_lr_decay"] = f"must lie in (0, 1], got {self.layer_lr_decay}"
        if self.unfreeze_after is not None and self.unfreeze_after < 0:
            out["unfreeze_after"] = f"must be >= 0, got {self.unfreeze_after}"
        return out

    @property
    def active(self) -> bool:
        return self != FinetuneConfig()


def layer_of(name: str, num_blocks: int) -> int:
    """Depth of a parameter from the bottom: 0 the embeddings, k + 1 block k, num_blocks + 1 the top."""
    if name.startswith("backbone.blocks."):
        return int(name.split(".")[2]) + 1
    if name.startswith("backbone.") and not name.startswith("backbone.final_norm"):
        return 0
    return num_blocks + 1


def learning_plan(model: nn.Module, cfg: FinetuneConfig, num_blocks: int) -> dict[str, tuple[float, int]]:
    """Parameter name → (learning-rate scale, first step it trains at)."""
    plan = {}
    thaw = NEVER if cfg.unfreeze_after is None else cfg.unfreeze_after
    for name, _ in model.named_parameters():
        depth = layer_of(name, num_blocks)
        scale = cfg.layer_lr_decay ** (num_blocks + 1 - depth)
        frozen = name.startswith("backbone.") and (
            cfg.freeze_backbone or (cfg.freeze_layers > 0 and depth <= cfg.freeze_layers)
        )
        start = thaw if frozen else 0
        if is_adapted_base(name):
            start = NEVER
        plan[name] = (scale, start)
    return plan


def optimizer_plan(model: nn.Module, cfg: FinetuneConfig) -> dict[str, tuple[float, int]] | None:
    """The plan the engines build their optimiser groups from; None for an ordinary run (two groups)."""
    if not cfg.active and not any(is_adapted_base(name) for name, _ in model.named_parameters()):
        return None
    return learning_plan(model, cfg, len(model.backbone.blocks))


def reinit_heads(model: nn.Module, names: list[str]) -> None:
    """Fresh parameters for each named head (the model's own initialisation)."""
    for name in names:
        if name not in model.heads:
            raise KeyError(name)
        for module in model.heads[name].modules():
            if hasattr(module, "reset_parameters"):
                module.reset_parameters()
