"""Batched predictions of energy, forces and stress for many structures: what validation and evaluation read.

Structures are packed up to ``max_atoms`` per batch (a larger one gets a batch of its own), graphs are built
at the model's cutoff, and each structure is predicted at its own level of theory, charge and spin.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from dataclasses import dataclass

import numpy as np
import torch
from torch_geometric.data import Batch

from data_pipeline.graph import structure_to_graph
from data_pipeline.schema import Structure
from model.atomfm import AtomFM


@dataclass
class Prediction:
    """One structure's predictions: energy eV, forces [N, 3] eV/Å, stress [3, 3] eV/Å³ (None when not asked)."""

    energy: float
    forces: np.ndarray | None = None
    stress: np.ndarray | None = None


def force_kind(model: AtomFM) -> str:
    """``conservative`` when the checkpoint was trained on −∂E/∂x, else ``direct`` (its direct force head)."""
    return "conservative" if model.config.conservative_forces else "direct"


def predict_structures(
    model: AtomFM,
    structures: Iterable[Structure],
    *,
    forces: str | None = None,
    stress: bool = True,
    max_atoms: int = 2048,
) -> Iterator[tuple[Structure, Prediction]]:
    """(structure, prediction) in input order.

    forces: ``conservative`` (−∂E/∂x), ``direct`` (the direct head), ``none``, or None for what the model was
    trained on (:func:`force_kind`). stress: for periodic structures, as a strain derivative.
    """
    kind = force_kind(model) if forces is None else forces
    if kind not in ("conservative", "direct", "none"):
        raise ValueError(f"forces must be conservative, direct or none, got {forces!r}")
    cutoff = model.config.backbone.cutoff
    device = model.reference_energies.energies.device
    pending: list[Structure] = []
    atoms = 0
    for s in structures:
        if pending and atoms + s.num_atoms > max_atoms:
            yield from _predict_batch(model, pending, kind, stress, cutoff, device)
            pending, atoms = [], 0
        pending.append(s)
        atoms += s.num_atoms
    if pending:
        yield from _predict_batch(model, pending, kind, stress, cutoff, device)


def _predict_batch(
    model: AtomFM, structures: list[Structure], kind: str, stress: bool, cutoff: float, device: torch.device
) -> Iterator[tuple[Structure, Prediction]]:
    levels = model.config.levels_of_theory
    batch = Batch.from_data_list([structure_to_graph(s, cutoff, levels) for s in structures]).to(device)
    batch.pos = batch.pos.to(model.dtype)
    batch.cell = batch.cell.to(model.dtype)
    periodic = any(s.is_periodic for s in structures)
    outputs = (
        ["energy"] + (["forces"] if kind != "none" else []) + (["stress"] if stress and periodic else [])
    )
    out = model(batch, outputs=outputs, conservative=kind == "conservative")
    energy = out["energy"].detach().double().cpu().numpy()
    forces = out["forces"].detach().double().cpu().numpy() if "forces" in out else None
    stresses = out["stress"].detach().double().cpu().numpy() if "stress" in out else None
    starts = np.concatenate([[0], np.cumsum([s.num_atoms for s in structures])])
    for i, s in enumerate(structures):
        yield (
            s,
            Prediction(
                energy=float(energy[i]),
                forces=None if forces is None else forces[starts[i] : starts[i + 1]],
                stress=stresses[i] if stresses is not None and s.is_periodic else None,
            ),
        )


def label_errors(s: Structure, pred: Prediction) -> dict[str, tuple[float, float]]:
    """Error sums against ``s``'s labels, as (sum, count) pairs: absolute and squared energy error per atom
    (eV/atom, one count per structure), absolute and squared force components (eV/Å), absolute stress
    components (eV/Å³). Labels the structure lacks (or predictions not made) are left out."""
    out: dict[str, tuple[float, float]] = {}
    if s.energy is not None:
        e = (pred.energy - s.energy) / s.num_atoms
        out["energy_abs"], out["energy_sq"] = (abs(e), 1.0), (e * e, 1.0)
    if s.forces is not None and pred.forces is not None:
        diff = pred.forces - np.asarray(s.forces, dtype=np.float64)
        out["force_abs"] = (float(np.abs(diff).sum()), float(diff.size))
        out["force_sq"] = (float((diff**2).sum()), float(diff.size))
    if s.stress is not None and pred.stress is not None:
        diff = pred.stress - np.asarray(s.stress, dtype=np.float64)
        out["stress_abs"] = (float(np.abs(diff).sum()), float(diff.size))
    return out
