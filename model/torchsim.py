"""atomfm as a TorchSim model: batched relaxation and MD of many structures with TorchSim's runners.

    import torch_sim as ts
    from model.torchsim import AtomFMTorchSimModel, relax

    model = AtomFMTorchSimModel.from_checkpoint("runs/demo/export", level_of_theory="pbe")
    state = ts.io.atoms_to_state(list_of_atoms, model.device, model.dtype)
    relaxed = relax(model, state, fmax=0.05, max_steps=200)    # TorchSim's FIRE, positions only

`TorchSim <https://github.com/TorchSim/torch-sim>`_ (``torch-sim-atomistic``, the optional extra
``atomfm[torchsim]``; Python 3.11+) drives MACE, fairchem, SevenNet and others through one
``ModelInterface``: ``forward(state)`` takes a batched ``SimState`` and returns ``energy`` [n_systems] eV,
``forces`` [n_atoms, 3] eV/Å and ``stress`` [n_systems, 3, 3] eV/Å³ (ASE's sign). This module is that
interface around a :class:`~model.batched.BatchedPredictor`, so TorchSim's numbers are the ASE calculator's
(same options: level of theory, charge, spin, domain, force mode, and its warnings for unseen elements and
close contacts), at most ``max_atoms`` atoms per model call. Nothing in atomfm imports this module; only
its users need TorchSim. Written against torch-sim-atomistic 0.3 (the newest release for Python 3.11).
"""

from __future__ import annotations

import os
from typing import Any

import numpy as np
import torch
import torch_sim as ts
from ase import Atoms
from ase.stress import voigt_6_to_full_3x3_stress
from torch_sim.models.interface import ModelInterface
from torch_sim.state import SimState

from model.batched import DEFAULT_MAX_ATOMS, BatchedPredictor
from model.calculator import AtomFMCalculator


class AtomFMTorchSimModel(ModelInterface):
    """TorchSim's ``ModelInterface`` for an atomfm checkpoint (energies, forces, stresses of a batched state)."""

    def __init__(self, predictor: BatchedPredictor, compute_stress: bool = True) -> None:
        super().__init__()
        self.predictor = predictor
        self.add_module("atomfm", predictor.model)  # .parameters(), .to() and repr see the weights
        self._device = predictor.model.reference_energies.energies.device
        self._dtype = predictor.model.dtype
        self._compute_forces = True
        self._compute_stress = compute_stress
        self._memory_scales_with = "n_atoms_x_density"  # a radial cutoff: neighbours grow with density

    @classmethod
    def from_checkpoint(
        cls, path: str | os.PathLike, compute_stress: bool = True, **predictor_options: Any
    ) -> AtomFMTorchSimModel:
        """The model in an export or training checkpoint folder; ``predictor_options`` are
        :meth:`BatchedPredictor.from_checkpoint`'s (``max_atoms``, ``dtype``, ``device``, the calculator's)."""
        return cls(BatchedPredictor.from_checkpoint(path, **predictor_options), compute_stress)

    @classmethod
    def from_calculator(
        cls, calculator: AtomFMCalculator, max_atoms: int = DEFAULT_MAX_ATOMS, compute_stress: bool = True
    ) -> AtomFMTorchSimModel:
        return cls(BatchedPredictor(calculator, max_atoms), compute_stress)

    @property
    def compute_stress(self) -> bool:
        return self._compute_stress

    @compute_stress.setter
    def compute_stress(self, compute_stress: bool) -> None:  # TorchSim's cell filters switch it on
        self._compute_stress = bool(compute_stress)

    @property
    def conserves_energy(self) -> bool:
        """Whether the forces are −∂E/∂x of the energy (False when serving a direct force head: no NVE)."""
        return self.predictor.calculator.conserves_energy

    def forward(self, state: SimState | dict[str, torch.Tensor], **kwargs: Any) -> dict[str, torch.Tensor]:
        atoms_list = state_to_atoms(state)
        out = self.predictor.predict(atoms_list)
        like = {"device": self._device, "dtype": self._dtype}
        result = {
            "energy": torch.as_tensor(out.energies, **like),
            "forces": torch.as_tensor(np.concatenate(out.forces) if out.forces else np.zeros((0, 3)), **like),
        }
        if self._compute_stress:  # NaN rows for non-periodic structures, which have no stress
            result["stress"] = torch.as_tensor(voigt_6_to_full_3x3_stress(out.stresses), **like)
        return result


def relax(
    model: AtomFMTorchSimModel, system: SimState | list[Atoms], fmax: float = 0.05, max_steps: int = 200
) -> SimState:
    """TorchSim's FIRE (its ASE flavour) on the positions of every structure of ``system`` until each one's
    largest atomic force is below ``fmax`` eV/Å (checked every few steps, TorchSim's way) or ``max_steps``."""
    return ts.optimize(
        system,
        model,
        optimizer=ts.optimizers.fire,
        convergence_fn=ts.generate_force_convergence_fn(force_tol=fmax, include_cell_forces=False),
        max_steps=max_steps,
    )


def state_to_atoms(state: SimState | dict[str, torch.Tensor]) -> list[Atoms]:
    """The structures of a TorchSim state (or its dict form) as ASE ``Atoms``, in system order. TorchSim's
    ``cell`` holds lattice vectors as columns; ASE's as rows."""
    get = state.get if isinstance(state, dict) else lambda name, default=None: getattr(state, name, default)
    positions = get("positions").detach().cpu().double().numpy()
    numbers = get("atomic_numbers").detach().cpu().numpy()
    cells = get("cell").detach().cpu().double().numpy()
    system = get("system_idx")
    if system is None:
        system = get("batch")  # torch-sim's name before "system_idx"
    system = np.zeros(len(numbers), dtype=int) if system is None else system.detach().cpu().numpy()
    pbc = get("pbc", False)
    pbc = pbc.detach().cpu().numpy() if isinstance(pbc, torch.Tensor) else np.asarray(pbc)
    cells = cells.reshape(-1, 3, 3)
    out = []
    for index in range(int(system.max()) + 1 if len(system) else 0):
        mask = system == index
        out.append(
            Atoms(numbers=numbers[mask], positions=positions[mask], cell=cells[index].T, pbc=pbc.tolist())
        )
    return out
