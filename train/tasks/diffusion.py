"""Diffusion over molecules (EDM, Hoogeboom et al. 2022): noise positions in the zero-centre-of-mass subspace
and hide atom types, and learn to undo both, conditioned on the noise level.

One continuous time t ∈ [0, 1] per structure drives both corruptions (:class:`DiffusionSchedule`):

- positions, variance-preserving: z_t = α_t (x − x̄) + σ_t ε, ε ~ N(0, I) projected to zero mean over the
  structure's atoms (so z_t has none either), with EDM's polynomial schedule α_t² = (1 − 2s)(1 − t²)² + s and
  σ_t² = 1 − α_t², in Å (EDM works in Å on QM9 and GEOM too); the ``noise`` head predicts ε;
- atom types, absorbing-state ("masking") discrete diffusion: each atom is hidden (z = 0, the [MASK] token the
  masked-atom pretraining already knows) with probability m_t = σ_t², so types are hidden as fast as the
  positions lose their signal; the ``atom_type`` head predicts the element of every hidden atom.

The model sees t through the batch field ``noise_level`` (it needs ``model.overrides.noise_level_embedding:
true``) and a complete graph over each noised structure's atoms (the backbone drops pairs beyond its own
cutoff): the stream's neighbour list belongs to the clean geometry, not to the noised one.

The loss per atom is ‖ε̂ − ε‖²/3 (ε̂ projected to zero mean, like ε) plus ``type_weight`` × the
cross-entropy of its element where hidden: EDM's simplified objective, with the categorical part of masked
diffusion (MaskGIT-style, unweighted by t). The sampler (``eval/generation/sampler.py``) inverts exactly
this schedule.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor

from data_pipeline.batch import AtomBatch
from data_pipeline.vocab import domain_index
from train.tasks.base import LossTerms, Task, TaskSettings
from train.tasks.corruption import CorruptionState


@dataclass(frozen=True)
class DiffusionSchedule:
    """α_t, σ_t and the mask probability m_t of time t ∈ [0, 1]; ``precision`` s keeps σ_0 = α_1 = √s > 0."""

    precision: float = 1e-4

    def alpha_sq(self, t: Tensor) -> Tensor:
        s = self.precision
        return (1 - 2 * s) * (1 - t * t) ** 2 + s

    def alpha(self, t: Tensor) -> Tensor:
        return self.alpha_sq(t).sqrt()

    def sigma(self, t: Tensor) -> Tensor:
        return (1 - self.alpha_sq(t)).sqrt()

    def mask_probability(self, t: Tensor) -> Tensor:
        return 1 - self.alpha_sq(t)


def complete_graph(natoms: Tensor, offsets: Tensor | None = None) -> Tensor:
    """Every ordered pair i ≠ j within each structure [2, Σ n(n−1)]: ``natoms`` [B] atoms per structure,
    ``offsets`` [B] index of each structure's first atom (default: cumulative)."""
    natoms = natoms.to(torch.int64)
    if offsets is None:
        offsets = torch.cumsum(natoms, 0) - natoms
    blocks = []
    for n, start in zip(natoms.tolist(), offsets.tolist(), strict=True):
        idx = torch.arange(n, dtype=torch.int64)
        src, dst = idx.repeat_interleave(n), idx.repeat(n)
        keep = src != dst
        blocks.append(torch.stack([src[keep], dst[keep]]) + start)
    if not blocks:
        return torch.zeros(2, 0, dtype=torch.int64, device=natoms.device)
    return torch.cat(blocks, dim=1).to(natoms.device)


def remove_mean(values: Tensor, batch: Tensor, num_graphs: int) -> Tensor:
    """values [N, 3] minus their mean over each structure's atoms (``batch`` [N] structure index)."""
    count = torch.zeros(num_graphs, dtype=values.dtype, device=values.device).index_add(
        0, batch, torch.ones_like(values[:, 0])
    )
    total = torch.zeros(num_graphs, 3, dtype=values.dtype, device=values.device).index_add(0, batch, values)
    return values - (total / count.clamp_min(1)[:, None])[batch]


@dataclass
class DiffusionSettings(TaskSettings):
    """type_weight: weight of the atom-type cross-entropy beside the ε MSE (EDM's loss has both at one
    scale). The schedule is fixed (:class:`DiffusionSchedule`), so that the sampler inverts it exactly."""

    type_weight: float = 1.0

    def problems(self) -> dict[str, str]:
        out = super().problems()
        if self.type_weight < 0:
            out["type_weight"] = f"must not be negative, got {self.type_weight}"
        return out


@dataclass
class DiffusionRecord:
    """What :class:`MoleculeDiffusion` did to a batch: the atoms it noised [N] bool, their ε [N, 3] (zero
    elsewhere) and the atoms whose type it hid [N] bool."""

    atoms: Tensor
    eps: Tensor
    hidden: Tensor


class MoleculeDiffusion(Task):
    """Diffusion training on every non-periodic molecule no other task altered (see the module docstring)."""

    name = "diffusion"
    Settings = DiffusionSettings
    outputs = ("noise", "atom_logits")

    schedule = DiffusionSchedule()

    def corrupt(self, batch: AtomBatch, state: CorruptionState) -> None:
        periodic = batch.pbc.reshape(-1, 3).any(dim=1)
        chosen = state.clean & (batch.domain == domain_index("molecule")) & ~periodic
        natoms = batch.natoms.cpu()
        starts = torch.cumsum(natoms, 0) - natoms
        n_total = batch.z.shape[0]
        t = torch.zeros(state.num_graphs, dtype=torch.float64)
        eps = torch.zeros(n_total, 3, dtype=torch.float64)
        hidden = torch.zeros(n_total, dtype=torch.bool)
        chosen_list = chosen.cpu().tolist()
        for g, key in enumerate(batch.key):
            if not chosen_list[g]:
                continue
            rng = state.rng(self.name, key)
            n, start = int(natoms[g]), int(starts[g])
            t[g] = rng.uniform()
            noise = rng.standard_normal((n, 3))
            eps[start : start + n] = torch.from_numpy(noise - noise.mean(axis=0))
            m = float(self.schedule.mask_probability(t[g]))
            hidden[start : start + n] = torch.from_numpy(rng.random(n) < m)
        device, dtype = batch.pos.device, batch.pos.dtype
        atoms = chosen[batch.batch]
        t_atom = t.to(device)[batch.batch]
        alpha = self.schedule.alpha(t_atom)[:, None]
        sigma = self.schedule.sigma(t_atom)[:, None]
        centred = remove_mean(batch.pos.to(torch.float64), batch.batch, state.num_graphs)
        noised = alpha * centred + sigma * eps.to(device)
        batch.pos = torch.where(atoms[:, None], noised.to(dtype), batch.pos)
        hidden = hidden.to(device) & atoms
        batch.z = batch.z.masked_fill(hidden, 0)
        batch.noise_level = t.to(device=device, dtype=dtype)
        self._rebuild_graph(batch, chosen, starts.to(device))
        state.claimed[self.name] = chosen
        state.task_records[self.name] = DiffusionRecord(atoms=atoms, eps=eps.to(device, dtype), hidden=hidden)

    @staticmethod
    def _rebuild_graph(batch: AtomBatch, chosen: Tensor, starts: Tensor) -> None:
        """The stream's edges of untouched structures, and a complete graph over each chosen one."""
        keep = ~chosen[batch.batch[batch.edge_index[1]]]
        complete = complete_graph(batch.natoms[chosen], starts[chosen])
        batch.edge_index = torch.cat([batch.edge_index[:, keep], complete], dim=1)
        batch.cell_offsets = torch.cat(
            [batch.cell_offsets[keep], batch.cell_offsets.new_zeros(complete.shape[1], 3)], dim=0
        )

    def loss_terms(self, batch: AtomBatch, out: dict[str, Tensor], state: CorruptionState) -> LossTerms:
        record: DiffusionRecord = state.task_records[self.name]
        predicted = remove_mean(out["noise"], batch.batch, state.num_graphs)
        atoms = record.atoms
        error = (predicted[atoms] - record.eps[atoms].to(predicted.dtype)).pow(2).mean(dim=-1)
        if self.settings.type_weight > 0 and bool(record.hidden.any()):
            logits = out["atom_logits"].float()
            ce = F.cross_entropy(logits, state.true_z, reduction="none") * record.hidden
            error = error + self.settings.type_weight * ce[atoms].to(error.dtype)
        return LossTerms(values=error, domain=batch.domain[batch.batch[atoms]])
