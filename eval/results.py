"""The result file: one JSON per (model, task, data), the only thing the leaderboard reads.

Schema ``atomfm-eval-result`` version 1 (``docs/eval.md`` describes every field)::

    {"schema": "atomfm-eval-result", "schema_version": 1, "task": "accuracy", "primary_metric": "force_mae",
     "model": {name, kind, path, weights_sha256, config, forces, training_curve, ...},
     "data": {name, kind, paths, split, structures, atoms, domains, sha256, ...},
     "metrics": {domain or "all": {metric: {value, ci95, n, n_items, unit, better}}},
     "per_element": {domain: {element: {metric: {...}}}},        # tasks with per-element errors
     "parity": {domain: {"energy"|"forces": {"reference": [...], "predicted": [...], "unit": ...}}},
     "per_structure": {domain: {"energy_abs"|"force_abs": {"keys", "sums", "counts"}}},  # accuracy (optional)
     "details": {...},                                            # task-specific tables
     "versions": {...}, "wall_time_s": ..., "created": "...Z", "host": "..."}
"""

from __future__ import annotations

import json
import math
import platform
import re
import socket
from datetime import datetime, timezone
from importlib import metadata
from pathlib import Path
from typing import Any

from data_pipeline.atomic_files import write_text_atomic

SCHEMA = "atomfm-eval-result"
SCHEMA_VERSION = 1
VERSIONED_PACKAGES = ("atomfm", "torch", "ase", "numpy", "mace-torch", "deepspeed")


def versions() -> dict[str, str]:
    out = {"python": platform.python_version()}
    for name in VERSIONED_PACKAGES:
        try:
            out[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            continue
    return out


def result_record(
    task: str,
    primary_metric: str,
    model: dict[str, Any],
    data: dict[str, Any],
    body: dict[str, Any],
    wall_time_s: float,
) -> dict[str, Any]:
    """The whole result: identities, the task's ``body`` (metrics, per_element, parity, details), provenance."""
    return {
        "schema": SCHEMA,
        "schema_version": SCHEMA_VERSION,
        "task": task,
        "primary_metric": primary_metric,
        "model": model,
        "data": data,
        **body,
        "versions": versions(),
        "wall_time_s": round(wall_time_s, 3),
        "created": datetime.now(timezone.utc).isoformat(timespec="seconds").replace("+00:00", "Z"),
        "host": socket.gethostname(),
    }


def result_path(out_dir: str | Path, model: str, task: str, data: str) -> Path:
    return Path(out_dir) / f"{slug(model)}__{slug(task)}__{slug(data)}.json"


def write_result(out_dir: str | Path, record: dict[str, Any]) -> Path:
    """Write ``record`` atomically under its (model, task, data) name; returns the path."""
    path = result_path(out_dir, record["model"]["name"], record["task"], record["data"]["name"])
    return write_text_atomic(path, json.dumps(_finite(record), indent=1, allow_nan=False))


def _finite(value: Any) -> Any:
    """NaN and infinities become null (strict JSON, readable by browsers)."""
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, dict):
        return {k: _finite(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_finite(v) for v in value]
    return value


def slug(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.+-]+", "-", text).strip("-") or "unnamed"
