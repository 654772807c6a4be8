"""Conformer contrast: InfoNCE on the invariant ``embedding``; conformers of one molecule (same group) attract.

Conformers of one molecule seldom meet in one batch of a shuffled stream, so each rank keeps a queue of the
most recent embeddings (detached, MoCo-style) with their group hashes. For an anchor i (a clean structure of
this batch), the candidates are every other clean structure of the batch and every queued one; positives are
the candidates of the same group (supervised-contrastive form):

    loss_i = −mean_{p ∈ P(i)} [ s_ip − log Σ_{j ≠ i} exp(s_ij) ],   s_ij = cos(e_i, e_j) / τ.

Anchors without a positive add no term. The queue is part of the checkpoint, per rank.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor

from data_pipeline.batch import AtomBatch
from train.tasks.base import LossTerms, Task, TaskSettings
from train.tasks.corruption import CorruptionState


@dataclass
class ContrastSettings(TaskSettings):
    """temperature: τ of the softmax; queue_size: number of past embeddings kept (0: batch only)."""

    temperature: float = 0.1
    queue_size: int = 1024

    def problems(self) -> dict[str, str]:
        out = super().problems()
        if self.temperature <= 0:
            out["temperature"] = f"must be positive, got {self.temperature}"
        if self.queue_size < 0:
            out["queue_size"] = f"must not be negative, got {self.queue_size}"
        return out


class ConformerContrast(Task):
    name = "contrast"
    Settings = ContrastSettings
    outputs = ("embedding",)

    def __init__(self, settings: ContrastSettings) -> None:
        super().__init__(settings)
        self.queue = torch.zeros(0, 0)
        self.queue_groups = torch.zeros(0, dtype=torch.int64)

    def loss_terms(self, batch: AtomBatch, out: dict[str, Tensor], state: CorruptionState) -> LossTerms:
        keep = state.clean
        emb = F.normalize(out["embedding"][keep].float(), dim=-1)
        groups = batch.group_hash[keep]
        queue = self.queue.to(emb.device) if self.queue.shape[0] else emb.new_zeros(0, emb.shape[1])
        values, has_positive = infonce_terms(
            emb, groups, queue, self.queue_groups.to(groups.device), self.settings.temperature
        )
        self.enqueue(emb.detach(), groups)
        return LossTerms(values=values, domain=batch.domain[keep][has_positive])

    def enqueue(self, emb: Tensor, groups: Tensor) -> None:
        size = self.settings.queue_size
        finite = torch.isfinite(emb).all(dim=1)
        emb, groups = emb[finite].cpu(), groups[finite].cpu()
        if size == 0 or emb.shape[0] == 0:
            return
        if self.queue.shape[0] == 0:
            self.queue = emb.new_zeros(0, emb.shape[1])
        self.queue = torch.cat([emb, self.queue])[:size]
        self.queue_groups = torch.cat([groups, self.queue_groups])[:size]

    def state_dict(self) -> dict[str, Any]:
        return {"queue": self.queue.clone(), "queue_groups": self.queue_groups.clone()}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.queue = state["queue"].clone()
        self.queue_groups = state["queue_groups"].clone()


def infonce_terms(
    emb: Tensor, groups: Tensor, queue: Tensor, queue_groups: Tensor, temperature: float
) -> tuple[Tensor, Tensor]:
    """Loss of each anchor that has at least one positive [A'], and which anchors those are [A] bool.

    emb: [A, D] unit-norm anchors (also candidates); groups: [A]; queue: [Q, D] unit-norm, no gradient;
    queue_groups: [Q].
    """
    num_anchors = emb.shape[0]
    not_self = ~torch.eye(num_anchors, queue.shape[0] + num_anchors, dtype=torch.bool, device=emb.device)
    positive = (groups[:, None] == torch.cat([groups, queue_groups])[None, :]) & not_self
    has_positive = positive.any(dim=1)
    logits = emb[has_positive] @ torch.cat([emb, queue]).T / temperature
    others = not_self[has_positive]
    log_prob = logits - torch.logsumexp(logits.masked_fill(~others, float("-inf")), dim=1, keepdim=True)
    positive = positive[has_positive]
    values = -(log_prob * positive).sum(dim=1) / positive.sum(dim=1)
    return values, has_positive
