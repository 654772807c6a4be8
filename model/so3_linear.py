"""Equivariant linear map of SO(3) features: channels mixed by one weight matrix per degree."""

from __future__ import annotations

import math

import torch
from torch import Tensor, nn


class SO3Linear(nn.Module):
    """x [..., (lmax+1)**2, in_channels] -> [..., (lmax+1)**2, out_channels]; bias on l = 0 only."""

    def __init__(self, lmax: int, in_channels: int, out_channels: int, bias: bool = True) -> None:
        super().__init__()
        self.lmax = lmax
        bound = 1 / math.sqrt(in_channels)
        self.weight = nn.Parameter(torch.empty(lmax + 1, in_channels, out_channels).uniform_(-bound, bound))
        self.bias = nn.Parameter(torch.zeros(out_channels)) if bias else None

    def forward(self, x: Tensor) -> Tensor:
        blocks = [
            torch.matmul(x[..., ell * ell : (ell + 1) ** 2, :], self.weight[ell])
            for ell in range(self.lmax + 1)
        ]
        if self.bias is not None:
            blocks[0] = blocks[0] + self.bias
        return torch.cat(blocks, dim=-2)
