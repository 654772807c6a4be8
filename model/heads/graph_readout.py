"""Graph-level heads: molecular/crystal properties and an invariant embedding for contrastive tasks."""

from __future__ import annotations

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
    """``properties`` [B, num_properties]: an MLP of the pooled invariant features.

    pooling ``mean`` suits intensive properties (gaps, energies per atom), ``sum`` extensive ones."""

    outputs = ("properties",)

    def __init__(
        self,
        channels: int,
        lmax: int,
        num_properties: int = 1,
        pooling: str = "mean",
        hidden: int | None = None,
    ) -> None:
        super().__init__(channels, lmax)
        if pooling not in POOLINGS:
            raise ValueError(
                f"properties head: unknown pooling {pooling!r}; expected one of {', '.join(POOLINGS)}"
            )
        self.pooling = pooling
        self.mlp = invariant_mlp(channels, hidden or channels, num_properties)

    def forward(self, inp: HeadInput) -> dict[str, Tensor]:
        return {"properties": self.mlp(pool_invariants(inp, self.pooling))}


class EmbeddingHead(Head):
    """``embedding`` [B, dim]: a rotation/translation/permutation-invariant vector per structure
    (conformer contrast), an MLP of the mean invariant features."""

    outputs = ("embedding",)

    def __init__(self, channels: int, lmax: int, dim: int = 128, hidden: int | None = None) -> None:
        super().__init__(channels, lmax)
        self.mlp = invariant_mlp(channels, hidden or channels, dim)

    def forward(self, inp: HeadInput) -> dict[str, Tensor]:
        return {"embedding": self.mlp(pool_invariants(inp, "mean"))}
