"""SO(3) for the backbone: real spherical harmonics, Wigner-D matrices, edge frames.

Conventions used throughout the model:

* Coefficients of degree ``l`` are ordered ``m = -l..l``; in a tensor holding degrees ``0..lmax`` the
  coefficient ``(l, m)`` sits at index ``l*l + m + l``.
* Real spherical harmonics are orthonormal on the unit sphere, without the Condon–Shortley phase, so
  that ``Y_{1,-1}, Y_{1,0}, Y_{1,1}`` are proportional to ``y, z, x``.
* ``wigner_d(R)`` returns, per degree, the matrix with ``Y_l(R r) = D_l(R) Y_l(r)``; a feature ``x`` transforms
  under a rotation ``R`` of the structure as ``x_l -> D_l(R) x_l``.

Wigner-D matrices are polynomials in the entries of the rotation matrix (Ivanic–Ruedenberg recursion),
so they and their derivatives of every order are finite for every edge direction, poles included.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from functools import cache

import numpy as np
import torch
from torch import Tensor

# Real spherical harmonics of degree 1 are (y, z, x): these index maps go between the two orders.
_L1_FROM_XYZ = (1, 2, 0)
_XYZ_FROM_L1 = (2, 0, 1)


def num_coefficients(lmax: int) -> int:
    """Number of (l, m) coefficients for degrees 0..lmax: (lmax + 1)**2."""
    return (lmax + 1) ** 2


@dataclass(frozen=True)
class CoefficientLayout:
    """The (l, m) coefficients kept for degrees 0..lmax and orders |m| <= mmax.

    With ``mmax == lmax`` and the default l-major order this is the full node layout. Features in an edge's
    frame use ``order_major=True``: m = 0 for l = 0..lmax, then for each m = 1..mmax the +m coefficients for
    l = m..lmax followed by the -m ones, so that every |m| block the SO(2) convolution mixes is contiguous.
    """

    lmax: int
    mmax: int
    order_major: bool = False

    def __post_init__(self) -> None:
        if self.lmax < 0 or not 0 <= self.mmax <= self.lmax:
            raise ValueError(f"need 0 <= mmax <= lmax, got lmax={self.lmax}, mmax={self.mmax}")

    @property
    def degrees_and_orders(self) -> list[tuple[int, int]]:
        if not self.order_major:
            return [
                (ell, m)
                for ell in range(self.lmax + 1)
                for m in range(-min(ell, self.mmax), min(ell, self.mmax) + 1)
            ]
        coefficients = [(ell, 0) for ell in range(self.lmax + 1)]
        for m in range(1, self.mmax + 1):
            coefficients += [(ell, sign * m) for sign in (1, -1) for ell in range(m, self.lmax + 1)]
        return coefficients

    @property
    def size(self) -> int:
        return len(self.degrees_and_orders)

    @property
    def degree_of_coefficient(self) -> list[int]:
        return [ell for ell, _ in self.degrees_and_orders]


def spherical_harmonics(lmax: int, vectors: Tensor) -> Tensor:
    """Real orthonormal spherical harmonics of the directions of ``vectors``.

    vectors: [..., 3], non-zero (their length is ignored). Returns [..., (lmax+1)**2]. Built from polynomial
    recursions in x, y, z (no angles), so it is smooth everywhere on the sphere.
    """
    unit = vectors / torch.linalg.vector_norm(vectors, dim=-1, keepdim=True)
    x, y, z = unit.unbind(-1)
    one = torch.ones_like(z)
    # cos_m + i sin_m = (x + i y)^m, without the sin(theta)^m that the Legendre part leaves out.
    cos_m, sin_m = [one], [torch.zeros_like(z)]
    for _ in range(lmax):
        cos_prev, sin_prev = cos_m[-1], sin_m[-1]
        cos_m.append(x * cos_prev - y * sin_prev)
        sin_m.append(x * sin_prev + y * cos_prev)
    # legendre[l][m]: associated Legendre polynomial P_l^m(z) divided by sin(theta)^m, no Condon–Shortley phase.
    legendre = [[one]]
    for ell in range(1, lmax + 1):
        row = []
        for m in range(ell + 1):
            if m == ell:
                row.append(legendre[ell - 1][ell - 1] * (2 * ell - 1))
            elif m == ell - 1:
                row.append(z * legendre[ell - 1][m] * (2 * m + 1))
            else:
                row.append(
                    ((2 * ell - 1) * z * legendre[ell - 1][m] - (ell + m - 1) * legendre[ell - 2][m])
                    / (ell - m)
                )
        legendre.append(row)
    out = []
    for ell in range(lmax + 1):
        for m in range(-ell, ell + 1):
            am = abs(m)
            norm = math.sqrt(
                (2 * ell + 1) / (4 * math.pi) * math.factorial(ell - am) / math.factorial(ell + am)
            )
            if m == 0:
                out.append(norm * legendre[ell][0])
            else:
                azimuthal = cos_m[am] if m > 0 else sin_m[am]
                out.append(math.sqrt(2.0) * norm * legendre[ell][am] * azimuthal)
    return torch.stack(out, dim=-1)


def vector_to_l1(vectors: Tensor) -> Tensor:
    """Cartesian vectors [..., 3(xyz), C] -> degree-1 coefficients [..., 3(m=-1,0,1), C] (a permutation)."""
    return vectors[..., _L1_FROM_XYZ, :]


def l1_to_vector(x: Tensor) -> Tensor:
    """Degree-1 coefficients [..., 3(m=-1,0,1), C] -> Cartesian vectors [..., 3(xyz), C] (a permutation)."""
    return x[..., _XYZ_FROM_L1, :]


def edge_rotation(edge_vec: Tensor) -> Tensor:
    """Rotation matrices [E, 3, 3] taking each edge direction to +z: ``R @ (r / |r|) = (0, 0, 1)``.

    The roll about the edge is fixed by the coordinate axis least aligned with the edge (so the helper is
    never closer than 54.7° to the edge): smooth in ``edge_vec`` away from where that choice switches, and
    everything the model computes in an edge frame is independent of the roll, so switching is harmless.
    """
    direction = edge_vec / torch.linalg.vector_norm(edge_vec, dim=-1, keepdim=True)
    axis = torch.argmin(direction.detach().abs(), dim=-1)
    helper = torch.nn.functional.one_hot(axis, 3).to(direction.dtype)
    first = helper - (helper * direction).sum(-1, keepdim=True) * direction
    first = first / torch.linalg.vector_norm(first, dim=-1, keepdim=True)
    second = torch.linalg.cross(direction, first, dim=-1)
    return torch.stack([first, second, direction], dim=-2)


def wigner_d(rotation: Tensor, lmax: int) -> list[Tensor]:
    """Wigner-D matrices of degrees 0..lmax for rotation matrices [..., 3, 3]: a list of [..., 2l+1, 2l+1].

    Ivanic–Ruedenberg recursion: D_l is a fixed bilinear function of D_1 and D_(l-1), hence a polynomial of
    degree l in the rotation's entries.
    """
    d1 = rotation[..., _L1_FROM_XYZ, :][..., :, _L1_FROM_XYZ]
    blocks = [torch.ones_like(rotation[..., :1, :1]), d1]
    for ell in range(2, lmax + 1):
        blocks.append(_next_wigner_block(d1, blocks[-1], ell))
    return blocks[: lmax + 1]


def _next_wigner_block(d1: Tensor, previous: Tensor, ell: int) -> Tensor:
    """D_l [..., 2l+1, 2l+1] from D_1 [..., 3, 3] and D_(l-1) [..., 2l-1, 2l-1].

    D_l[m, n] = s(n) sum_(i, a) D_1[i, j(n)] row_mix[i, m, a] D_(l-1)[a, b(n)]: contracting D_1 with the
    constant row mixing first is one GEMM with K = 3, leaving a small batched matmul per edge.
    """
    row_mix, column_scale = _ivanic_ruedenberg_tables(ell, previous.dtype, previous.device)
    size, width = 2 * ell + 1, 2 * ell - 1
    # left[..., j, m, a] = sum_i D_1[i, j] row_mix[i, m, a]   (i, j = -1, 0, 1: rows and columns of D_1)
    left = (d1.transpose(-1, -2).reshape(-1, 3) @ row_mix).view(*d1.shape[:-2], 3, size, width)
    interior = torch.matmul(left[..., 1, :, :], previous) * column_scale[1:-1]  # columns n = -(l-1)..l-1
    ends = previous[..., :, (0, -1)]  # columns b = -(l-1) and l-1
    from_plus = torch.matmul(left[..., 2, :, :], ends)
    from_minus = torch.matmul(left[..., 0, :, :], ends)
    column_minus_l = (from_plus[..., 0] + from_minus[..., 1]) * column_scale[0]
    column_plus_l = (from_plus[..., 1] - from_minus[..., 0]) * column_scale[-1]
    return torch.cat([column_minus_l.unsqueeze(-1), interior, column_plus_l.unsqueeze(-1)], dim=-1)


@cache
def _ivanic_ruedenberg_arrays(ell: int) -> tuple[np.ndarray, np.ndarray]:
    """Row mixing [3, 2l+1, 2l-1] (by row of D_1) and column scale [2l+1] of the degree-l recursion step."""
    row_mix = np.zeros((3, 2 * ell + 1, 2 * ell - 1))

    def add(i: int, m: int, a: int, value: float) -> None:
        row_mix[i + 1, m + ell, a + ell - 1] += value

    for m in range(-ell, ell + 1):
        am = abs(m)
        zero = 1.0 if m == 0 else 0.0
        u = math.sqrt((ell + m) * (ell - m))
        v = 0.5 * math.sqrt((1 + zero) * (ell + am - 1) * (ell + am)) * (1 - 2 * zero)
        w = -0.5 * math.sqrt(max((ell - am - 1) * (ell - am), 0)) * (1 - zero)
        if u:
            add(0, m, m, u)
        if m == 0:
            add(1, 0, 1, v)
            add(-1, 0, -1, v)
        elif m > 0:
            add(1, m, m - 1, v * math.sqrt(1 + (m == 1)))
            if m != 1:
                add(-1, m, -m + 1, -v)
        else:
            if m != -1:
                add(1, m, m + 1, v)
            add(-1, m, -m - 1, v * math.sqrt(1 + (m == -1)))
        if w:
            if m > 0:
                add(1, m, m + 1, w)
                add(-1, m, -m - 1, w)
            else:
                add(1, m, m - 1, w)
                add(-1, m, -m + 1, -w)
    column_scale = np.array(
        [
            1 / math.sqrt((ell + n) * (ell - n)) if abs(n) < ell else 1 / math.sqrt(2 * ell * (2 * ell - 1))
            for n in range(-ell, ell + 1)
        ]
    )
    return row_mix, column_scale


@cache
def _ivanic_ruedenberg_tables(ell: int, dtype: torch.dtype, device: torch.device) -> tuple[Tensor, Tensor]:
    row_mix, column_scale = _ivanic_ruedenberg_arrays(ell)
    row_mix = row_mix.reshape(3, -1)  # [i, (m, a)]
    return (
        torch.as_tensor(row_mix, dtype=dtype, device=device),
        torch.as_tensor(column_scale, dtype=dtype, device=device),
    )


def rotate(x: Tensor, wigner: list[Tensor]) -> Tensor:
    """Apply per-degree rotations: x [..., (lmax+1)**2, C] with wigner[l] [..., 2l+1, 2l+1] -> same shape."""
    out = []
    for ell, d in enumerate(wigner):
        out.append(torch.matmul(d, x[..., ell * ell : (ell + 1) ** 2, :]))
    return torch.cat(out, dim=-2)


def edge_frame_rotation(wigner: list[Tensor], mmax: int) -> Tensor:
    """The rotations into each edge's frame as one matrix [..., K, (lmax+1)**2] per edge: row k, the
    coefficient (l, m) of ``CoefficientLayout(lmax, mmax, order_major=True)``, holds row m of D_l in the
    columns of degree l and zeros elsewhere.

    Built once per forward pass and shared by every layer: rotating features is then one batched matmul
    (:func:`rotate_to_edge_frame`), faster on CPU and GPU than one per degree despite the zeros. The rows of
    the first ``j`` orders (m = 0 only: the first lmax + 1 rows) rotate the truncated layout of ``mmax = j``.
    """
    lmax = len(wigner) - 1
    entries = [d.flatten(-2) for d in wigner] + [torch.zeros_like(wigner[0].flatten(-2))]
    index = _edge_frame_rotation_index(lmax, mmax, wigner[0].device)
    rotation = torch.cat(entries, dim=-1).index_select(-1, index)
    return rotation.unflatten(-1, (CoefficientLayout(lmax, mmax).size, num_coefficients(lmax)))


@cache
def _edge_frame_rotation_index(lmax: int, mmax: int, device: torch.device) -> Tensor:
    """For each entry (k, p) of :func:`edge_frame_rotation`, its position among the concatenated flattened
    D_0..D_lmax, or the position of the trailing zero."""
    offsets = [sum((2 * k + 1) ** 2 for k in range(ell)) for ell in range(lmax + 2)]  # plain ints: traceable
    zero = offsets[-1]
    index = []
    for ell, m in CoefficientLayout(lmax, mmax, order_major=True).degrees_and_orders:
        row = [zero] * num_coefficients(lmax)
        for n in range(-ell, ell + 1):
            row[ell * ell + n + ell] = offsets[ell] + (m + ell) * (2 * ell + 1) + n + ell
        index += row
    return torch.tensor(index, dtype=torch.long, device=device)


def rotate_to_edge_frame(x: Tensor, rotation: Tensor) -> Tensor:
    """Full-layout features [E, (lmax+1)**2, C] -> edge-frame features [E, K, C] in the order-major layout of
    ``rotation`` [E, K, (lmax+1)**2] (:func:`edge_frame_rotation`); orders |m| > mmax are not computed."""
    return torch.matmul(rotation, x)


def rotate_from_edge_frame(x: Tensor, rotation: Tensor) -> Tensor:
    """Inverse of :func:`rotate_to_edge_frame`: edge-frame [E, K, C] -> full layout [E, (lmax+1)**2, C]
    (the orders |m| > mmax, dropped in the edge frame, come back as zeros there)."""
    return torch.matmul(rotation.transpose(-1, -2), x)
