"""Activation checkpointing of a layer that holds for a double backward too (conservative-force training).

``torch.utils.checkpoint`` keeps a layer's inputs and recomputes the layer in the backward pass. But when
that backward builds a graph (``create_graph=True``: forces −∂E/∂x that a loss differentiates again), the
recomputed activations and the backward's own intermediates are all kept for the second backward, so a
conservative-force step still holds every layer's activations at once. Here the layer's vector-Jacobian
product is itself a checkpointed function (:class:`_LayerVJP`): the first backward keeps only each layer's
inputs and the gradient of its output, and the second backward recomputes one layer's forward and first
backward at a time, holding that one layer's graph.

The cost: a direct-force step recomputes each layer's forward once (as ``torch.utils.checkpoint`` does); a
conservative step recomputes it twice and its first backward once. Gradients are those of the plain layer
(the same operations in the same order). Derivatives of third order are not supported.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch
from torch import Tensor
from torch.autograd.function import once_differentiable


def checkpoint_layer(layer: Callable[..., Tensor], params: Sequence[Tensor], *inputs: Tensor) -> Tensor:
    """``layer(*inputs)`` (one tensor out), keeping only ``inputs`` for the backward passes.

    ``params``: the tensors ``layer`` reads besides ``inputs`` that gradients must reach (its module's
    parameters). Integer inputs (edge indices) pass through untouched.
    """
    trainable = [p for p in params if p.requires_grad]
    return _Checkpointed.apply(layer, len(inputs), *inputs, *trainable)


class _Recompute:
    """Runs the layer again as it ran in the forward pass: under the same autocast state, with the given
    inputs as fresh leaves that require grad where ``needs_grad`` says."""

    def __init__(self, layer: Callable[..., Tensor], device_type: str) -> None:
        self.layer, self.device_type = layer, device_type
        self.autocast = torch.is_autocast_enabled(device_type)
        self.autocast_dtype = torch.get_autocast_dtype(device_type)

    def __call__(self, inputs: Sequence[Tensor], needs_grad: Sequence[bool]) -> tuple[Tensor, list[Tensor]]:
        leaves = [t.detach().requires_grad_(need) for t, need in zip(inputs, needs_grad, strict=True)]
        with torch.autocast(self.device_type, dtype=self.autocast_dtype, enabled=self.autocast):
            return self.layer(*leaves), leaves


class _Checkpointed(torch.autograd.Function):
    @staticmethod
    def forward(ctx, layer: Callable[..., Tensor], num_inputs: int, *tensors: Tensor) -> Tensor:  # noqa: ANN001
        inputs = tensors[:num_inputs]
        ctx.recompute = _Recompute(layer, inputs[0].device.type)
        ctx.num_inputs, ctx.params = num_inputs, tensors[num_inputs:]
        ctx.save_for_backward(*inputs)
        with torch.no_grad():
            return layer(*inputs)

    @staticmethod
    def backward(ctx, grad_output: Tensor) -> tuple[Tensor | None, ...]:  # noqa: ANN001
        inputs = ctx.saved_tensors
        needs_grad = [bool(need) for need in ctx.needs_input_grad[2 : 2 + ctx.num_inputs]]
        grads = _LayerVJP.apply(ctx.recompute, needs_grad, len(inputs), grad_output, *inputs, *ctx.params)
        grads = iter(grads)
        input_grads = [next(grads) if need else None for need in needs_grad]
        return None, None, *input_grads, *grads


class _LayerVJP(torch.autograd.Function):
    """(grad_output, inputs, params) -> gradients of the layer's output . grad_output with respect to the
    inputs that need them and to the params; differentiable once more, by recomputation."""

    @staticmethod
    def forward(
        ctx,
        recompute: _Recompute,
        needs_grad: list[bool],
        num_inputs: int,
        grad_output: Tensor,
        *tensors: Tensor,
    ) -> tuple[Tensor, ...]:  # noqa: ANN001, E501
        inputs, params = tensors[:num_inputs], tensors[num_inputs:]
        ctx.recompute, ctx.needs_grad, ctx.params = recompute, needs_grad, params
        ctx.save_for_backward(grad_output, *inputs)
        with torch.enable_grad():
            output, leaves = recompute(inputs, needs_grad)
            wrt = [leaf for leaf, need in zip(leaves, needs_grad, strict=True) if need] + list(params)
            return tuple(torch.autograd.grad(output, wrt, grad_output, materialize_grads=True))

    @staticmethod
    @once_differentiable
    def backward(ctx, *grad_grads: Tensor) -> tuple[Tensor | None, ...]:  # noqa: ANN001
        grad_output, *inputs = ctx.saved_tensors
        with torch.enable_grad():
            output, leaves = ctx.recompute(inputs, ctx.needs_grad)
            wanted = [leaf for leaf, need in zip(leaves, ctx.needs_grad, strict=True) if need]
            wanted += list(ctx.params)
            upstream = grad_output.detach().requires_grad_(True)
            first = torch.autograd.grad(output, wanted, upstream, create_graph=True, materialize_grads=True)
            pairs = [
                (f, g) for f, g in zip(first, grad_grads, strict=True) if g is not None and f.requires_grad
            ]
            if not pairs:  # nothing downstream reads these gradients
                return None, None, None, None, *(None for _ in inputs), *(None for _ in ctx.params)
            second = torch.autograd.grad(
                [f for f, _ in pairs],
                [upstream, *wanted],
                [g for _, g in pairs],
                allow_unused=True,
                materialize_grads=True,
            )
        grad_upstream, *rest = second
        rest = iter(rest)
        input_grads = [next(rest) if need else None for need in ctx.needs_grad]
        return None, None, None, grad_upstream, *input_grads, *rest
