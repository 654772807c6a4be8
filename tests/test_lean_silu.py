"""model.lean_silu: the SiLU / odd SiLU whose backward passes keep little, against autograd's own formulas.

Its derivatives are written out by hand (and computed in place, one sigmoid for both orders), so they are
checked here value by value against autograd differentiating the plain formulas, first and second order,
with and without a block of pseudo channels, in float64.
"""

from __future__ import annotations

import pytest
import torch

from model.lean_silu import lean_silu
from model.parity import pseudo_count, pseudo_mask


def reference(x: torch.Tensor, pseudo: int) -> torch.Tensor:
    """SiLU on the polar channels and x sigmoid(x²) on the last ``pseudo`` ones, by autograd's own ops."""
    polar = torch.nn.functional.silu(x)
    if not pseudo:
        return polar
    odd = x * torch.sigmoid(x * x)
    return torch.cat([polar[..., :-pseudo], odd[..., -pseudo:]], dim=-1)


@pytest.mark.parametrize("pseudo", [0, 3, 8])
def test_values_first_and_second_derivatives_equal_autograds(pseudo):
    gen = torch.Generator().manual_seed(0)
    x = (3 * torch.randn(5, 7, 8, generator=gen, dtype=torch.float64)).requires_grad_(True)
    upstream = torch.randn(5, 7, 8, generator=gen, dtype=torch.float64)
    outer = torch.randn(5, 7, 8, generator=gen, dtype=torch.float64)
    results = []
    for fn in (lambda t: lean_silu(t, pseudo), lambda t: reference(t, pseudo)):
        g = upstream.clone().requires_grad_(True)
        y = fn(x)
        (first,) = torch.autograd.grad(y, x, g, create_graph=True)
        # a conservative-force loss differentiates the first derivative again, in x and in the upstream gradient
        second_x, second_g = torch.autograd.grad((first * outer).sum(), (x, g))
        results.append((y.detach(), first.detach(), second_x, second_g))
    for ours, theirs in zip(*results, strict=True):
        torch.testing.assert_close(ours, theirs, rtol=1e-12, atol=1e-12)
    # where no graph is built (direct forces, inference) the first derivative takes the fused path
    (plain,) = torch.autograd.grad(lean_silu(x, pseudo), x, upstream)
    torch.testing.assert_close(plain, results[1][1], rtol=1e-12, atol=1e-12)


def test_second_derivatives_pass_gradgradcheck():
    x = torch.randn(4, 6, dtype=torch.float64, generator=torch.Generator().manual_seed(1)).requires_grad_(True)
    assert torch.autograd.gradgradcheck(lambda t: lean_silu(t, 2), (x,))


def test_pseudo_channels_must_be_the_last_block():
    assert pseudo_count(pseudo_mask(8, 0.25)) == 2
    assert pseudo_count(pseudo_mask(8, 0.0)) == 0
    with pytest.raises(ValueError, match="last block"):
        pseudo_count(torch.tensor([True, False, False, True]))
