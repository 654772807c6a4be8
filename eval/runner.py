"""Run tasks on one predictor and one dataset, writing one result file per task (the fairchem runner's half)."""

from __future__ import annotations

import logging
import time
from pathlib import Path
from typing import Any

from eval.data import EvalData
from eval.results import result_record, write_result
from eval.tasks import build_task, task_options
from eval.tasks.base import Predictor

log = logging.getLogger(__name__)


def evaluate(
    predictor: Predictor,
    data: EvalData,
    tasks: list[str],
    out_dir: str | Path,
    *,
    seed: int = 0,
    progress: bool = True,
    options: dict[str, dict[str, Any]] | None = None,
) -> list[Path]:
    """Score ``predictor`` on ``data`` with each task that applies; returns the result files written.

    options: per task name, its options (``eval.tasks.build_task``); the result records those it ran with.
    """
    written = []
    for name in tasks:
        task = build_task(name, (options or {}).get(name))
        why_not = task.applies_to(data)
        if why_not is None and predictor.kind == "baseline" and not task.baseline_applies:
            why_not = "the baseline has no physics to test"
        if why_not is not None:
            log.warning("task %s skipped for %s on %s: %s", name, predictor.name, data.name, why_not)
            continue
        start = time.perf_counter()
        body = task.run(predictor, data, seed=seed, progress=progress)
        used = task_options(task)
        if used:
            body["details"] = {"options": used, **body.get("details", {})}
        record = result_record(
            task.name,
            task.primary_metric,
            predictor.identity(),
            data.identity(),
            body,
            time.perf_counter() - start,
        )
        written.append(write_result(out_dir, record))
    return written
