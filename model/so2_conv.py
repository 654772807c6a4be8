"""SO(2) convolution (eSCN): the linear maps of edge-frame features that commute with rotations about the edge.

In an edge's frame (edge along z) a rotation by angle a about z leaves every m = 0 coefficient unchanged
and turns each pair (x_{+m}, x_{-m}) of one degree by the angle m*a. The linear maps that commute with all
such rotations mix degrees and channels freely within one |m|: any real matrix for m = 0, and for m > 0 a
complex-like pair  y_{+m} = W1 x_{+m} - W2 x_{-m},  y_{-m} = W2 x_{+m} + W1 x_{-m}.  W2 is what makes the
model chiral: a mirror through a plane holding the edge flips the sign of every x_{-m}, which W2 does not
commute with. The cost per edge is O(lmax**2 * mmax) weights applied, instead of the O(lmax**6) of a full
Clebsch–Gordan tensor product.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from model.so3 import CoefficientLayout


class SO2Convolution(nn.Module):
    """Edge-frame features x [E, K, in_channels] (K = layout.size) -> [E, K, out_channels], plus
    ``extra_scalars`` invariant outputs [E, extra_scalars] read from the m = 0 part.

    With ``radial_channels``, a linear map of per-edge radial features [E, radial_channels] scales every
    input (|m|, l, channel) coefficient, the same for +m and -m: distance modulates the weights.
    """

    def __init__(
        self,
        layout: CoefficientLayout,
        in_channels: int,
        out_channels: int,
        *,
        extra_scalars: int = 0,
        radial_channels: int | None = None,
    ) -> None:
        super().__init__()
        self.layout, self.in_channels, self.out_channels = layout, in_channels, out_channels
        self.extra_scalars = extra_scalars
        lmax, mmax = layout.lmax, layout.mmax
        self.degrees_per_order = [lmax + 1 - m for m in range(mmax + 1)]
        self.linear_m0 = nn.Linear(
            self.degrees_per_order[0] * in_channels, self.degrees_per_order[0] * out_channels + extra_scalars
        )
        self.linear_m = nn.ModuleList(
            nn.Linear(n * in_channels, 2 * n * out_channels, bias=False) for n in self.degrees_per_order[1:]
        )
        self.radial = (
            nn.Linear(radial_channels, sum(self.degrees_per_order) * in_channels)
            if radial_channels is not None
            else None
        )
        order_major = [(ell, 0) for ell in range(lmax + 1)]
        for m in range(1, mmax + 1):
            order_major += [(ell, m) for ell in range(m, lmax + 1)] + [
                (ell, -m) for ell in range(m, lmax + 1)
            ]
        index = [layout.degrees_and_orders.index(lm) for lm in order_major]
        self.register_buffer("order_major", torch.tensor(index, dtype=torch.long), persistent=False)
        inverse = sorted(range(len(index)), key=index.__getitem__)
        self.register_buffer("degree_major", torch.tensor(inverse, dtype=torch.long), persistent=False)

    def forward(self, x: Tensor, radial: Tensor | None = None) -> tuple[Tensor, Tensor]:
        num_edges = x.shape[0]
        x = x.index_select(1, self.order_major)
        scales = None
        if self.radial is not None:
            if radial is None:
                raise ValueError("this SO(2) convolution is modulated by radial features; pass them")
            scales = self.radial(radial).split([n * self.in_channels for n in self.degrees_per_order], dim=-1)
        n0 = self.degrees_per_order[0]
        x0 = x[:, :n0].reshape(num_edges, n0 * self.in_channels)
        if scales is not None:
            x0 = x0 * scales[0]
        out0 = self.linear_m0(x0)
        blocks = [out0[:, : n0 * self.out_channels].reshape(num_edges, n0, self.out_channels)]
        extra = out0[:, n0 * self.out_channels :]
        start = n0
        for m, linear in enumerate(self.linear_m, start=1):
            n = self.degrees_per_order[m]
            pair = x[:, start : start + 2 * n].reshape(num_edges, 2, n * self.in_channels).transpose(0, 1)
            start += 2 * n
            if scales is not None:
                pair = pair * scales[m]
            w1_x, w2_x = linear(pair).chunk(2, dim=-1)  # each [2 (+m, -m), E, n * out]
            plus = w1_x[0] - w2_x[1]
            minus = w2_x[0] + w1_x[1]
            blocks += [
                plus.reshape(num_edges, n, self.out_channels),
                minus.reshape(num_edges, n, self.out_channels),
            ]
        return torch.cat(blocks, dim=1).index_select(1, self.degree_major), extra
