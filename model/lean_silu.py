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


def lean_silu(x: Tensor, pseudo: Tensor | None = None) -> Tensor:
    """SiLU of x [..., C], or with ``pseudo`` [C] bool the odd SiLU x sigmoid(x²) on the pseudo channels
    (None: no pseudo channels, which the caller knows when it is built: no data-dependent branch here)."""
    return _SiLU.apply(x, pseudo)


class LeanSiLU(nn.Module):
    """:func:`lean_silu` as a module (no parameters: a drop-in for ``nn.SiLU`` in a state dict)."""

    def forward(self, x: Tensor) -> Tensor:
        return lean_silu(x)


def _derivatives(x: Tensor, pseudo: Tensor | None, second: bool) -> Tensor:
    """The first (or second) derivative of the activation at x."""
    s = torch.sigmoid(x)
    if second:
        polar = s * (1 - s) * (2 + x * (1 - 2 * s))
    else:
        polar = s * (1 + x * (1 - s))
    if pseudo is None:
        return polar
    square = x * x
    t = torch.sigmoid(square)
    if second:
        odd = 2 * x * t * (1 - t) * (3 + 2 * square * (1 - 2 * t))
    else:
        odd = t + 2 * square * t * (1 - t)
    return torch.where(pseudo.to(x.device), odd, polar)


class _SiLU(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x: Tensor, pseudo: Tensor | None) -> Tensor:  # noqa: ANN001
        ctx.pseudo = pseudo
        ctx.save_for_backward(x)
        polar = nn.functional.silu(x)
        if pseudo is None:
            return polar
        return torch.where(pseudo.to(x.device), x * torch.sigmoid(x * x), polar)

    @staticmethod
    def backward(ctx, grad: Tensor) -> tuple[Tensor, None]:  # noqa: ANN001
        (x,) = ctx.saved_tensors
        if torch.is_grad_enabled():  # a backward that builds a graph (create_graph=True)
            return _SiLUBackward.apply(x, grad, ctx.pseudo), None
        polar = torch.ops.aten.silu_backward(grad, x)  # one fused kernel where no graph is built
        if ctx.pseudo is None:
            return polar, None
        square = x * x
        t = torch.sigmoid(square)
        odd = grad * (t + 2 * square * t * (1 - t))
        return torch.where(ctx.pseudo.to(x.device), odd, polar), None


class _SiLUBackward(torch.autograd.Function):
    """(x, grad) -> grad * activation'(x), keeping x and grad only."""

    @staticmethod
    def forward(ctx, x: Tensor, grad: Tensor, pseudo: Tensor | None) -> Tensor:  # noqa: ANN001
        ctx.pseudo = pseudo
        ctx.save_for_backward(x, grad)
        return grad * _derivatives(x, pseudo, second=False)

    @staticmethod
    @once_differentiable
    def backward(ctx, grad_grad: Tensor) -> tuple[Tensor, Tensor, None]:  # noqa: ANN001
        x, grad = ctx.saved_tensors
        return (
            grad_grad * grad * _derivatives(x, ctx.pseudo, second=True),
            grad_grad * _derivatives(x, ctx.pseudo, second=False),
            None,
        )
