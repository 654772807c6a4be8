"""Training tasks, chosen by name in the config's ``tasks`` section.

A task is enabled by listing it with a weight above zero (``tasks.stress.weight=0`` on the command line
turns one off). Corrupting tasks run first, in this order: DeNS claims force-labelled structures, plain denoising noises a
share of the rest, masked atom types hide elements, diffusion takes the molecules none of them touched.
Regression and contrast then learn from the structures no task altered.
"""

from __future__ import annotations

from typing import Any

from data_pipeline.config_mapping import ConfigOrigin, did_you_mean, from_mapping
from train.tasks.base import LossTerms, Task, TaskSettings
from train.tasks.contrast import ConformerContrast
from train.tasks.corruption import CorruptionState
from train.tasks.denoise import CoordinateDenoising
from train.tasks.dens import DeNS
from train.tasks.diffusion import MoleculeDiffusion
from train.tasks.energy import EnergyRegression
from train.tasks.forces import ForceRegression
from train.tasks.masked_atoms import MaskedAtomTypes
from train.tasks.property import PropertyRegression
from train.tasks.residue_class import ResidueClassification
from train.tasks.stress import StressRegression

TASKS: dict[str, type[Task]] = {
    cls.name: cls
    for cls in (
        DeNS,
        CoordinateDenoising,
        MaskedAtomTypes,
        MoleculeDiffusion,
        EnergyRegression,
        ForceRegression,
        StressRegression,
        PropertyRegression,
        ResidueClassification,
        ConformerContrast,
    )
}
# Tasks whose loss needs a derivative of the energy with its graph kept (a double backward in training).
ENERGY_DERIVATIVE_TASKS = ("stress",)


def task_settings(name: str, raw: dict[str, Any] | None, origin: ConfigOrigin) -> TaskSettings:
    """Validated settings of task ``name``; ``origin`` names where they came from."""
    if name not in TASKS:
        raise origin.error(f"tasks.{name}", f"unknown task '{name}'{did_you_mean(name, list(TASKS))}")
    settings = from_mapping(TASKS[name].Settings, raw or {}, prefix=f"tasks.{name}", origin=origin)
    for field_name, problem in settings.problems().items():
        raise origin.error(f"tasks.{name}.{field_name}", problem)
    return settings


def build_tasks(raw: dict[str, dict[str, Any]], origin: ConfigOrigin | None = None) -> list[Task]:
    """The enabled tasks (weight > 0) in registry order (corrupting tasks first); unknown names raise."""
    origin = origin or ConfigOrigin()
    settings = {name: task_settings(name, values, origin) for name, values in raw.items()}
    return [TASKS[name](settings[name]) for name in TASKS if name in settings and settings[name].weight > 0]


__all__ = [
    "TASKS",
    "ENERGY_DERIVATIVE_TASKS",
    "CorruptionState",
    "LossTerms",
    "Task",
    "TaskSettings",
    "build_tasks",
    "task_settings",
]
