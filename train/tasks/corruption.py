"""How self-supervised tasks corrupt a batch, and the random numbers they use.

Every random draw for a structure comes from a generator seeded by (run seed, step, micro-batch, task, the
structure's key). A structure is therefore corrupted the same way whichever rank it lands on and however the
batch is split, and a resumed run repeats the corruption of an uninterrupted one exactly.
"""

from __future__ import annotations

import zlib
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
from torch import Tensor

from data_pipeline.batch import AtomBatch


def structure_rng(seed: int, step: int, micro: int, task: str, key: str) -> np.random.Generator:
    """The generator for one structure of one task at one (step, micro-batch)."""
    entropy = [seed, step, micro, zlib.crc32(task.encode()), zlib.crc32(key.encode())]
    return np.random.default_rng(entropy)


@dataclass
class CorruptionState:
    """What the corrupting tasks did to a batch.

    claimed: per task name, [B] bool of the structures it altered (a structure's positions are noised by at
    most one task); noise_target: [N, 3] unit Gaussian ε with pos ← pos + σ ε (zero elsewhere);
    masked_atoms: [N] bool of atoms whose type is hidden; true_z: [N] atomic numbers before masking;
    task_records: per task name, anything else it keeps between corrupting and scoring (diffusion's noise).
    """

    seed: int
    step: int
    micro: int
    num_graphs: int
    atom_graph: Tensor
    true_z: Tensor
    noise_target: Tensor
    masked_atoms: Tensor
    claimed: dict[str, Tensor] = field(default_factory=dict)
    task_records: dict[str, Any] = field(default_factory=dict)

    @classmethod
    def for_batch(cls, batch: AtomBatch, *, seed: int, step: int, micro: int) -> CorruptionState:
        n = batch.z.shape[0]
        return cls(
            seed=seed,
            step=step,
            micro=micro,
            num_graphs=int(batch.natoms.shape[0]),
            atom_graph=batch.batch,
            true_z=batch.z.clone(),
            noise_target=batch.pos.new_zeros(n, 3),
            masked_atoms=torch.zeros(n, dtype=torch.bool, device=batch.z.device),
        )

    def rng(self, task: str, key: str) -> np.random.Generator:
        return structure_rng(self.seed, self.step, self.micro, task, key)

    @property
    def noised(self) -> Tensor:
        """[B] bool: structures whose positions were jostled."""
        out = torch.zeros(self.num_graphs, dtype=torch.bool, device=self.atom_graph.device)
        for name, mask in self.claimed.items():
            if name != "masked_atoms":
                out |= mask
        return out

    @property
    def clean(self) -> Tensor:
        """[B] bool: structures no task altered (the ones regression and contrast learn from)."""
        out = torch.ones(self.num_graphs, dtype=torch.bool, device=self.atom_graph.device)
        for mask in self.claimed.values():
            out &= ~mask
        return out


def jostle_positions(
    batch: AtomBatch,
    state: CorruptionState,
    task: str,
    candidates: Tensor,
    fraction: float,
    sigma_min: float,
    sigma_max: float,
) -> Tensor:
    """Add Gaussian noise to the positions of a random ``fraction`` of the ``candidates`` [B] structures.

    σ per structure is log-uniform in [sigma_min, sigma_max] Å; records ε = noise / σ in
    ``state.noise_target``. Returns the [B] bool mask of the structures noised.
    """
    chosen = torch.zeros(state.num_graphs, dtype=torch.bool)
    sigma = torch.zeros(state.num_graphs, dtype=torch.float64)
    candidate_list = candidates.cpu().tolist()
    natoms = batch.natoms.cpu().tolist()
    starts = np.concatenate([[0], np.cumsum(natoms)[:-1]]).tolist()
    eps_rows, atom_rows = [], []
    for g, key in enumerate(batch.key):
        if not candidate_list[g]:
            continue
        rng = state.rng(task, key)
        if rng.random() >= fraction:
            continue
        chosen[g] = True
        sigma[g] = float(np.exp(rng.uniform(np.log(sigma_min), np.log(sigma_max))))
        eps_rows.append(torch.from_numpy(rng.standard_normal((natoms[g], 3))))
        atom_rows.append(torch.arange(starts[g], starts[g] + natoms[g]))
    if eps_rows:
        atoms = torch.cat(atom_rows).to(batch.pos.device)
        eps = torch.cat(eps_rows).to(device=batch.pos.device, dtype=batch.pos.dtype)
        sigma_atom = sigma.to(device=batch.pos.device, dtype=batch.pos.dtype)[batch.batch[atoms]]
        batch.pos = batch.pos.index_add(0, atoms, eps * sigma_atom[:, None])
        state.noise_target[atoms] = eps
    chosen = chosen.to(batch.z.device)
    state.claimed[task] = chosen
    return chosen
