"""The diffusion loss of a checkpoint on held-out molecules, per noise level: how well it undoes the noise it
was trained on, on molecules it never saw (two samplers trained for the same budget are compared here before
any sampling).

At each time t of a grid, every molecule is corrupted as ``train/tasks/diffusion.py`` does (zero-mean
Gaussian positions, types hidden with probability m_t), seeded by (seed, t index, molecule index), and scored
by the task's two terms: the ε MSE per atom and the cross-entropy per hidden atom (with the accuracy of the
argmax element).
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch

from eval.generation.molecules import Molecule
from eval.generation.sampler import DiffusionSampler
from train.tasks.diffusion import DiffusionSchedule


@torch.no_grad()
def diffusion_loss_by_time(
    sampler: DiffusionSampler,
    molecules: Sequence[Molecule],
    times: Sequence[float] = (0.05, 0.2, 0.4, 0.6, 0.8, 0.95),
    *,
    seed: int = 0,
    molecules_per_batch: int = 64,
) -> list[dict[str, float]]:
    """Per t: ``eps_mse`` (per atom, 1 = predicting zero), ``type_ce`` and ``type_accuracy`` (%) over hidden
    atoms, and the counts they rest on."""
    schedule: DiffusionSchedule = sampler.schedule
    rows = []
    for ti, t in enumerate(times):
        sq_error = hidden_total = atoms_total = 0.0
        ce_total = correct = 0.0
        for start in range(0, len(molecules), molecules_per_batch):
            chunk = molecules[start : start + molecules_per_batch]
            batch = sampler.empty_batch([m.num_atoms for m in chunk])
            # conditioned on each molecule's own charge, as in training (the sampler's default is neutral)
            batch.charge = torch.tensor([m.charge for m in chunk], dtype=torch.int64, device=batch.z.device)
            rng = np.random.default_rng([seed, ti, start])
            eps = np.concatenate([_centred(rng.standard_normal((m.num_atoms, 3))) for m in chunk])
            hidden = rng.random(len(eps)) < float(
                schedule.mask_probability(torch.tensor(t, dtype=torch.float64))
            )
            true_z = torch.from_numpy(np.concatenate([m.numbers for m in chunk])).to(batch.z.device)
            clean = torch.from_numpy(np.concatenate([m.positions - m.positions.mean(axis=0) for m in chunk]))
            tt = torch.tensor(t, dtype=torch.float64)
            noised = schedule.alpha(tt) * clean + schedule.sigma(tt) * torch.from_numpy(eps)
            batch.pos = noised.to(batch.pos)
            hidden_t = torch.from_numpy(hidden).to(batch.z.device)
            batch.z = true_z.masked_fill(hidden_t, 0)
            predicted_eps, logits = sampler.predict(batch, float(t))
            sq_error += float((predicted_eps.double().cpu() - torch.from_numpy(eps)).pow(2).sum()) / 3.0
            atoms_total += len(eps)
            if hidden.any():
                hidden_logits = logits[hidden_t].double()
                ce_total += float(
                    torch.nn.functional.cross_entropy(hidden_logits, true_z[hidden_t], reduction="sum")
                )
                masked = torch.full_like(hidden_logits, float("-inf"))
                masked[:, sampler.elements] = hidden_logits[:, sampler.elements]
                correct += float((masked.argmax(dim=-1) == true_z[hidden_t]).sum())
                hidden_total += float(hidden.sum())
        rows.append(
            {
                "t": float(t),
                "eps_mse": sq_error / atoms_total,
                "type_ce": ce_total / hidden_total if hidden_total else float("nan"),
                "type_accuracy": 100.0 * correct / hidden_total if hidden_total else float("nan"),
                "atoms": int(atoms_total),
                "hidden_atoms": int(hidden_total),
            }
        )
    return rows


def _centred(x: np.ndarray) -> np.ndarray:
    return x - x.mean(axis=0)
