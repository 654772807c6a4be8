"""Per-atom energy head: the learned part of the total energy."""

from __future__ import annotations

from torch import Tensor

from model.heads.base import Head, HeadInput, invariant_mlp


class EnergyHead(Head):
    """Per-atom energies [N] eV from the invariant features; the model sums them per structure."""

    outputs = ("atom_energy",)

    def __init__(self, channels: int, lmax: int, hidden: int | None = None) -> None:
        super().__init__(channels, lmax)
        self.mlp = invariant_mlp(channels, hidden or channels, 1)

    def forward(self, inp: HeadInput) -> dict[str, Tensor]:
        return {"atom_energy": self.mlp(inp.invariant).squeeze(-1)}
