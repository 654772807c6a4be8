"""Masked atom types: hide a fraction of the elements (z = 0) and predict them with the ``atom_logits`` head."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

from data_pipeline.batch import AtomBatch
from train.tasks.base import LossTerms, Task, TaskSettings
from train.tasks.corruption import CorruptionState


@dataclass
class MaskedAtomsSettings(TaskSettings):
    """structure_fraction: share of the structures that get masked atoms; atom_fraction: share of their atoms
    hidden (at least one per chosen structure)."""

    structure_fraction: float = 0.25
    atom_fraction: float = 0.15

    def problems(self) -> dict[str, str]:
        out = super().problems()
        for name in ("structure_fraction", "atom_fraction"):
            if not 0.0 <= getattr(self, name) <= 1.0:
                out[name] = f"must be in [0, 1], got {getattr(self, name)}"
        return out


class MaskedAtomTypes(Task):
    """Cross-entropy of the true element at every hidden atom."""

    name = "masked_atoms"
    Settings = MaskedAtomsSettings
    outputs = ("atom_logits",)

    def corrupt(self, batch: AtomBatch, state: CorruptionState) -> None:
        s = self.settings
        chosen = torch.zeros(state.num_graphs, dtype=torch.bool)
        natoms = batch.natoms.cpu().tolist()
        starts = np.concatenate([[0], np.cumsum(natoms)[:-1]]).tolist()
        hidden = []
        for g, key in enumerate(batch.key):
            rng = state.rng(self.name, key)
            if rng.random() >= s.structure_fraction:
                continue
            chosen[g] = True
            count = max(1, int(round(s.atom_fraction * natoms[g])))
            hidden.append(starts[g] + rng.choice(natoms[g], size=count, replace=False))
        if hidden:
            atoms = torch.from_numpy(np.concatenate(hidden)).to(batch.z.device)
            state.masked_atoms[atoms] = True
            batch.z = batch.z.masked_fill(state.masked_atoms, 0)
        state.claimed[self.name] = chosen.to(batch.z.device)

    def loss_terms(self, batch: AtomBatch, out: dict[str, Tensor], state: CorruptionState) -> LossTerms:
        atoms = state.masked_atoms
        logits = out["atom_logits"][atoms].float()
        error = F.cross_entropy(logits, state.true_z[atoms], reduction="none")
        return LossTerms(values=error, domain=batch.domain[batch.batch[atoms]])
