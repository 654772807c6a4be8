"""Per-residue readout for proteins: one invariant vector per (structure, residue)."""

from __future__ import annotations

import torch
from torch import Tensor

from model.heads.base import Head, HeadInput, invariant_mlp


class ResidueHead(Head):
    """``residue`` [R, dim]: an MLP of the mean invariant features of each residue's atoms;
    ``residue_index`` [R, 2]: (graph, residue_id) of each row, sorted. Atoms with residue_id −1 are left out.

    target: a per-atom class label (``secondary_structure``) whose ``dim`` classes the rows are logits of,
    trained by the ``residue_class`` task (None: a plain per-residue embedding)."""

    outputs = ("residue", "residue_index")

    def __init__(
        self, channels: int, lmax: int, dim: int = 64, hidden: int | None = None, target: str | None = None
    ) -> None:
        super().__init__(channels, lmax)
        self.dim, self.target = dim, target
        self.mlp = invariant_mlp(channels, hidden or channels, dim)

    def forward(self, inp: HeadInput) -> dict[str, Tensor]:
        feats = inp.invariant
        if inp.residue_id is None:
            raise ValueError("the residue head needs the batch field 'residue_id' (see docs/batch.md)")
        on_residue = inp.residue_id >= 0
        graph, resid = inp.batch[on_residue], inp.residue_id[on_residue]
        stride = int(resid.max()) + 1 if resid.numel() else 1
        unique_keys, slot = torch.unique(graph * stride + resid, return_inverse=True)
        sums = feats.new_zeros(unique_keys.numel(), feats.shape[1]).index_add(0, slot, feats[on_residue])
        counts = feats.new_zeros(unique_keys.numel()).index_add(0, slot, feats.new_ones(slot.numel()))
        index = torch.stack([unique_keys // stride, unique_keys % stride], dim=1)
        return {"residue": self.mlp(sums / counts.unsqueeze(1)), "residue_index": index}
