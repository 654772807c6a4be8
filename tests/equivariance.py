"""A reusable equivariance checker (in the spirit of e3nn's ``assert_equivariant``).

Import it from any test module in this folder::

    from equivariance import assert_equivariant

    assert_equivariant(lambda pos: energy_and_forces(pos), [pos], ["position"], ["invariant", "vector"])

Each argument and each output is tagged with how it transforms under a rotation R (and translation t):

* ``"invariant"``: unchanged.
* ``"vector"``: Cartesian vectors in the last dimension [..., 3]: v -> v @ R.T (forces, dipoles, cell rows).
* ``"position"``: like a vector, and translated: p -> p @ R.T + t.
* ``"matrix"``: [..., 3, 3] rank-2 Cartesian tensors: M -> R M R.T (stress, virial).
* ``"spherical"``: SO(3) features [..., (lmax+1)**2, C] in the model's layout: x_l -> D_l(R) x_l.

Rotations are drawn uniformly (QR of a Gaussian matrix, determinant +1) in float64.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence

import torch
from torch import Tensor

from model.so3 import rotate, wigner_d

KINDS = ("invariant", "vector", "position", "matrix", "spherical")


def random_rotation(generator: torch.Generator) -> Tensor:
    """A uniformly random proper rotation matrix [3, 3], float64."""
    q, r = torch.linalg.qr(torch.randn(3, 3, dtype=torch.float64, generator=generator))
    q = q * torch.sign(torch.diagonal(r))
    if torch.det(q) < 0:
        q = -q
    return q


def transform(value: Tensor, kind: str, rotation: Tensor, translation: Tensor) -> Tensor:
    """``value`` after the structure is rotated by ``rotation`` [3, 3] and translated by ``translation`` [3]."""
    r = rotation.to(value.dtype)
    if kind == "invariant":
        return value
    if kind == "vector":
        return value @ r.T
    if kind == "position":
        return value @ r.T + translation.to(value.dtype)
    if kind == "matrix":
        return r @ value @ r.T
    if kind == "spherical":
        lmax = math.isqrt(value.shape[-2]) - 1
        if (lmax + 1) ** 2 != value.shape[-2]:
            raise ValueError(
                f"spherical features need (lmax+1)**2 coefficients in dim -2, got {value.shape[-2]}"
            )
        return rotate(value, wigner_d(rotation, lmax))
    raise ValueError(f"unknown kind {kind!r}; expected one of {', '.join(KINDS)}")


def assert_equivariant(
    fn: Callable[..., Tensor | Sequence[Tensor]],
    args: Sequence[Tensor],
    arg_kinds: Sequence[str],
    output_kinds: Sequence[str],
    *,
    num_rotations: int = 3,
    seed: int = 0,
    rtol: float = 1e-8,
) -> float:
    """Check ``fn(*transform(args)) == transform(fn(*args))`` for random rotations and translations.

    Each output is compared with ``torch.testing.assert_close`` at relative tolerance ``rtol`` and absolute
    tolerance ``rtol * max|output|``, so a tolerance is relative to the output's scale.
    Returns the largest error seen, relative to each output's scale.
    """
    if len(args) != len(arg_kinds):
        raise ValueError(f"{len(args)} arguments but {len(arg_kinds)} kinds")
    generator = torch.Generator().manual_seed(seed)
    reference = _as_tuple(fn(*args))
    if len(reference) != len(output_kinds):
        raise ValueError(f"fn returned {len(reference)} outputs but {len(output_kinds)} kinds were given")
    worst = 0.0
    for _ in range(num_rotations):
        rotation = random_rotation(generator)
        translation = torch.randn(3, dtype=torch.float64, generator=generator) * 3.0
        moved = [transform(a, k, rotation, translation) for a, k in zip(args, arg_kinds, strict=True)]
        outputs = _as_tuple(fn(*moved))
        for index, (out, ref, kind) in enumerate(zip(outputs, reference, output_kinds, strict=True)):
            expected = transform(ref, kind, rotation, translation)
            scale = float(expected.detach().abs().max()) or 1.0
            worst = max(worst, float((out - expected).detach().abs().max()) / scale)
            torch.testing.assert_close(
                out,
                expected,
                rtol=rtol,
                atol=rtol * scale,
                msg=lambda m, i=index, k=kind: f"output {i} ({k}) is not equivariant: {m}",
            )
    return worst


def _as_tuple(value: Tensor | Sequence[Tensor]) -> tuple[Tensor, ...]:
    return (value,) if isinstance(value, Tensor) else tuple(value)
