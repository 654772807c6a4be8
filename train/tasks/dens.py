"""DeNS-style denoising of non-equilibrium structures (Liao et al. 2024).

A structure with labelled forces is not at a minimum, so "back to the input" is not a well-defined target for
plain denoising. DeNS gives the model the clean forces as an extra input alongside the noisy positions,
which makes the noise it must predict well defined again.
"""

from __future__ import annotations

from dataclasses import dataclass

from torch import Tensor

from data_pipeline.batch import AtomBatch
from train.tasks.base import LossTerms, Task
from train.tasks.corruption import CorruptionState, jostle_positions
from train.tasks.denoise import NoiseSettings, noise_prediction_terms


@dataclass
class DeNSSettings(NoiseSettings):
    """fraction: share of the force-labelled structures that get noised; sigma: Å, log-uniform."""


class DeNS(Task):
    """Noise force-labelled structures, set ``batch.dens_forces`` to their clean forces (zero for every other
    atom), and predict ε with the ``noise`` head."""

    name = "dens"
    Settings = DeNSSettings
    outputs = ("noise",)

    def corrupt(self, batch: AtomBatch, state: CorruptionState) -> None:
        s = self.settings
        candidates = batch.has_forces.bool() & ~state.noised
        chosen = jostle_positions(batch, state, self.name, candidates, s.fraction, s.sigma_min, s.sigma_max)
        batch.dens_forces = batch.forces * chosen[batch.batch, None].to(batch.forces.dtype)

    def loss_terms(self, batch: AtomBatch, out: dict[str, Tensor], state: CorruptionState) -> LossTerms:
        return noise_prediction_terms(batch, out, state, state.claimed[self.name])
