"""Equivariant per-atom vector heads: direct forces and denoising noise.

v_i = Σ_c w_c g_c(x⁰_i) x¹_i,c: the l=1 features, gated channel-wise by an invariant MLP and mixed without
bias, so v rotates with the structure (and is translation-invariant).
"""

from __future__ import annotations

from torch import Tensor, nn

from model.heads.base import Head, HeadInput, invariant_mlp
from model.so3 import l1_to_vector


class EquivariantVectorHead(Head):
    """A Cartesian vector [N, 3] per atom from the l=1 features."""

    def __init__(self, channels: int, lmax: int, hidden: int | None = None) -> None:
        super().__init__(channels, lmax)
        if lmax < 1:
            raise ValueError(f"{type(self).__name__} needs l=1 features; the backbone has lmax={lmax}")
        self.gate = invariant_mlp(channels, hidden or channels, channels)
        self.mix = nn.Linear(channels, 1, bias=False)

    def vectors(self, inp: HeadInput) -> Tensor:
        vec = l1_to_vector(inp.x[:, 1:4, :])  # [N, 3, C]
        return self.mix(vec * self.gate(inp.invariant).unsqueeze(1)).squeeze(-1)


class DirectForceHead(EquivariantVectorHead):
    """Forces [N, 3] eV/Å predicted directly (not −∂E/∂x): fast, not energy-conserving."""

    outputs = ("forces_direct",)

    def forward(self, inp: HeadInput) -> dict[str, Tensor]:
        return {"forces_direct": self.vectors(inp)}


class DenoisingHead(EquivariantVectorHead):
    """The noise [N, 3] Å added to the positions, for coordinate-denoising pretraining."""

    outputs = ("noise",)

    def forward(self, inp: HeadInput) -> dict[str, Tensor]:
        return {"noise": self.vectors(inp)}
