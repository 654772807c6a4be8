"""SO(2) convolution (eSCN): the linear maps of edge-frame features that commute with rotations about the edge.

In an edge's frame (edge along z) a rotation by angle a about z leaves every m = 0 coefficient unchanged
and turns each pair (x_{+m}, x_{-m}) of one degree by the angle m*a. The linear maps that commute with all
such rotations mix degrees and channels freely within one |m|: any real matrix for m = 0, and for m > 0 a
complex-like pair  y_{+m} = W1 x_{+m} - W2 x_{-m},  y_{-m} = W2 x_{+m} + W1 x_{-m}.  A mirror through a
plane holding the edge flips the sign of every x_{-m} of a polar channel (and of x_{+m} and x_0 of a pseudo
one), so W1 and the m = 0 map connect channels of equal parity and W2 channels of opposite parity: the map
is then equivariant under reflections too, and W2 is where pseudo-scalars (handedness) come from
(``model.parity``). The cost per edge is O(lmax**2 * mmax) weights applied, instead of the O(lmax**6) of a full
Clebsch–Gordan tensor product.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from model.parity import opposite_parity, pseudo_mask, same_parity
from model.so3 import CoefficientLayout


class SO2Convolution(nn.Module):
    """Edge-frame features x [E, K, in_channels] in the order-major ``layout`` (K = layout.size) ->
    [E, K, out_channels] in the same layout, plus ``extra_scalars`` invariant outputs [E, extra_scalars] read
    from the m = 0 part.

    With ``radial_channels``, a linear map of per-edge radial features [E, radial_channels] scales every
    input (|m|, l, channel) coefficient, the same for +m and -m: distance modulates the weights.
    ``in_pseudo`` / ``out_pseudo``: channel parities (default all polar); the extra scalars are polar and
    read polar inputs only.
    """

    def __init__(
        self,
        layout: CoefficientLayout,
        in_channels: int,
        out_channels: int,
        *,
        extra_scalars: int = 0,
        radial_channels: int | None = None,
        in_pseudo: Tensor | None = None,
        out_pseudo: Tensor | None = None,
    ) -> None:
        super().__init__()
        if not layout.order_major:
            raise ValueError("the SO(2) convolution works on the order-major edge-frame layout")
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
        in_pseudo = pseudo_mask(in_channels, 0.0) if in_pseudo is None else in_pseudo
        out_pseudo = pseudo_mask(out_channels, 0.0) if out_pseudo is None else out_pseudo
        self.register_buffer("in_pseudo", in_pseudo, persistent=False)
        self.register_buffer("out_pseudo", out_pseudo, persistent=False)

    def _weights(self) -> tuple[Tensor, Tensor | None, list[Tensor]]:
        """The m = 0 weight and bias and each order's [W1; W2], with the parity masks applied (all polar: W2 is
        zero, and the map cannot tell a mirror image)."""
        n0, *pair_degrees = self.degrees_per_order
        extra = self.in_pseudo.new_zeros(self.extra_scalars)  # the extra scalars are polar
        rows = torch.cat([self.out_pseudo.repeat(n0), extra])
        w0 = self.linear_m0.weight * same_parity(rows, self.in_pseudo.repeat(n0)).to(self.linear_m0.weight)
        b0 = self.linear_m0.bias * (~rows).to(self.linear_m0.bias)
        pairs = []
        for n, linear in zip(pair_degrees, self.linear_m, strict=True):
            rows, cols = self.out_pseudo.repeat(n), self.in_pseudo.repeat(n)
            mask = torch.cat([same_parity(rows, cols), opposite_parity(rows, cols)])  # rows of [W1; W2]
            pairs.append(linear.weight * mask.to(linear.weight))
        return w0, b0, pairs

    def forward(self, x: Tensor, radial: Tensor | None = None) -> tuple[Tensor, Tensor]:
        num_edges = x.shape[0]
        scales = None
        if self.radial is not None:
            if radial is None:
                raise ValueError("this SO(2) convolution is modulated by radial features; pass them")
            scales = self.radial(radial).split([n * self.in_channels for n in self.degrees_per_order], dim=-1)
        # split, not slices: the backward of a split is one cat, of each slice a full-size zero tensor and an add.
        n0, *pair_degrees = self.degrees_per_order
        x0, *pairs = x.split([n0] + [2 * n for n in pair_degrees], dim=1)
        x0 = x0.reshape(num_edges, n0 * self.in_channels)
        if scales is not None:
            x0 = x0 * scales[0]
        w0, b0, pair_weights = self._weights()
        out0, extra = nn.functional.linear(x0, w0, b0).split(
            [n0 * self.out_channels, self.extra_scalars], dim=-1
        )
        blocks = [out0.reshape(num_edges, n0, self.out_channels)]
        for m, (n, pair, w12) in enumerate(zip(pair_degrees, pairs, pair_weights, strict=True), start=1):
            pair = pair.reshape(num_edges, 2, n * self.in_channels)  # (+m, -m)
            if scales is not None:
                pair = pair * scales[m].unsqueeze(1)
            # [y_+; y_-] = [[W1, -W2], [W2, W1]] [x_+; x_-] as one matmul; w12 is [W1; W2].
            w1, w2 = w12.chunk(2, dim=0)
            weight = torch.cat([w12, torch.cat([-w2, w1], dim=0)], dim=1)
            out = nn.functional.linear(pair.reshape(num_edges, 2 * n * self.in_channels), weight)
            blocks.append(out.reshape(num_edges, 2 * n, self.out_channels))
        return torch.cat(blocks, dim=1), extra
