"""Pointwise error functions the regression tasks choose from by name."""

from __future__ import annotations

from dataclasses import dataclass

import torch.nn.functional as F
from torch import Tensor

from train.tasks.base import TaskSettings

ERROR_KINDS = ("mse", "l1", "huber", "l2")


def pointwise_error(prediction: Tensor, target: Tensor, kind: str, huber_delta: float = 0.01) -> Tensor:
    """Error per row [M] of ``prediction`` and ``target`` [M, ...] (component errors averaged over the row).

    mse: mean squared; l1: mean absolute; huber: mean Huber with ``huber_delta``; l2: Euclidean norm of the
    row's difference (fairchem's "l2mae" for force vectors).
    """
    diff = (prediction - target).flatten(start_dim=1)
    if kind == "mse":
        return diff.pow(2).mean(dim=1)
    if kind == "l1":
        return diff.abs().mean(dim=1)
    if kind == "huber":
        return F.huber_loss(
            diff, diff.new_zeros(()).expand_as(diff), reduction="none", delta=huber_delta
        ).mean(dim=1)
    if kind == "l2":
        return diff.pow(2).sum(dim=1).clamp_min(1e-12).sqrt()
    raise ValueError(f"unknown error kind {kind!r}; expected one of {', '.join(ERROR_KINDS)}")


@dataclass
class RegressionSettings(TaskSettings):
    """error: one of ``ERROR_KINDS``; huber_delta: in the label's units."""

    error: str = "mse"
    huber_delta: float = 0.01

    def problems(self) -> dict[str, str]:
        out = super().problems()
        if self.error not in ERROR_KINDS:
            out["error"] = f"unknown error {self.error!r}; expected one of {', '.join(ERROR_KINDS)}"
        if self.huber_delta <= 0:
            out["huber_delta"] = f"must be positive, got {self.huber_delta}"
        return out
