"""Structure-property regression (a HOMO–LUMO gap, a dipole moment) through the ``properties`` head."""

from __future__ import annotations

from dataclasses import dataclass

from torch import Tensor

from data_pipeline.batch import AtomBatch
from train.tasks.base import LossTerms, Task
from train.tasks.corruption import CorruptionState
from train.tasks.errors import RegressionSettings, pointwise_error


@dataclass
class PropertySettings(RegressionSettings):
    """error: mse | l1 | huber, in the property's units (eV for a gap); huber_delta likewise."""


class PropertyRegression(Task):
    """Error of each ``properties`` column against the structure property of the same name (the head's
    ``names``, which the stream carries as ``batch.properties``), per labelled clean structure and property."""

    name = "property"
    Settings = PropertySettings
    outputs = ("properties",)

    def loss_terms(self, batch: AtomBatch, out: dict[str, Tensor], state: CorruptionState) -> LossTerms:
        pred = out["properties"]
        if pred.shape[1] != batch.properties.shape[1]:
            raise ValueError(
                f"the properties head predicts {pred.shape[1]} properties, the batch carries "
                f"{batch.properties.shape[1]}: name them in model.overrides.head_options.properties.names"
            )
        keep = batch.has_properties.bool() & state.clean[:, None]
        rows = keep.nonzero()[:, 0]
        target = batch.properties.to(pred.dtype)[keep]
        s = self.settings
        error = pointwise_error(pred[keep][:, None], target[:, None], s.error, s.huber_delta)
        return LossTerms(values=error, domain=batch.domain[rows])
