"""Parity of feature channels: how the backbone is equivariant under reflections yet keeps handedness.

Every channel of every feature width is either *polar* (its degree-l coefficients change sign as (-1)^l
under inversion, like the spherical harmonics of an edge direction) or *pseudo* (the opposite sign: a
pseudo-scalar at l = 0, an axial vector at l = 1). The last ``round(width * pseudo_fraction)`` channels of
each width are pseudo. Every map then respects parity:

- channel-mixing linear maps (per degree, and the m = 0 and W1 blocks of the SO(2) convolution) connect
  channels of the same parity; the SO(2) convolution's m/-m cross weights W2, which turn a polar vector
  about the edge into an axial one, connect channels of opposite parity;
- biases, the conditioning embeddings and everything read from the edge directions or the radial basis are
  polar; nonlinearities are SiLU on polar scalars and an odd function on pseudo scalars, and gates come
  from polar scalars.

So the backbone is O(3)-equivariant: the polar l = 0 features of a molecule and its mirror image are equal
and its pseudo-scalars change sign. The energy and every physical head read polar channels only (exactly
mirror-invariant energies, mirror-equivariant forces and stress); chirality-aware heads read the
pseudo-scalars, which tell L from D. Structural zeros are masks on dense weights: their gradients are zero.
"""

from __future__ import annotations

import torch
from torch import Tensor

from model.lean_silu import lean_silu


def pseudo_mask(width: int, fraction: float) -> Tensor:
    """[width] bool, True for the pseudo channels (the last ``round(width * fraction)``)."""
    count = int(round(width * fraction))
    mask = torch.zeros(width, dtype=torch.bool, device="cpu")  # CPU even when models are built on meta
    if count:
        mask[width - count :] = True
    return mask


def same_parity(rows: Tensor, cols: Tensor) -> Tensor:
    """[len(rows), len(cols)] bool mask of the weights between channels of equal parity."""
    return rows[:, None] == cols[None, :]


def opposite_parity(rows: Tensor, cols: Tensor) -> Tensor:
    """[len(rows), len(cols)] bool mask of the weights between channels of opposite parity."""
    return rows[:, None] != cols[None, :]


def odd_silu(x: Tensor) -> Tensor:
    """x · sigmoid(x²): odd (a pseudo-scalar stays one), smooth, linear for large |x| like SiLU."""
    return x * torch.sigmoid(x * x)


def pseudo_count(mask: Tensor) -> int:
    """The number of pseudo channels of a :func:`pseudo_mask` (its last block), checked to be that block."""
    count = int(mask.sum())
    if bool(mask[: mask.numel() - count].any()):
        raise ValueError("pseudo channels must be the last block of a width (model.parity.pseudo_mask)")
    return count


def parity_activation(x: Tensor, pseudo: int) -> Tensor:
    """SiLU on polar channels, :func:`odd_silu` on the last ``pseudo`` channels (the pseudo ones; 0: all
    polar); channels on the last dimension. Computed by :func:`model.lean_silu.lean_silu`, whose double
    backward keeps only its input and gradient."""
    return lean_silu(x, pseudo)
