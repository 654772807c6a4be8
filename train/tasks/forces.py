"""Force regression on every atom of a clean structure with labelled forces."""

from __future__ import annotations

from dataclasses import dataclass

from torch import Tensor

from data_pipeline.batch import AtomBatch
from train.tasks.base import LossTerms, Task
from train.tasks.corruption import CorruptionState
from train.tasks.errors import RegressionSettings, pointwise_error


@dataclass
class ForcesSettings(RegressionSettings):
    """error: l2 (per-atom Euclidean norm, fairchem's l2mae) | mse | l1 | huber, in eV/Å."""

    error: str = "l2"


class ForceRegression(Task):
    """Error of the ``forces`` output per atom: −∂E/∂x with ``model.conservative_forces``, else the direct head."""

    name = "forces"
    Settings = ForcesSettings
    outputs = ("forces",)

    def loss_terms(self, batch: AtomBatch, out: dict[str, Tensor], state: CorruptionState) -> LossTerms:
        keep = (batch.has_forces.bool() & state.clean)[batch.batch]
        pred = out["forces"][keep]
        s = self.settings
        error = pointwise_error(pred, batch.forces[keep].to(pred.dtype), s.error, s.huber_delta)
        return LossTerms(values=error, domain=batch.domain[batch.batch[keep]])
