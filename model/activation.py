"""Equivariant nonlinearities on SO(3) features: a gate and a separable S² activation.

Both take features x [..., K, C] in a :class:`~model.so3.CoefficientLayout` and a tensor of invariant
scalars [..., num_scalars] computed upstream (from l = 0 features), and return [..., K, C].
"""

from __future__ import annotations

import math

import numpy as np
import torch
from torch import Tensor, nn

from model.parity import parity_activation, pseudo_count
from model.so3 import CoefficientLayout, spherical_harmonics


class GateActivation(nn.Module):
    """SiLU on the l = 0 coefficients (an odd SiLU on pseudo channels); every l > 0 block is scaled by
    sigmoid(gate), one gate per (l, channel), gates being polar scalars.

    Exactly equivariant (and commutes with rotations about any axis in any truncated layout).
    """

    def __init__(self, layout: CoefficientLayout, channels: int, pseudo: Tensor | None = None) -> None:
        super().__init__()
        self.layout, self.channels = layout, channels
        self.pseudo_count = 0 if pseudo is None else pseudo_count(pseudo)  # the last channels are pseudo
        gate_of_coefficient = [ell - 1 for ell in layout.degree_of_coefficient[1:]]
        self.register_buffer(
            "gate_of_coefficient", torch.tensor(gate_of_coefficient, dtype=torch.long), persistent=False
        )

    @staticmethod
    def num_scalars(lmax: int, channels: int) -> int:
        return lmax * channels

    def forward(self, x: Tensor, scalars: Tensor) -> Tensor:
        gates = torch.sigmoid(scalars).unflatten(-1, (self.layout.lmax, self.channels))
        degree_zero, higher = x.split([1, x.shape[-2] - 1], dim=-2)
        return torch.cat(
            [
                parity_activation(degree_zero, self.pseudo_count),
                higher * gates.index_select(-2, self.gate_of_coefficient),
            ],
            dim=-2,
        )


class SeparableS2Activation(nn.Module):
    """Separable S² activation (EquiformerV2): l = 0 output is SiLU(scalars); l > 0 outputs are the
    projection back onto degrees 1..lmax of SiLU applied pointwise to the function sum_lm x_lm Y_lm on a grid.

    The grid is Gauss–Legendre in cos(theta) times uniform in phi, exact for band-limited functions, but
    SiLU of a band-limited function is not band-limited: equivariance holds up to the grid's aliasing error,
    which falls quickly as ``resolution`` (latitude points) grows. Pseudo channels (whose sphere function
    changes sign under a reflection) take an odd SiLU, so reflections commute with the activation too.
    """

    def __init__(
        self,
        layout: CoefficientLayout,
        channels: int,
        resolution: int | None = None,
        pseudo: Tensor | None = None,
    ) -> None:
        super().__init__()
        self.pseudo_count = 0 if pseudo is None else pseudo_count(pseudo)  # the last channels are pseudo
        if layout.mmax != layout.lmax:
            raise ValueError("the S² activation works on the full layout (mmax == lmax)")
        self.layout, self.channels = layout, channels
        self.resolution = resolution or default_s2_resolution(layout.lmax)
        to_grid, from_grid = s2_grid_projections(layout.lmax, self.resolution)
        # float64, cast to the features' dtype when used: a float64 model gets a float64-exact quadrature.
        self.register_buffer("to_grid", torch.tensor(to_grid, dtype=torch.float64), persistent=False)
        self.register_buffer("from_grid", torch.tensor(from_grid, dtype=torch.float64), persistent=False)

    @staticmethod
    def num_scalars(lmax: int, channels: int) -> int:
        return channels

    def forward(self, x: Tensor, scalars: Tensor) -> Tensor:
        pseudo = self.pseudo_count
        on_grid = parity_activation(torch.matmul(self.to_grid.to(x.dtype), x), pseudo)
        back = torch.matmul(self.from_grid[1:].to(x.dtype), on_grid)
        return torch.cat([parity_activation(scalars, pseudo).unsqueeze(-2), back], dim=-2)


ACTIVATIONS: dict[str, type[GateActivation] | type[SeparableS2Activation]] = {
    "gate": GateActivation,
    "s2": SeparableS2Activation,
}


def default_s2_resolution(lmax: int) -> int:
    """Latitude points of the default S² grid for degree lmax (longitude points: twice as many)."""
    return 3 * (lmax + 1)


def make_activation(
    name: str,
    layout: CoefficientLayout,
    channels: int,
    s2_resolution: int | None = None,
    pseudo: Tensor | None = None,
) -> GateActivation | SeparableS2Activation:
    """The activation called ``name`` in :data:`ACTIVATIONS` (``s2_resolution`` is read by "s2" only)."""
    if name not in ACTIVATIONS:
        raise ValueError(f"unknown activation {name!r}; expected one of {', '.join(ACTIVATIONS)}")
    if name == "s2":
        return SeparableS2Activation(layout, channels, s2_resolution, pseudo)
    return ACTIVATIONS[name](layout, channels, pseudo)


def s2_grid_projections(lmax: int, resolution: int) -> tuple[np.ndarray, np.ndarray]:
    """Matrices between coefficients and values on a sphere grid of ``resolution`` x ``2*resolution`` points.

    to_grid [G, (lmax+1)**2]: values of each real spherical harmonic at the grid points.
    from_grid [(lmax+1)**2, G]: quadrature weights times those values, so ``from_grid @ to_grid = I``.
    """
    cos_theta, lat_weights = np.polynomial.legendre.leggauss(resolution)
    num_lon = 2 * resolution
    phi = 2 * math.pi * np.arange(num_lon) / num_lon
    sin_theta = np.sqrt(1 - cos_theta**2)
    points = np.stack(
        [
            np.outer(sin_theta, np.cos(phi)).ravel(),
            np.outer(sin_theta, np.sin(phi)).ravel(),
            np.repeat(cos_theta, num_lon),
        ],
        axis=-1,
    )
    weights = np.repeat(lat_weights, num_lon) * (2 * math.pi / num_lon)
    to_grid = spherical_harmonics(lmax, torch.tensor(points, dtype=torch.float64, device="cpu")).numpy()
    return to_grid, (to_grid * weights[:, None]).T
