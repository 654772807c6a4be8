"""Learning-rate schedule: linear warm-up, then cosine decay to a floor."""

from __future__ import annotations

import math

import torch
from torch.optim.lr_scheduler import LRScheduler


def warmup_cosine_factor(step: int, *, warmup_steps: int, total_steps: int, min_ratio: float) -> float:
    """Multiplier of the peak learning rate after ``step`` optimiser steps.

    Rises linearly from 1/(warmup+1) to 1 over ``warmup_steps``, then follows a half cosine down to
    ``min_ratio`` at ``total_steps``, and stays there.
    """
    if step < warmup_steps:
        return (step + 1) / (warmup_steps + 1)
    decay_steps = max(total_steps - warmup_steps, 1)
    progress = min((step - warmup_steps) / decay_steps, 1.0)
    return min_ratio + (1.0 - min_ratio) * 0.5 * (1.0 + math.cos(math.pi * progress))


class WarmupCosine(LRScheduler):
    """``torch`` scheduler for :func:`warmup_cosine_factor`; its state is plain numbers, so it checkpoints."""

    def __init__(
        self,
        optimizer: torch.optim.Optimizer,
        *,
        warmup_steps: int,
        total_steps: int,
        min_ratio: float,
        last_epoch: int = -1,
    ) -> None:
        self.warmup_steps = warmup_steps
        self.total_steps = total_steps
        self.min_ratio = min_ratio
        super().__init__(optimizer, last_epoch)

    def get_lr(self) -> list[float]:
        factor = warmup_cosine_factor(
            self.last_epoch,
            warmup_steps=self.warmup_steps,
            total_steps=self.total_steps,
            min_ratio=self.min_ratio,
        )
        step = self.last_epoch
        return [
            base * factor * group.get("lr_scale", 1.0) * (step >= group.get("train_from", 0))
            for base, group in zip(self.base_lrs, self.optimizer.param_groups, strict=True)
        ]
