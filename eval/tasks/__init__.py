"""Evaluation tasks by name (``atomfm eval --tasks accuracy,...``)."""

from __future__ import annotations

from data_pipeline.config_mapping import did_you_mean
from data_pipeline.schema import BadInputError
from eval.tasks.accuracy import Accuracy
from eval.tasks.base import EvalTask

TASKS: dict[str, type[EvalTask]] = {cls.name: cls for cls in (Accuracy,)}


def build_task(name: str) -> EvalTask:
    if name not in TASKS:
        raise BadInputError(f"unknown task {name!r}{did_you_mean(name, list(TASKS))}", field="tasks")
    return TASKS[name]()


__all__ = ["TASKS", "EvalTask", "build_task"]
