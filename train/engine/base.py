"""What the trainer needs from an engine (DeepSpeed or DDP), and the pieces both engines share."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Protocol

import torch
from torch import Tensor, nn

from data_pipeline.batch import AtomBatch


class TrainEngine(Protocol):
    """One optimiser step is ``grad_accum_steps`` calls of forward → backward → step.

    ``step`` applies the optimiser only at the end of an accumulation window; ``is_boundary`` says whether the
    next ``step`` will. ``module`` is the bare model (for the EMA and for building batches).
    """

    module: nn.Module

    def forward(
        self, batch: AtomBatch, outputs: tuple[str, ...], conservative: bool
    ) -> dict[str, Tensor]: ...

    def backward(self, loss: Tensor) -> None: ...

    @property
    def is_boundary(self) -> bool: ...

    def step(self) -> float | None:
        """Advance one micro-batch; at a boundary apply the optimiser and return the global gradient norm.

        Gradients that are non-finite on any rank skip the update on every rank (no optimiser or schedule
        step, the gradients dropped) and set ``step_skipped``."""

    step_skipped: bool  # whether the last boundary's update was skipped for non-finite gradients

    def lr(self) -> float: ...

    def full_gradients(self) -> dict[str, Tensor]:
        """Reduced gradients by parameter name (collective; between backward and step at a boundary)."""

    def save(self, directory: Path) -> None:
        """Write model, optimiser and scheduler state into ``directory`` (collective)."""

    def load(self, directory: Path, *, saved_world_size: int, scratch: Path) -> None:
        """Restore what :meth:`save` wrote (collective), also when ``saved_world_size`` processes wrote it and
        this run has another number: then ``scratch`` (a folder on storage every rank sees) may hold the state
        resharded for this world size while it loads."""


def parameter_groups(
    model: nn.Module, weight_decay: float, plan: dict[str, tuple[float, int]] | None = None
) -> list[dict[str, Any]]:
    """AdamW groups: weight decay on matrices, none on biases, norms and other 1-D parameters; with a
    fine-tuning ``plan`` (name → (learning-rate scale, first step it trains), ``train.finetune``), one group
    per (decay, scale, first step), carrying ``lr_scale`` and ``train_from`` for the schedule."""
    groups: dict[tuple[bool, float, int], list[nn.Parameter]] = {}
    for name, p in model.named_parameters():
        if p.requires_grad:
            scale, start = (plan or {}).get(name, (1.0, 0))
            groups.setdefault((p.ndim >= 2, scale, start), []).append(p)
    if plan is None:
        return [
            {"params": groups.get((decay, 1.0, 0), []), "weight_decay": weight_decay if decay else 0.0}
            for decay in (True, False)
        ]
    return [
        {
            "params": params,
            "weight_decay": weight_decay if decay else 0.0,
            "lr_scale": scale,
            "train_from": start,
        }
        for (decay, scale, start), params in sorted(
            groups.items(), key=lambda kv: (not kv[0][0], -kv[0][1], kv[0][2])
        )
    ]


def nonfinite_gradient_ranks(
    parameters: list[nn.Parameter], all_reduce_sum: Any, rank: int, world: int
) -> list[int]:
    """The ranks whose gradients hold a NaN or an infinity (collective: every rank learns the same list)."""
    local = any(bool((~torch.isfinite(p.grad)).any()) for p in parameters if p.grad is not None)
    flags = torch.zeros(world, dtype=torch.float64)
    flags[rank] = float(local)
    return [r for r, bad in enumerate(all_reduce_sum(flags).tolist()) if bad]


def global_grad_norm(parameters: list[nn.Parameter]) -> float:
    """L2 norm of all ``.grad`` (already reduced over ranks)."""
    grads = [p.grad.detach().float() for p in parameters if p.grad is not None]
    if not grads:
        return 0.0
    return float(torch.linalg.vector_norm(torch.stack([torch.linalg.vector_norm(g) for g in grads])))
