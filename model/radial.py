"""Radial (distance) features of edges: a basis expansion of |r| and a smooth cutoff envelope."""

from __future__ import annotations

import math

import torch
from torch import Tensor, nn


class GaussianBasis(nn.Module):
    """Gaussians of |r| centred evenly on [0, cutoff], each as wide as the spacing of the centres.

    distance [E] Å -> [E, num_basis].
    """

    def __init__(self, num_basis: int, cutoff: float) -> None:
        super().__init__()
        self.register_buffer("centers", torch.linspace(0.0, cutoff, num_basis), persistent=False)
        self.width = cutoff / (num_basis - 1)

    def forward(self, distance: Tensor) -> Tensor:
        return torch.exp(
            -0.5 * ((distance.unsqueeze(-1) - self.centers.to(distance.dtype)) / self.width) ** 2
        )


class BesselBasis(nn.Module):
    """Spherical Bessel functions of order 0, sqrt(2/c) sin(n pi r / c) / r, n = 1..num_basis (DimeNet).

    distance [E] Å (> 0) -> [E, num_basis].
    """

    def __init__(self, num_basis: int, cutoff: float) -> None:
        super().__init__()
        self.register_buffer(
            "frequencies",
            torch.arange(1, num_basis + 1, dtype=torch.get_default_dtype()) * math.pi / cutoff,
            persistent=False,
        )
        self.prefactor = math.sqrt(2.0 / cutoff)

    def forward(self, distance: Tensor) -> Tensor:
        d = distance.unsqueeze(-1)
        return self.prefactor * torch.sin(self.frequencies.to(distance.dtype) * d) / d


RADIAL_BASES: dict[str, type[nn.Module]] = {"gaussian": GaussianBasis, "bessel": BesselBasis}


class PolynomialEnvelope(nn.Module):
    """Smooth cutoff u(d), d = |r| / cutoff: 1 at d = 0, and value, first and second derivative 0 at d = 1
    (and beyond): u(d) = 1 - (p+1)(p+2)/2 d^p + p(p+2) d^(p+1) - p(p+1)/2 d^(p+2).

    distance [E] Å -> [E].
    """

    def __init__(self, cutoff: float, exponent: int = 5) -> None:
        super().__init__()
        self.cutoff = cutoff
        self.exponent = exponent

    def forward(self, distance: Tensor) -> Tensor:
        p = self.exponent
        d = distance / self.cutoff
        d_p = d**p
        value = 1 - (p + 1) * (p + 2) / 2 * d_p + p * (p + 2) * d_p * d - p * (p + 1) / 2 * d_p * d * d
        return torch.where(d < 1, value, torch.zeros_like(value))
