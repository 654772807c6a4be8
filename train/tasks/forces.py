"""Force regression on every atom of a clean structure with labelled forces."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from torch import Tensor

from train.tasks.base import LossTerms, Task, TaskSettings
from train.tasks.corruption import CorruptionState
from train.tasks.errors import ERROR_KINDS, pointwise_error


@dataclass
class ForcesSettings(TaskSettings):
    """error: l2 (per-atom Euclidean norm, fairchem's l2mae) | mse | l1 | huber, in eV/Å."""

    error: str = "l2"
    huber_delta: float = 0.01

    def problems(self) -> dict[str, str]:
        out = super().problems()
        if self.error not in ERROR_KINDS:
            out["error"] = f"unknown error {self.error!r}; expected one of {', '.join(ERROR_KINDS)}"
        if self.huber_delta <= 0:
            out["huber_delta"] = f"must be positive, got {self.huber_delta}"
        return out


class ForceRegression(Task):
    """Error of the ``forces`` output per atom: −∂E/∂x with ``model.conservative_forces``, else the direct head."""

    name = "forces"
    Settings = ForcesSettings
    outputs = ("forces",)

    def loss_terms(self, batch: Any, out: dict[str, Tensor], state: CorruptionState) -> LossTerms:
        keep = (batch.has_forces.bool() & state.clean)[batch.batch]
        pred = out["forces"][keep]
        s = self.settings
        error = pointwise_error(pred, batch.forces[keep].to(pred.dtype), s.error, s.huber_delta)
        return LossTerms(values=error, domain=batch.domain[batch.batch[keep]])
