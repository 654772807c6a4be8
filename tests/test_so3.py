"""Spherical harmonics, Wigner-D matrices and edge frames (model/so3.py)."""

from __future__ import annotations

import math

import pytest
import torch
from equivariance import random_rotation

from model.activation import s2_grid_projections
from model.so2_conv import SO2Convolution
from model.so3 import (
    CoefficientLayout,
    edge_frame_rotation,
    edge_rotation,
    l1_to_vector,
    rotate_from_edge_frame,
    rotate_to_edge_frame,
    spherical_harmonics,
    vector_to_l1,
    wigner_d,
)

LMAX = 6
AXES = (
    torch.tensor([[1.0, 0, 0], [-1, 0, 0], [0, 1, 0], [0, -1, 0], [0, 0, 1], [0, 0, -1]], dtype=torch.float64)
    * 1.7
)


def _rotations(count: int, seed: int = 0) -> torch.Tensor:
    generator = torch.Generator().manual_seed(seed)
    return torch.stack([random_rotation(generator) for _ in range(count)])


def test_wigner_d_rotates_spherical_harmonics_up_to_l6():
    rotations = _rotations(4)
    points = torch.randn(4, 10, 3, dtype=torch.float64, generator=torch.Generator().manual_seed(1))
    harmonics = spherical_harmonics(LMAX, points)
    rotated = spherical_harmonics(LMAX, torch.einsum("rij,rpj->rpi", rotations, points))
    for ell, d in enumerate(wigner_d(rotations, LMAX)):
        block = slice(ell * ell, (ell + 1) ** 2)
        torch.testing.assert_close(
            torch.einsum("rmn,rpn->rpm", d, harmonics[..., block]), rotated[..., block]
        )


def test_wigner_d_is_an_orthogonal_representation():
    first, second = _rotations(5, seed=2), _rotations(5, seed=3)
    d_first, d_second = wigner_d(first, LMAX), wigner_d(second, LMAX)
    d_product = wigner_d(first @ second, LMAX)
    d_identity = wigner_d(torch.eye(3, dtype=torch.float64), LMAX)
    for ell in range(LMAX + 1):
        eye = torch.eye(2 * ell + 1, dtype=torch.float64)
        torch.testing.assert_close(d_product[ell], d_first[ell] @ d_second[ell])
        torch.testing.assert_close(d_first[ell] @ d_first[ell].transpose(-1, -2), eye.expand(5, -1, -1))
        torch.testing.assert_close(d_identity[ell], eye)


def test_spherical_harmonics_are_orthonormal_and_l1_is_the_direction():
    to_grid, from_grid = s2_grid_projections(LMAX, LMAX + 1)
    gram = torch.tensor(from_grid @ to_grid)
    torch.testing.assert_close(gram, torch.eye((LMAX + 1) ** 2, dtype=torch.float64))
    vectors = torch.randn(20, 3, dtype=torch.float64)
    degree_one = spherical_harmonics(1, vectors)[:, 1:4, None]
    unit = vectors / vectors.norm(dim=-1, keepdim=True)
    torch.testing.assert_close(l1_to_vector(degree_one)[..., 0], math.sqrt(3 / (4 * math.pi)) * unit)


def test_vector_to_l1_transforms_with_the_degree_one_wigner_d():
    rotation = _rotations(1, seed=4)[0]
    vectors = torch.randn(7, 3, 5, dtype=torch.float64)
    d1 = wigner_d(rotation, 1)[1]
    torch.testing.assert_close(
        vector_to_l1(torch.einsum("ij,njc->nic", rotation, vectors)), d1 @ vector_to_l1(vectors)
    )
    torch.testing.assert_close(l1_to_vector(vector_to_l1(vectors)), vectors)


@pytest.mark.parametrize("kind", ["random", "axes"])
def test_edge_rotation_takes_the_edge_to_z(kind):
    edges = torch.randn(50, 3, dtype=torch.float64) if kind == "random" else AXES
    rotation = edge_rotation(edges)
    unit = edges / edges.norm(dim=-1, keepdim=True)
    z_axis = torch.tensor([0.0, 0.0, 1.0], dtype=torch.float64).expand_as(unit)
    torch.testing.assert_close(torch.einsum("eij,ej->ei", rotation, unit), z_axis)
    torch.testing.assert_close(
        rotation @ rotation.transpose(-1, -2), torch.eye(3, dtype=torch.float64).expand_as(rotation)
    )
    torch.testing.assert_close(torch.det(rotation), torch.ones(len(edges), dtype=torch.float64))


def _edge_message(
    edge_vec: torch.Tensor, features: torch.Tensor, conv: SO2Convolution, lmax: int, mmax: int
) -> torch.Tensor:
    """Rotate features into each edge's frame, convolve, rotate back: independent of the frame's roll."""
    rotation = edge_frame_rotation(wigner_d(edge_rotation(edge_vec), lmax), mmax)
    message, _ = conv(rotate_to_edge_frame(features, rotation))
    return rotate_from_edge_frame(message, rotation)


def test_wigner_path_has_correct_first_and_second_derivatives_along_axes():
    lmax, mmax = 3, 2
    torch.manual_seed(0)
    conv = SO2Convolution(CoefficientLayout(lmax, mmax, order_major=True), 2, 2).double()
    features = torch.randn(len(AXES), (lmax + 1) ** 2, 2, dtype=torch.float64)
    edges = AXES.clone().requires_grad_(True)
    edges_off_axis = (AXES + torch.tensor([0.3, -0.2, 0.1], dtype=torch.float64)).requires_grad_(True)

    def message(e: torch.Tensor) -> torch.Tensor:
        return _edge_message(e, features, conv, lmax, mmax)

    for e in (edges, edges_off_axis):
        assert torch.autograd.gradcheck(message, (e,), fast_mode=True)
        assert torch.autograd.gradgradcheck(message, (e,), fast_mode=True)
    hessian = torch.autograd.functional.hessian(lambda e: message(e).pow(2).sum(), edges.detach())
    assert torch.isfinite(hessian).all()


def test_wigner_d_entries_have_finite_second_derivatives_along_axes():
    edges = AXES.clone().requires_grad_(True)
    total = sum(d.sum() for d in wigner_d(edge_rotation(edges), LMAX))
    (grad,) = torch.autograd.grad(total, edges, create_graph=True)
    (second,) = torch.autograd.grad(grad.pow(2).sum(), edges)
    assert torch.isfinite(grad).all() and torch.isfinite(second).all()
