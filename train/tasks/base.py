"""What a training task is: it may corrupt the batch before the forward pass, then turns outputs into loss terms."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, ClassVar

from torch import Tensor

from data_pipeline.batch import AtomBatch
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
    """Settings every task has; a task's own settings class adds fields."""

    weight: float = 1.0

    def problems(self) -> dict[str, str]:
        """Field name → what is wrong with its value (empty when the settings are sound)."""
        return {} if self.weight >= 0 else {"weight": f"must not be negative, got {self.weight}"}


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
