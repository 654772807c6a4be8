"""Low-rank adapters (LoRA) on the backbone's linear maps, merged into plain weights for export.

``apply_lora(model, rank, alpha, targets)`` reparametrises each targeted weight W as W + (alpha / rank) B A
with A random and B zero (so the adapted model starts as the pretrained one); fine-tuning trains A and B and
leaves W frozen. The parity masks of ``model.parity`` act on the sum, so adapters keep the model's symmetry.
``merge_lora`` folds the adapters into W and removes them: the result is a plain :class:`AtomFM` that
:func:`model.checkpoint_io.load_model` loads like any other.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import torch
from torch import Tensor, nn
from torch.nn.utils import parametrize

from data_pipeline.schema import BadInputError

# Backbone weights by part: the attention's SO(2) convolutions and output map, the feed-forward maps.
LORA_TARGETS = {
    "attention": ("attention.message.linear_m", "attention.value.linear_m", "attention.output"),
    "feed_forward": ("feed_forward.up", "feed_forward.down"),
}


@dataclass
class LoRAConfig:
    """rank: adapter rank (0: no adapters); alpha: scale (the update is alpha/rank · B A); targets: parts
    of every backbone block (keys of :data:`LORA_TARGETS`)."""

    rank: int = 0
    alpha: float = 16.0
    targets: list[str] = field(default_factory=lambda: ["attention", "feed_forward"])

    def __post_init__(self) -> None:
        if self.rank < 0:
            raise BadInputError(f"rank must be >= 0, got {self.rank}", field="rank")
        for target in self.targets:
            if target not in LORA_TARGETS:
                raise BadInputError(
                    f"unknown target {target!r}; expected some of {', '.join(LORA_TARGETS)}", field="targets"
                )


class LowRankUpdate(nn.Module):
    """W ↦ W + scale · B A for a weight [out, in] (nn.Linear) or [degrees, in, out] (SO3Linear)."""

    def __init__(self, weight: Tensor, rank: int, alpha: float, layout: str) -> None:
        super().__init__()
        self.layout, self.scale = layout, alpha / rank
        if layout == "linear":
            out_features, in_features = weight.shape
            self.a = nn.Parameter(torch.randn(rank, in_features, dtype=weight.dtype) / math.sqrt(in_features))
            self.b = nn.Parameter(torch.zeros(out_features, rank, dtype=weight.dtype))
        else:
            degrees, in_features, out_features = weight.shape
            self.a = nn.Parameter(
                torch.randn(degrees, in_features, rank, dtype=weight.dtype) / math.sqrt(in_features)
            )
            self.b = nn.Parameter(torch.zeros(degrees, rank, out_features, dtype=weight.dtype))

    def forward(self, weight: Tensor) -> Tensor:
        update = self.b @ self.a if self.layout == "linear" else self.a @ self.b
        return weight + self.scale * update


def lora_modules(model: nn.Module, targets: list[str]) -> list[tuple[str, nn.Module]]:
    """(name, module) of every weight-holding module the targets name, in every backbone block."""
    prefixes = tuple(p for t in targets for p in LORA_TARGETS[t])
    found = []
    for name, module in model.named_modules():
        inside = name.split("backbone.blocks.", 1)[-1].split(".", 1)[-1] if "backbone.blocks." in name else ""
        if inside.startswith(prefixes) and isinstance(getattr(module, "weight", None), nn.Parameter):
            found.append((name, module))
    return found


def apply_lora(model: nn.Module, cfg: LoRAConfig) -> int:
    """Add adapters to the targeted weights; returns the number of adapted weights."""
    if cfg.rank == 0:
        return 0
    modules = lora_modules(model, cfg.targets)
    for _, module in modules:
        layout = "linear" if isinstance(module, nn.Linear) else "degree"
        parametrize.register_parametrization(
            module, "weight", LowRankUpdate(module.weight.detach(), cfg.rank, cfg.alpha, layout)
        )
    return len(modules)


def has_lora(model: nn.Module) -> bool:
    return any(parametrize.is_parametrized(m, "weight") for m in model.modules())


def merge_lora(model: nn.Module) -> None:
    """Fold every adapter into its weight, in place; the model is then plain (no parametrizations)."""
    for module in model.modules():
        if parametrize.is_parametrized(module, "weight"):
            parametrize.remove_parametrizations(module, "weight", leave_parametrized=True)


def is_adapter(parameter_name: str) -> bool:
    """Whether a parameter is a LoRA factor (trained) rather than a frozen base weight."""
    return ".parametrizations.weight.0." in parameter_name


def is_adapted_base(parameter_name: str) -> bool:
    return parameter_name.endswith(".parametrizations.weight.original")
