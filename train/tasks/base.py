"""What a training task is: it may corrupt the batch before the forward pass, then turns outputs into loss terms."""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any, ClassVar

from torch import Tensor

from data_pipeline.batch import AtomBatch
from data_pipeline.config_mapping import did_you_mean
from data_pipeline.schema import DOMAINS
from train.tasks.corruption import CorruptionState


@dataclass
class LossTerms:
    """One loss value per item (an atom or a structure) and the domain index of each item.

    values: [M], differentiable; domain: [M] int64 index into ``data_pipeline.schema.DOMAINS``. The trainer
    averages items within each domain over all ranks, then averages the domains (see ``train/loss_balance.py``).
    """

    values: Tensor
    domain: Tensor


@dataclass
class TaskSettings:
    """Settings every task has; a task's own settings class adds fields.

    weight: the task's weight in the total loss. domain_weights: how the task's loss weighs its domains
    (``{molecule: 3, material: 1}``: the task's loss is the weighted mean of its per-domain means, over the
    domains present in the global batch); a domain left out weighs 1, and none given weighs all equally.
    This is fairchem's per-dataset loss coefficient; the stream's ``domain_weights`` choose what is drawn.
    """

    weight: float = 1.0
    domain_weights: dict[str, float] = field(default_factory=dict)

    def problems(self) -> dict[str, str]:
        """Field name → what is wrong with its value (empty when the settings are sound)."""
        out = {} if self.weight >= 0 else {"weight": f"must not be negative, got {self.weight}"}
        for domain, w in self.domain_weights.items():
            if domain not in DOMAINS:
                out[f"domain_weights.{domain}"] = (
                    f"unknown domain '{domain}'{did_you_mean(domain, list(DOMAINS))}; expected one of "
                    + ", ".join(DOMAINS)
                )
            elif not (w >= 0 and math.isfinite(w)):
                out[f"domain_weights.{domain}"] = f"must be a finite number ≥ 0, got {w}"
        if self.domain_weights and not any(self.domain_weights.get(d, 1.0) > 0 for d in DOMAINS):
            out["domain_weights"] = "every domain has weight 0: give at least one a weight above 0"
        return out

    def domain_weight_vector(self) -> list[float]:
        """The weight of each domain of ``data_pipeline.schema.DOMAINS``, in its order."""
        return [float(self.domain_weights.get(d, 1.0)) for d in DOMAINS]


class Task:
    """A training objective. Subclasses set ``name``, ``Settings`` and ``outputs`` and implement ``loss_terms``."""

    name: ClassVar[str]
    Settings: ClassVar[type[TaskSettings]] = TaskSettings
    outputs: ClassVar[tuple[str, ...]] = ()

    def __init__(self, settings: TaskSettings) -> None:
        self.settings = settings

    @property
    def weight(self) -> float:
        return self.settings.weight

    def corrupt(self, batch: AtomBatch, state: CorruptionState) -> None:
        """Alter the batch in place before the forward pass (noise, masks) and record it in ``state``."""

    def loss_terms(self, batch: AtomBatch, out: dict[str, Tensor], state: CorruptionState) -> LossTerms:
        raise NotImplementedError

    def state_dict(self) -> dict[str, Any]:
        """Anything the task carries between steps (checkpointed per rank)."""
        return {}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore what :meth:`state_dict` returned."""
