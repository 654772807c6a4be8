"""Latent atomic charges that add up to each structure's total charge."""

from __future__ import annotations

import torch.nn.functional as F
from torch import Tensor

from model.heads.base import Head, HeadInput, invariant_mlp


class ChargeHead(Head):
    """Charges [N] e: raw charges plus a share of each structure's missing charge.

    q_i = q̃_i + w_i (Q − Σ_j q̃_j) / Σ_j w_j over the atoms of the structure, with learned positive weights
    w_i (softer atoms take more of the excess), so Σ_i q_i = Q exactly.
    """

    outputs = ("charges",)

    def __init__(self, channels: int, lmax: int, hidden: int | None = None) -> None:
        super().__init__(channels, lmax)
        self.mlp = invariant_mlp(channels, hidden or channels, 2)

    def forward(self, inp: HeadInput) -> dict[str, Tensor]:
        raw, weight_logit = self.mlp(inp.invariant).unbind(-1)
        weight = F.softplus(weight_logit) + 1e-3
        zeros = raw.new_zeros(inp.num_graphs)
        excess = inp.charge.to(raw.dtype) - zeros.index_add(0, inp.batch, raw)
        total_weight = zeros.index_add(0, inp.batch, weight)
        return {"charges": raw + weight * (excess / total_weight)[inp.batch]}
