"""Pseudo-label replay: the replayed pretraining structures learn the initial model's own answers.

With ``finetune.replay`` the stream mixes a share of the pretraining corpus into every batch
(``StreamConfig.replay_corpus``; ``batch.replay`` marks those structures). With ``pseudo_label: true`` (MACE's
pseudo-label replay) a frozen copy of the weights the run started from (``model.init_from``, loaded again
on a resume) predicts their energies and forces under ``no_grad`` before the batch is corrupted, and the
predictions replace their labels: replay then holds the model near what it was, on every structure it
replays, whatever labels (or none) the pretraining corpus had. Stress labels of replayed structures are
replaced too when the initial model is conservative, and dropped otherwise.
"""

from __future__ import annotations

import os

import torch

from data_pipeline.batch import AtomBatch
from data_pipeline.schema import BadInputError
from model.atomfm import AtomFM
from model.checkpoint_io import load_model
from model.predict import force_kind


class PseudoLabeller:
    """Replaces the labels of a batch's replayed structures by a frozen model's predictions, in place."""

    def __init__(self, model: AtomFM) -> None:
        self.model = model.eval().requires_grad_(False)
        self.conservative = force_kind(model) == "conservative"

    @classmethod
    def from_checkpoint(cls, path: str | os.PathLike, device: torch.device) -> PseudoLabeller:
        from train.run_setup import _weights_folder

        return cls(load_model(_weights_folder(path), dtype=torch.float32).to(device))

    def __call__(self, batch: AtomBatch) -> int:
        """Pseudo-label the structures with ``batch.replay``; returns how many there were."""
        replayed = batch.replay.bool()
        count = int(replayed.sum())
        if count == 0:
            return 0
        known = len(self.model.config.levels_of_theory)
        if int(batch.level_of_theory[replayed].max()) >= known:
            raise BadInputError(
                "a replayed structure is labelled at a level of theory the initial model does not know; "
                "replay a corpus of the levels it was trained on",
                field="finetune.replay.corpus",
            )
        outputs = ("energy", "forces", "stress") if self.conservative else ("energy", "forces")
        with torch.no_grad():
            pred = self.model(batch, outputs, conservative=self.conservative)
        atoms = replayed[batch.batch]
        batch.energy[replayed] = pred["energy"][replayed].detach().to(batch.energy.dtype)
        batch.forces[atoms] = pred["forces"][atoms].detach().to(batch.forces.dtype)
        batch.has_energy[replayed] = True
        batch.has_forces[replayed] = True
        if "stress" in pred:
            batch.stress[replayed] = pred["stress"][replayed].detach().to(batch.stress.dtype)
        else:
            batch.has_stress[replayed] = False
        return count
