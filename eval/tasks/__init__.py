"""Evaluation tasks by name (``atomfm eval --tasks accuracy,...``).

A task's options are its constructor's keyword arguments, each with a default and kept as an attribute of
the same name; ``atomfm eval --task-option eos.max_structures=10`` sets one, converted to the default's type.
"""

from __future__ import annotations

import inspect
from typing import Any

from data_pipeline.config_mapping import did_you_mean
from data_pipeline.schema import BadInputError
from eval.tasks.accuracy import Accuracy
from eval.tasks.base import EvalTask
from eval.tasks.chirality import Chirality
from eval.tasks.conformer_ranking import ConformerRanking
from eval.tasks.diatomics import Diatomics
from eval.tasks.eos import EquationOfState
from eval.tasks.md_drift import MDDrift
from eval.tasks.property import PropertyPrediction
from eval.tasks.relaxation import Relaxation
from eval.tasks.secondary_structure import SecondaryStructure
from eval.tasks.symmetry import Symmetry

TASKS: dict[str, type[EvalTask]] = {
    cls.name: cls
    for cls in (
        Accuracy,
        ConformerRanking,
        EquationOfState,
        Relaxation,
        Symmetry,
        MDDrift,
        Diatomics,
        Chirality,
        PropertyPrediction,
        SecondaryStructure,
    )
}


def build_task(name: str, options: dict[str, Any] | None = None) -> EvalTask:
    """The task ``name`` with ``options`` (names and values checked against its constructor)."""
    if name not in TASKS:
        raise BadInputError(f"unknown task {name!r}{did_you_mean(name, list(TASKS))}", field="tasks")
    defaults = option_defaults(name)
    converted = {}
    for key, value in (options or {}).items():
        field = f"task-option {name}.{key}"
        if key not in defaults:
            known = list(defaults)
            if not known:
                raise BadInputError(f"task {name!r} has no options", field=field)
            raise BadInputError(f"task {name!r} has no option {key!r}{did_you_mean(key, known)}", field=field)
        converted[key] = _convert(value, defaults[key], field)
    return TASKS[name](**converted)


def option_defaults(name: str) -> dict[str, Any]:
    """The options of task ``name`` and their defaults."""
    parameters = inspect.signature(TASKS[name]).parameters.values()
    return {p.name: p.default for p in parameters if p.default is not inspect.Parameter.empty}


def task_options(task: EvalTask) -> dict[str, Any]:
    """The options ``task`` runs with (what a result file records)."""
    return {key: getattr(task, key) for key in option_defaults(task.name)}


def parse_task_options(items: list[str], tasks: list[str]) -> dict[str, dict[str, str]]:
    """``["eos.max_structures=10", ...]`` → ``{"eos": {"max_structures": "10"}}``, for tasks in ``tasks``."""
    out: dict[str, dict[str, str]] = {}
    for item in items:
        name, dot, rest = item.partition(".")
        key, equals, value = rest.partition("=")
        if not (dot and equals and name and key):
            raise BadInputError(
                f"expected TASK.OPTION=VALUE (e.g. eos.max_structures=10), got {item!r}", field="task-option"
            )
        if name not in tasks:
            raise BadInputError(
                f"an option for {name!r}, which is not among --tasks ({', '.join(tasks)})",
                field="task-option",
            )
        out.setdefault(name, {})[key.strip()] = value.strip()
    return out


def _convert(value: Any, default: Any, field: str) -> Any:
    """A command-line string as the type of the option's default (int or float); other values as given."""
    kind = type(default)
    if not isinstance(value, str) or kind not in (int, float):
        return value
    try:
        return kind(value)
    except ValueError:
        raise BadInputError(f"expected {kind.__name__}, got {value!r}", field=field) from None


__all__ = ["TASKS", "EvalTask", "build_task", "option_defaults", "parse_task_options", "task_options"]
