"""Per-domain loss normalisation over all ranks, so proteins do not drown molecules.

For each task t and domain d, the loss is the mean of the task's items (atoms or structures) of that domain
over the *global* batch (all ranks); a task's loss is the mean over the domains present (weighted by the
task's ``domain_weights`` when it has them); the total is the weighted sum over tasks. Each rank's
differentiable loss carries its own items divided by the global counts and is scaled by the world size, so
that the engines' gradient averaging yields exactly the gradient of the global-batch loss: two ranks give the
same gradients as one process seeing both halves.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import Tensor

from data_pipeline.schema import DOMAINS
from train.tasks.base import LossTerms


@dataclass
class BalancedLoss:
    """total: this rank's differentiable loss; the rest are global (all ranks), detached, for logging.

    per_task / per_task_domain hold only tasks and domains with items in this batch; ``finite`` is False
    when any rank's loss or outputs hold a NaN or infinity (every rank then agrees to skip); extra: the
    summed ``extra``.
    """

    total: Tensor
    value: float
    per_task: dict[str, float]
    per_task_domain: dict[str, dict[str, float]]
    finite: bool
    extra: Tensor


def balance_losses(
    terms: dict[str, LossTerms],
    weights: dict[str, float],
    *,
    world_size: int,
    all_reduce_sum: Callable[[Tensor], Tensor],
    extra: Tensor | None = None,
    anchor: Tensor | None = None,
    domain_weights: dict[str, list[float]] | None = None,
) -> BalancedLoss:
    """Combine the tasks' loss terms with one all-reduce (also summing ``extra`` [k] over ranks).

    ``anchor`` is a scalar connected to every model output: the total starts from ``0 * anchor``, so every
    rank's loss reaches the same parameters even when a rank has no items for some task; a non-finite
    anchor (a NaN anywhere in the outputs) makes the step non-finite too. ``domain_weights``: task name →
    one weight per domain of ``DOMAINS`` (a task not named weighs its domains equally).
    """
    names = list(terms)
    num_domains = len(DOMAINS)
    device = anchor.device if anchor is not None else next(iter(terms.values())).values.device
    sums = torch.zeros(len(names), num_domains, dtype=torch.float64, device=device)
    counts = torch.zeros_like(sums)
    local: list[Tensor] = []
    for t, name in enumerate(names):
        values, domain = terms[name].values, terms[name].domain
        per_domain = values.new_zeros(num_domains).index_add(0, domain, values)
        local.append(per_domain)
        sums[t] = per_domain.detach().double()
        counts[t] = torch.bincount(domain, minlength=num_domains).double()
    extra = torch.zeros(0, dtype=torch.float64, device=device) if extra is None else extra.double().to(device)
    anchor_bad = anchor is not None and not bool(torch.isfinite(anchor.detach()))
    bad = torch.tensor([float(anchor_bad)], dtype=torch.float64, device=device)
    packed = all_reduce_sum(torch.cat([counts.flatten(), sums.flatten(), bad, extra]))
    g_counts = packed[: counts.numel()].view_as(counts)
    g_sums = packed[counts.numel() : 2 * counts.numel()].view_as(sums)
    g_bad = packed[2 * counts.numel()]
    g_extra = packed[2 * counts.numel() + 1 :]
    present = g_counts > 0
    dw = torch.ones_like(sums)
    for t, name in enumerate(names):
        if domain_weights and name in domain_weights:
            dw[t] = torch.tensor(domain_weights[name], dtype=torch.float64, device=device)
    # per task: each present domain's share of the task's loss (equal shares without domain weights)
    weighted_present = present * dw
    norm = weighted_present.sum(dim=1).clamp_min(1e-300)
    total = anchor * 0.0 if anchor is not None else sums.new_zeros((), dtype=torch.float32)
    per_task: dict[str, float] = {}
    per_task_domain: dict[str, dict[str, float]] = {}
    value = 0.0
    for t, name in enumerate(names):
        scale = (weighted_present[t] / (g_counts[t].clamp_min(1) * norm[t])).to(local[t].dtype)
        total = total + weights[name] * world_size * (local[t] * scale).sum()
        if present[t].any():
            means = g_sums[t] / g_counts[t].clamp_min(1)
            per_task[name] = float((means * weighted_present[t]).sum() / norm[t])
            per_task_domain[name] = {DOMAINS[d]: float(means[d]) for d in range(num_domains) if present[t, d]}
            value += weights[name] * per_task[name]
    finite = bool(torch.isfinite(g_sums).all()) and float(g_bad) == 0.0
    return BalancedLoss(
        total=total,
        value=value,
        per_task=per_task,
        per_task_domain=per_task_domain,
        finite=finite,
        extra=g_extra,
    )
