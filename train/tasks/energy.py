"""Energy regression where a structure carries an energy label, at its own level of theory, per atom."""

from __future__ import annotations

from dataclasses import dataclass

from torch import Tensor

from data_pipeline.batch import AtomBatch
from train.tasks.base import LossTerms, Task
from train.tasks.corruption import CorruptionState
from train.tasks.errors import RegressionSettings, pointwise_error


@dataclass
class EnergySettings(RegressionSettings):
    """error: mse | l1 | huber (on energy per atom, eV/atom); huber_delta: eV/atom."""


class EnergyRegression(Task):
    """(E_pred − E) / N per clean, labelled structure; the model is conditioned on the label's level of theory,
    so labels from xTB, amber14 and DFT train the same backbone without being mixed up."""

    name = "energy"
    Settings = EnergySettings
    outputs = ("energy",)

    def loss_terms(self, batch: AtomBatch, out: dict[str, Tensor], state: CorruptionState) -> LossTerms:
        keep = batch.has_energy.bool() & state.clean
        natoms = batch.natoms[keep].to(out["energy"].dtype)
        pred = out["energy"][keep] / natoms
        target = batch.energy[keep].to(pred.dtype) / natoms
        s = self.settings
        error = pointwise_error(pred[:, None], target[:, None], s.error, s.huber_delta)
        return LossTerms(values=error, domain=batch.domain[keep])
