"""Batched inference: many structures through the model at once instead of one ASE call each.

    predictor = BatchedPredictor.from_checkpoint("runs/demo/export", level_of_theory="pbe")
    result = predictor.predict(list_of_atoms)      # energies [B] eV, forces [n_i, 3] eV/Å, stresses [B, 6]

A predictor is the batched face of an :class:`~model.calculator.AtomFMCalculator`: it takes the same
options (level of theory, charge, spin, domain, force mode; validated there) and gives the same numbers
the calculator gives one structure at a time, for a list of structures packed into batches of at most
``max_atoms`` atoms. Relaxing many structures at once is :mod:`model.batched_relax`.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from ase import Atoms
from ase.stress import full_3x3_to_voigt_6_stress

from model.atomfm import AtomFM
from model.calculator import AtomFMCalculator

DEFAULT_MAX_ATOMS = 2048  # atoms per model call: large enough to batch small cells, small enough for CPUs


@dataclass
class BatchedPrediction:
    """Per structure: ``energies`` [B] eV, ``forces`` B arrays [n_i, 3] eV/Å, ``stresses`` [B, 6] eV/Å³ in
    ASE's Voigt order (NaN rows for non-periodic structures)."""

    energies: np.ndarray
    forces: list[np.ndarray]
    stresses: np.ndarray


class BatchedPredictor:
    """Energies, forces and stresses of many structures, ``max_atoms`` atoms per model call."""

    def __init__(self, calculator: AtomFMCalculator, max_atoms: int = DEFAULT_MAX_ATOMS) -> None:
        if max_atoms < 1:
            raise ValueError(f"max_atoms must be at least 1, got {max_atoms}")
        self.calculator = calculator
        self.max_atoms = max_atoms

    @classmethod
    def from_model(
        cls, model: AtomFM, max_atoms: int = DEFAULT_MAX_ATOMS, **options: Any
    ) -> BatchedPredictor:
        """``options`` are :class:`AtomFMCalculator`'s (``level_of_theory``, ``charge``, ``spin``, ...)."""
        return cls(AtomFMCalculator(model, **options), max_atoms)

    @classmethod
    def from_checkpoint(
        cls,
        path: str | os.PathLike,
        max_atoms: int = DEFAULT_MAX_ATOMS,
        dtype: torch.dtype = torch.float64,
        device: str | torch.device | None = None,
        **options: Any,
    ) -> BatchedPredictor:
        """The model in an export or training checkpoint folder, as :meth:`AtomFMCalculator.from_checkpoint`."""
        return cls(AtomFMCalculator.from_checkpoint(path, dtype=dtype, device=device, **options), max_atoms)

    @property
    def model(self) -> AtomFM:
        return self.calculator.model

    def predict(self, atoms_list: list[Atoms]) -> BatchedPrediction:
        """Predictions for every structure of ``atoms_list``, in order."""
        energies = np.zeros(len(atoms_list))
        forces: list[np.ndarray] = [np.zeros((0, 3))] * len(atoms_list)
        stresses = np.full((len(atoms_list), 6), np.nan)
        for indices in self.chunks(atoms_list):
            out = self._predict_chunk([atoms_list[i] for i in indices])
            energy = out["energy"].detach().cpu().double().numpy()
            split = torch.split(out["forces"].detach(), [len(atoms_list[i]) for i in indices])
            for row, i in enumerate(indices):
                energies[i] = energy[row]
                forces[i] = split[row].cpu().double().numpy()
                if "stress" in out and atoms_list[i].pbc.any():
                    stresses[i] = full_3x3_to_voigt_6_stress(
                        out["stress"][row].detach().cpu().double().numpy()
                    )
        return BatchedPrediction(energies, forces, stresses)

    def chunks(self, atoms_list: list[Atoms]) -> Iterator[list[int]]:
        """Indices of consecutive structures, at most ``max_atoms`` atoms together (a larger structure alone)."""
        chunk: list[int] = []
        size = 0
        for i, atoms in enumerate(atoms_list):
            if chunk and size + len(atoms) > self.max_atoms:
                yield chunk
                chunk, size = [], 0
            chunk.append(i)
            size += len(atoms)
        if chunk:
            yield chunk

    def _predict_chunk(self, atoms_list: list[Atoms]) -> dict[str, torch.Tensor]:
        calc = self.calculator
        batch = calc.batch_of(atoms_list)
        calc._warn_outside_training(batch)
        periodic = any(bool(atoms.pbc.any()) for atoms in atoms_list)
        outputs = ("energy", "forces") + (("stress",) if periodic else ())
        return self.model(batch, outputs=outputs, conservative=calc.conservative)
