"""Coordinate denoising (Zaidi et al. 2022): jostle atoms with Gaussian noise and predict the noise."""

from __future__ import annotations

from dataclasses import dataclass

from torch import Tensor

from data_pipeline.batch import AtomBatch
from train.tasks.base import LossTerms, Task, TaskSettings
from train.tasks.corruption import CorruptionState, jostle_positions


@dataclass
class NoiseSettings(TaskSettings):
    """fraction: share of eligible structures that get noised; sigma: Å, drawn log-uniform in [sigma_min, sigma_max]."""

    fraction: float = 0.5
    sigma_min: float = 0.01
    sigma_max: float = 0.1

    def problems(self) -> dict[str, str]:
        out = super().problems()
        if not 0.0 <= self.fraction <= 1.0:
            out["fraction"] = f"must be in [0, 1], got {self.fraction}"
        if not 0.0 < self.sigma_min <= self.sigma_max:
            out["sigma_max"] = f"need 0 < sigma_min <= sigma_max, got {self.sigma_min} and {self.sigma_max} Å"
        return out


@dataclass
class DenoiseSettings(NoiseSettings):
    """fraction: share of the structures not already noised (by DeNS) that get noised; sigma: Å, log-uniform."""


class CoordinateDenoising(Task):
    """pos ← pos + σ ε with σ per structure; the ``noise`` head predicts ε for every atom of a noised structure.

    The loss per atom is the mean squared error over the three components; the restoring force the model
    learns is −σ ε, i.e. the direction back to the (near-)equilibrium structure.
    """

    name = "denoise"
    Settings = DenoiseSettings
    outputs = ("noise",)

    def corrupt(self, batch: AtomBatch, state: CorruptionState) -> None:
        s = self.settings
        jostle_positions(batch, state, self.name, ~state.noised, s.fraction, s.sigma_min, s.sigma_max)

    def loss_terms(self, batch: AtomBatch, out: dict[str, Tensor], state: CorruptionState) -> LossTerms:
        return noise_prediction_terms(batch, out, state, state.claimed[self.name])


def noise_prediction_terms(
    batch: AtomBatch, out: dict[str, Tensor], state: CorruptionState, structures: Tensor
) -> LossTerms:
    """Per-atom MSE between the ``noise`` output and ε over the atoms of ``structures`` [B] bool."""
    atoms = structures[batch.batch]
    error = (out["noise"][atoms] - state.noise_target[atoms].to(out["noise"].dtype)).pow(2).mean(dim=-1)
    return LossTerms(values=error, domain=batch.domain[batch.batch[atoms]])
