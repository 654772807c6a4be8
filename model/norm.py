"""Equivariant RMS layer norm of SO(3) features."""

from __future__ import annotations

import torch
from torch import Tensor, nn

from model.parity import pseudo_mask
from model.so3 import CoefficientLayout


class EquivariantRMSNorm(nn.Module):
    """Normalise x [..., (lmax+1)**2, C] by one rotation-invariant RMS per atom, then scale per (l, channel).

    The l = 0 block is first centred over its polar channels (a mean over pseudo-scalars would mix parities;
    pseudo channels are not centred, and only polar channels get the bias). The RMS is the mean over degrees of each degree's mean
    square over its 2l+1 orders and all channels, so every degree counts equally whatever its size. A scale
    per (l, channel) is learned; only l = 0 has a bias, which would break equivariance elsewhere.

    One RMS for all degrees, rather than one per degree, keeps the map smooth where the l > 0 features are
    small (an isolated atom, a neighbour at the cutoff, a site of high symmetry): per-degree RMS would blow
    those up to unit size, with derivatives of order 1/sqrt(eps). Computed in at least float32.
    """

    def __init__(self, lmax: int, channels: int, eps: float = 1e-6, pseudo: Tensor | None = None) -> None:
        super().__init__()
        polar = (~(pseudo_mask(channels, 0.0) if pseudo is None else pseudo)).to(torch.get_default_dtype())
        self.register_buffer("polar", polar, persistent=False)
        self.lmax, self.eps = lmax, eps
        self.scale = nn.Parameter(torch.ones(lmax + 1, channels))
        self.bias = nn.Parameter(torch.zeros(channels))
        degree = CoefficientLayout(lmax, lmax).degree_of_coefficient
        weight = [1.0 / ((2 * ell + 1) * (lmax + 1)) for ell in degree]
        self.register_buffer(
            "degree_of_coefficient", torch.tensor(degree, dtype=torch.long), persistent=False
        )
        self.register_buffer("coefficient_weight", torch.tensor(weight), persistent=False)

    def forward(self, x: Tensor) -> Tensor:
        dtype = x.dtype
        x = x.to(torch.promote_types(dtype, torch.float32))
        polar = self.polar.to(x.dtype)
        mean = (x[..., :1, :] * polar).sum(dim=-1, keepdim=True) / polar.sum()
        scalars = x[..., :1, :] - mean * polar
        x = torch.cat([scalars, x[..., 1:, :]], dim=-2)
        mean_square = (x.pow(2).mean(dim=-1) * self.coefficient_weight.to(x.dtype)).sum(dim=-1)
        scale = self.scale.to(x.dtype).index_select(0, self.degree_of_coefficient)
        out = x * torch.rsqrt(mean_square + self.eps)[..., None, None] * scale
        return torch.cat([out[..., :1, :] + self.bias.to(x.dtype) * polar, out[..., 1:, :]], dim=-2).to(dtype)
