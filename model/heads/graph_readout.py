"""Graph-level heads: molecular/crystal properties and an invariant embedding for contrastive tasks."""

from __future__ import annotations

import torch
from torch import Tensor

from model.heads.base import Head, HeadInput, invariant_mlp

POOLINGS = ("mean", "sum")


def pool_invariants(inp: HeadInput, pooling: str) -> Tensor:
    """Mean or sum of the l=0 features over each structure's atoms: [N, C] → [B, C]."""
    feats = inp.invariant
    sums = feats.new_zeros(inp.num_graphs, feats.shape[1]).index_add(0, inp.batch, feats)
    if pooling == "sum":
        return sums
    counts = feats.new_zeros(inp.num_graphs).index_add(0, inp.batch, feats.new_ones(feats.shape[0]))
    return sums / counts.clamp(min=1).unsqueeze(1)


class PropertyHead(Head):
    """``properties`` [B, num_properties]: shift + scale × an MLP of the pooled invariant features.

    names: the structure properties predicted, one column each (``homo_lumo_gap``; they name the
    ``Structure.properties`` a fine-tuning stream carries); pooling ``mean`` suits intensive properties (gaps,
    energies per atom), ``sum`` extensive ones. ``shift`` and ``scale`` [P] (buffers, saved with the weights)
    are the training labels' mean and standard deviation, set when the head is new (``set_statistics``), so
    the MLP learns unit-scale targets."""

    outputs = ("properties",)

    def __init__(
        self,
        channels: int,
        lmax: int,
        num_properties: int = 1,
        pooling: str = "mean",
        hidden: int | None = None,
        names: list[str] | None = None,
    ) -> None:
        super().__init__(channels, lmax)
        if pooling not in POOLINGS:
            raise ValueError(
                f"properties head: unknown pooling {pooling!r}; expected one of {', '.join(POOLINGS)}"
            )
        if names is not None:
            if not names or len(set(names)) != len(names):
                raise ValueError(f"properties head: names must be distinct and not empty, got {names}")
            num_properties = len(names)
        self.names = list(names or [])
        self.pooling = pooling
        self.mlp = invariant_mlp(channels, hidden or channels, num_properties)
        self.register_buffer("shift", torch.zeros(num_properties))
        self.register_buffer("scale", torch.ones(num_properties))

    def set_statistics(self, mean: Tensor, std: Tensor) -> None:
        """Output offset and scale per property [P], e.g. the training labels' mean and standard deviation."""
        self.shift.copy_(mean)
        self.scale.copy_(std.clamp_min(1e-6))

    def _load_from_state_dict(self, state_dict, prefix, *args, **kwargs) -> None:  # type: ignore[no-untyped-def]
        # weights saved before the head had shift and scale load as they predicted: shift 0, scale 1
        state_dict.setdefault(prefix + "shift", torch.zeros_like(self.shift))
        state_dict.setdefault(prefix + "scale", torch.ones_like(self.scale))
        super()._load_from_state_dict(state_dict, prefix, *args, **kwargs)

    def forward(self, inp: HeadInput) -> dict[str, Tensor]:
        raw = self.mlp(pool_invariants(inp, self.pooling))
        return {"properties": self.shift.to(raw.dtype) + self.scale.to(raw.dtype) * raw}


class EmbeddingHead(Head):
    """``embedding`` [B, dim]: a rotation/translation/permutation-invariant vector per structure
    (conformer contrast), an MLP of the mean invariant features."""

    outputs = ("embedding",)

    def __init__(self, channels: int, lmax: int, dim: int = 128, hidden: int | None = None) -> None:
        super().__init__(channels, lmax)
        self.mlp = invariant_mlp(channels, hidden or channels, dim)

    def forward(self, inp: HeadInput) -> dict[str, Tensor]:
        return {"embedding": self.mlp(pool_invariants(inp, "mean"))}
