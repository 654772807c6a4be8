"""Energy regression where a structure carries an energy label, at its own level of theory, per atom."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from torch import Tensor

from train.tasks.base import LossTerms, Task, TaskSettings
from train.tasks.corruption import CorruptionState
from train.tasks.errors import ERROR_KINDS, pointwise_error


@dataclass
class EnergySettings(TaskSettings):
    """error: mse | l1 | huber (on energy per atom, eV/atom); huber_delta: eV/atom."""

    error: str = "mse"
    huber_delta: float = 0.01

    def problems(self) -> dict[str, str]:
        out = super().problems()
        if self.error not in ERROR_KINDS:
            out["error"] = f"unknown error {self.error!r}; expected one of {', '.join(ERROR_KINDS)}"
        if self.huber_delta <= 0:
            out["huber_delta"] = f"must be positive, got {self.huber_delta}"
        return out


class EnergyRegression(Task):
    """(E_pred − E) / N per clean, labelled structure; the model is conditioned on the label's level of theory,
    so labels from xTB, amber14 and DFT train the same backbone without being mixed up."""

    name = "energy"
    Settings = EnergySettings
    outputs = ("energy",)

    def loss_terms(self, batch: Any, out: dict[str, Tensor], state: CorruptionState) -> LossTerms:
        keep = batch.has_energy.bool() & state.clean
        natoms = batch.natoms[keep].to(out["energy"].dtype)
        pred = out["energy"][keep] / natoms
        target = batch.energy[keep].to(pred.dtype) / natoms
        s = self.settings
        error = pointwise_error(pred[:, None], target[:, None], s.error, s.huber_delta)
        return LossTerms(values=error, domain=batch.domain[keep])
