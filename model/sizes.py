"""Named backbone sizes, from a ~1M-parameter test model to a >1B-parameter one."""

from __future__ import annotations

from typing import Any

import torch

from data_pipeline.schema import BadInputError
from model.backbone import BackboneConfig, EquivariantTransformer

# Name -> BackboneConfig keyword arguments. Parameter counts (count_backbone_parameters) in the comments.
SIZES: dict[str, dict[str, Any]] = {
    # ~1.07M: tests, the laptop demo
    "tiny": dict(lmax=2, mmax=2, channels=64, num_layers=4, num_heads=4, attn_channels=32, ffn_channels=128),
    # ~20.6M
    "small": dict(
        lmax=4, mmax=2, channels=128, num_layers=8, num_heads=8, attn_channels=64, ffn_channels=256
    ),
    # ~68M
    "base": dict(
        lmax=6, mmax=2, channels=128, num_layers=12, num_heads=8, attn_channels=64, ffn_channels=512
    ),
    # ~396M
    "large": dict(
        lmax=6, mmax=3, channels=256, num_layers=16, num_heads=8, attn_channels=128, ffn_channels=1024
    ),
    # ~1.56B
    "xl": dict(
        lmax=6, mmax=3, channels=512, num_layers=16, num_heads=16, attn_channels=256, ffn_channels=2048
    ),
}


def backbone_config(name: str, **overrides: Any) -> BackboneConfig:
    """The named size, with any BackboneConfig field overridden (an unknown field is a BadInputError naming it)."""
    if name not in SIZES:
        raise BadInputError(
            f"unknown backbone size {name!r}; expected one of {', '.join(SIZES)}", field="size"
        )
    return BackboneConfig.from_dict({**SIZES[name], **overrides})


def count_backbone_parameters(cfg: BackboneConfig) -> int:
    """Number of trainable parameters, counted on the meta device: no memory is allocated, so the largest
    sizes can be counted anywhere."""
    with torch.device("meta"):
        model = EquivariantTransformer(cfg)
    return sum(p.numel() for p in model.parameters())
