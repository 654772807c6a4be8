"""Masked-atom head: which element sits at each (masked) site."""

from __future__ import annotations

from torch import Tensor

from model.heads.base import Head, HeadInput, invariant_mlp
from model.reference_energies import NUM_ELEMENTS


class AtomTypeHead(Head):
    """Logits [N, 119] over atomic numbers 0..118 (0, the mask token, is never a target)."""

    outputs = ("atom_logits",)

    def __init__(self, channels: int, lmax: int, hidden: int | None = None) -> None:
        super().__init__(channels, lmax)
        self.mlp = invariant_mlp(channels, hidden or channels, NUM_ELEMENTS)

    def forward(self, inp: HeadInput) -> dict[str, Tensor]:
        return {"atom_logits": self.mlp(inp.invariant)}
