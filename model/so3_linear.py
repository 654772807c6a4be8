"""Equivariant linear map of SO(3) features: channels mixed by one weight matrix per degree."""

from __future__ import annotations

import math

import torch
from torch import Tensor, nn

from model.parity import pseudo_mask, same_parity


class SO3Linear(nn.Module):
    """x [..., (lmax+1)**2, in_channels] -> [..., (lmax+1)**2, out_channels]; bias on l = 0 only.

    With channel parities (``model.parity``), weights connect channels of equal parity only and the bias
    sits on polar outputs only.
    """

    def __init__(
        self,
        lmax: int,
        in_channels: int,
        out_channels: int,
        bias: bool = True,
        *,
        in_pseudo: Tensor | None = None,
        out_pseudo: Tensor | None = None,
    ) -> None:
        super().__init__()
        self.lmax = lmax
        bound = 1 / math.sqrt(in_channels)
        self.weight = nn.Parameter(torch.empty(lmax + 1, in_channels, out_channels).uniform_(-bound, bound))
        self.bias = nn.Parameter(torch.zeros(out_channels)) if bias else None
        in_pseudo = pseudo_mask(in_channels, 0.0) if in_pseudo is None else in_pseudo
        out_pseudo = pseudo_mask(out_channels, 0.0) if out_pseudo is None else out_pseudo
        self.masked = bool(in_pseudo.any() or out_pseudo.any())
        self.register_buffer("in_pseudo", in_pseudo, persistent=False)
        self.register_buffer("out_pseudo", out_pseudo, persistent=False)

    def forward(self, x: Tensor) -> Tensor:
        weight = self.weight
        if self.masked:  # masks are built per call from the parities: no weight-sized buffers to hold
            weight = weight * same_parity(self.in_pseudo, self.out_pseudo).to(weight)
        blocks = [
            torch.matmul(x[..., ell * ell : (ell + 1) ** 2, :], weight[ell]) for ell in range(self.lmax + 1)
        ]
        if self.bias is not None:
            bias = self.bias * (~self.out_pseudo).to(self.bias) if self.masked else self.bias
            blocks[0] = blocks[0] + bias
        return torch.cat(blocks, dim=-2)
