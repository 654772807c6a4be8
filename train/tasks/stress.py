"""Stress regression on clean periodic structures with a stress label."""

from __future__ import annotations

from dataclasses import dataclass

from torch import Tensor

from data_pipeline.batch import AtomBatch
from train.tasks.base import LossTerms, Task
from train.tasks.corruption import CorruptionState
from train.tasks.errors import RegressionSettings, pointwise_error


@dataclass
class StressSettings(RegressionSettings):
    """error: mse | l1 | huber over the nine components, in eV/Å³."""


class StressRegression(Task):
    """Error of the model's stress (1/V ∂E/∂ε, a derivative of the energy) per labelled periodic structure."""

    name = "stress"
    Settings = StressSettings
    outputs = ("stress",)

    def loss_terms(self, batch: AtomBatch, out: dict[str, Tensor], state: CorruptionState) -> LossTerms:
        periodic = batch.pbc.reshape(-1, 3).any(dim=1)
        keep = batch.has_stress.bool() & periodic & state.clean
        pred = out["stress"][keep]
        s = self.settings
        error = pointwise_error(pred, batch.stress[keep].to(pred.dtype), s.error, s.huber_delta)
        return LossTerms(values=error, domain=batch.domain[keep])
