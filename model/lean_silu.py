"""SiLU and the odd SiLU of pseudo channels as autograd functions that keep little for backward passes.

Autograd's own SiLU keeps its input for the backward pass; but a conservative-force loss differentiates the
backward again, and the graph of SiLU's backward formula keeps about five tensors of the input's size for
that (the sigmoid, its complement, products). On the S² grid of the feed-forward activation, the widest
per-atom tensor of the model, that was a sixth of a conservative-force step's memory. Here the first
backward is one function of (input, incoming gradient) that keeps just those two, and whose own backward
(the second derivative) recomputes the rest; values are the same as autograd's up to round-off.
Third derivatives are not supported.

    silu(x)      = x sigmoid(x)          silu'      = s (1 + x (1 - s)),          s = sigmoid(x)
    odd_silu(x)  = x sigmoid(x²)         odd_silu'  = t + 2 x² t (1 - t),         t = sigmoid(x²)
    silu''       = s (1 - s) (2 + x (1 - 2 s))          odd_silu'' = 2 x t (1 - t) (3 + 2 x² (1 - 2 t))
"""

from __future__ import annotations

import torch
from torch import Tensor, nn
from torch.autograd.function import once_differentiable


def lean_silu(x: Tensor, pseudo: int = 0) -> Tensor:
    """SiLU of x [..., C], or with ``pseudo`` > 0 the odd SiLU x sigmoid(x²) on the last ``pseudo`` channels
    (the pseudo channels of :func:`model.parity.pseudo_mask`, always the last block of a width)."""
    return _SiLU.apply(x, pseudo)


class LeanSiLU(nn.Module):
    """:func:`lean_silu` as a module (no parameters: a drop-in for ``nn.SiLU`` in a state dict)."""

    def forward(self, x: Tensor) -> Tensor:
        return lean_silu(x)


# Each derivative is computed for the whole width with the polar formula and then, where there are pseudo
# channels, overwritten on their block with the odd one: no branch computed for channels it does not apply
# to, no select. Inside autograd functions no graph is recorded, so the temporaries are updated in place
# (these elementwise chains are bandwidth-bound: fewer passes over the tensor are what makes them fast).


def _odd_first(x: Tensor) -> Tensor:
    """odd_silu'(x) = t (1 + 2 x² (1 - t)), t = sigmoid(x²)."""
    square = x * x
    t = torch.sigmoid(square)
    return (1 - t).mul_(square).mul_(2).add_(1).mul_(t)


def _first_times(grad: Tensor, x: Tensor, pseudo: int) -> Tensor:
    """grad * activation'(x): SiLU's fused backward kernel over the width, the odd one on the pseudo block."""
    out = torch.ops.aten.silu_backward(grad, x)
    if pseudo:
        out[..., -pseudo:] = _odd_first(x[..., -pseudo:]).mul_(grad[..., -pseudo:])
    return out


def _second_times(grad: Tensor, grad_grad: Tensor, x: Tensor, pseudo: int) -> Tensor:
    """grad * grad_grad * activation''(x): silu'' = s (1 - s) (2 + x (1 - 2 s)) as 2 + x - 2 x s (two
    passes) times the gradients, then one fused sigmoid_backward for the s (1 - s); the odd one on the
    pseudo block."""
    s = torch.sigmoid(x)
    out = torch.add(x, 2).addcmul_(x, s, value=-2).mul_(grad).mul_(grad_grad)
    out = torch.ops.aten.sigmoid_backward(out, s)
    if pseudo:
        out[..., -pseudo:] = (
            _odd_second(x[..., -pseudo:]).mul_(grad[..., -pseudo:]).mul_(grad_grad[..., -pseudo:])
        )
    return out


def _odd_second(x: Tensor) -> Tensor:
    """odd_silu''(x) = 2 x t (1 - t) (3 + 2 x² (1 - 2 t)), t = sigmoid(x²)."""
    square = x * x
    t = torch.sigmoid(square)
    a = t * (1 - t)
    return (1 - 2 * t).mul_(square).mul_(2).add_(3).mul_(a).mul_(x).mul_(2)


class _SiLU(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x: Tensor, pseudo: int) -> Tensor:  # noqa: ANN001
        ctx.pseudo = pseudo
        ctx.save_for_backward(x)
        out = nn.functional.silu(x)
        if pseudo:
            tail = x[..., -pseudo:]
            out[..., -pseudo:] = tail * torch.sigmoid(tail * tail)
        return out

    @staticmethod
    def backward(ctx, grad: Tensor) -> tuple[Tensor, None]:  # noqa: ANN001
        (x,) = ctx.saved_tensors
        if torch.is_grad_enabled():  # a backward that builds a graph (create_graph=True)
            return _SiLUBackward.apply(x, grad, ctx.pseudo), None
        return _first_times(grad, x, ctx.pseudo), None


class _SiLUBackward(torch.autograd.Function):
    """(x, grad) -> grad * activation'(x), keeping x and grad only."""

    @staticmethod
    def forward(ctx, x: Tensor, grad: Tensor, pseudo: int) -> Tensor:  # noqa: ANN001
        ctx.pseudo = pseudo
        ctx.save_for_backward(x, grad)
        return _first_times(grad, x, pseudo)

    @staticmethod
    @once_differentiable
    def backward(ctx, grad_grad: Tensor) -> tuple[Tensor, Tensor, None]:  # noqa: ANN001
        x, grad = ctx.saved_tensors
        p = ctx.pseudo
        return _second_times(grad, grad_grad, x, p), _first_times(grad_grad, x, p), None
