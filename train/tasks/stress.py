"""Stress regression on clean periodic structures with a stress label."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from torch import Tensor

from train.tasks.base import LossTerms, Task, TaskSettings
from train.tasks.corruption import CorruptionState
from train.tasks.errors import ERROR_KINDS, pointwise_error


@dataclass
class StressSettings(TaskSettings):
    """error: mse | l1 | huber over the nine components, in eV/Å³."""

    error: str = "mse"
    huber_delta: float = 0.01

    def problems(self) -> dict[str, str]:
        out = super().problems()
        if self.error not in ERROR_KINDS:
            out["error"] = f"unknown error {self.error!r}; expected one of {', '.join(ERROR_KINDS)}"
        if self.huber_delta <= 0:
            out["huber_delta"] = f"must be positive, got {self.huber_delta}"
        return out


class StressRegression(Task):
    """Error of the model's stress (1/V ∂E/∂ε, a derivative of the energy) per labelled periodic structure."""

    name = "stress"
    Settings = StressSettings
    outputs = ("stress",)

    def loss_terms(self, batch: Any, out: dict[str, Tensor], state: CorruptionState) -> LossTerms:
        periodic = batch.pbc.reshape(-1, 3).any(dim=1)
        keep = batch.has_stress.bool() & periodic & state.clean
        pred = out["stress"][keep]
        s = self.settings
        error = pointwise_error(pred, batch.stress[keep].to(pred.dtype), s.error, s.huber_delta)
        return LossTerms(values=error, domain=batch.domain[keep])
