"""Read the result files that ``atomfm eval`` writes and check them against schema ``atomfm-eval-result`` v1.

A JSON file that is not a result (no ``schema`` key, or another schema) is skipped with a warning; a result
file that is unreadable, of another version or malformed is an error naming the file and the field.
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from data_pipeline.schema import BadInputError
from eval.results import SCHEMA, SCHEMA_VERSION

log = logging.getLogger(__name__)

MODEL_KINDS = ("checkpoint", "calculator", "baseline", "samples")  # samples: `atomfm generate --samples FILE`
BETTER = ("lower", "higher")


@dataclass(frozen=True)
class Result:
    """One result file: one model scored by one task on one data set."""

    path: Path
    record: dict[str, Any]

    @property
    def task(self) -> str:
        return self.record["task"]

    @property
    def primary_metric(self) -> str:
        return self.record["primary_metric"]

    @property
    def model(self) -> str:
        return self.record["model"]["name"]

    @property
    def kind(self) -> str:
        return self.record["model"]["kind"]

    @property
    def data(self) -> str:
        return self.record["data"]["name"]

    @property
    def board(self) -> tuple[str, str]:
        """(task, data): the results that are ranked against each other."""
        return self.task, self.data

    @property
    def metrics(self) -> dict[str, dict[str, dict[str, Any]]]:
        """domain ("all" for every domain together) -> metric -> {value, ci95, n, n_items, unit, better}."""
        return self.record["metrics"]


def collect_results(paths: list[str | Path]) -> list[Result]:
    """The results in ``paths`` (folders, whose ``*.json`` are read, or result files), in a stable order."""
    files: list[Path] = []
    for given in map(Path, paths):
        if given.is_dir():
            files += sorted(given.glob("*.json"))
        elif given.is_file():
            files.append(given)
        else:
            raise BadInputError("no such file or folder", path=str(given))
    results = [r for r in (read_result(f) for f in dict.fromkeys(files)) if r is not None]
    if not results:
        raise BadInputError(
            f"no atomfm-eval-result files in {', '.join(map(str, paths))}; write them with `atomfm eval --out`"
        )
    _check_consistent(results)
    return sorted(results, key=lambda r: (r.task, r.data, r.model))


def read_result(path: Path) -> Result | None:
    """The result in ``path``, or None (with a warning) when it is JSON of something else."""
    try:
        record = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, ValueError) as err:
        raise BadInputError(f"not readable JSON ({err})", path=str(path)) from None
    if not isinstance(record, dict) or record.get("schema") != SCHEMA:
        schema = record.get("schema") if isinstance(record, dict) else None
        log.warning("skipping %s: not an %s file (schema %r)", path, SCHEMA, schema)
        return None
    if record.get("schema_version") != SCHEMA_VERSION:
        raise BadInputError(
            f"schema version {record.get('schema_version')!r}, this atomfm reads version {SCHEMA_VERSION}; "
            "re-run `atomfm eval` or use the atomfm that wrote it",
            path=str(path),
            field="schema_version",
        )
    _check_record(record, str(path))
    return Result(path, record)


def _check_record(record: dict[str, Any], path: str) -> None:
    def bad(field: str, message: str) -> BadInputError:
        return BadInputError(message, path=path, field=field)

    for field in ("task", "primary_metric"):
        if not isinstance(record.get(field), str) or not record[field]:
            raise bad(field, "missing or not a string")
    for section in ("model", "data"):
        if not isinstance(record.get(section), dict):
            raise bad(section, "missing or not an object")
        if not isinstance(record[section].get("name"), str) or not record[section]["name"]:
            raise bad(f"{section}.name", "missing or not a string")
    if record["model"].get("kind") not in MODEL_KINDS:
        raise bad("model.kind", f"{record['model'].get('kind')!r} is not one of {', '.join(MODEL_KINDS)}")
    curve = record["model"].get("training_curve")
    if curve is not None and not (isinstance(curve, list) and all(isinstance(r, dict) for r in curve)):
        raise bad("model.training_curve", "not a list of metrics.jsonl records")
    metrics = record.get("metrics")
    if not isinstance(metrics, dict):
        raise bad("metrics", "missing or not an object")
    for domain, by_name in metrics.items():
        if not isinstance(by_name, dict):
            raise bad(f"metrics.{domain}", "not an object of metrics")
        for name, metric in by_name.items():
            _check_metric(metric, f"metrics.{domain}.{name}", bad)
    for domain, by_element in (record.get("per_element") or {}).items():
        for element, by_name in by_element.items():
            for name, metric in by_name.items():
                _check_metric(metric, f"per_element.{domain}.{element}.{name}", bad)
    for domain, by_quantity in (record.get("parity") or {}).items():
        for quantity, points in by_quantity.items():
            field = f"parity.{domain}.{quantity}"
            if not isinstance(points, dict) or not {"reference", "predicted"} <= points.keys():
                raise bad(field, "needs 'reference' and 'predicted' lists")
            if len(points["reference"]) != len(points["predicted"]):
                raise bad(field, "'reference' and 'predicted' differ in length")


def _check_metric(metric: Any, field: str, bad: Any) -> None:
    if not isinstance(metric, dict):
        raise bad(field, "not a metric object {value, ci95, n, n_items, unit, better}")
    value = metric.get("value")
    if value is not None and not _is_number(value):
        raise bad(f"{field}.value", f"{value!r} is not a number or null")
    ci95 = metric.get("ci95")
    if not (isinstance(ci95, list) and len(ci95) == 2 and all(v is None or _is_number(v) for v in ci95)):
        raise bad(f"{field}.ci95", f"{ci95!r} is not a [low, high] pair")
    for count in ("n", "n_items"):
        if not isinstance(metric.get(count), int) or isinstance(metric[count], bool) or metric[count] < 0:
            raise bad(f"{field}.{count}", f"{metric.get(count)!r} is not a count")
    if not isinstance(metric.get("unit"), str):
        raise bad(f"{field}.unit", "missing or not a string")
    if metric.get("better") not in BETTER:
        raise bad(f"{field}.better", f"{metric.get('better')!r} is not 'lower' or 'higher'")


def _is_number(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)


def _check_consistent(results: list[Result]) -> None:
    """One result per (model, task, data); one model per name; one primary metric and one data per board."""
    seen: dict[tuple[str, str, str], Result] = {}
    weights: dict[str, Result] = {}
    boards: dict[tuple[str, str], Result] = {}
    for r in results:
        first = seen.setdefault((r.model, r.task, r.data), r)
        if first is not r:
            raise BadInputError(
                f"a second result for model {r.model!r}, task {r.task!r}, data {r.data!r} "
                f"(the first is {first.path}); pass one of them",
                path=str(r.path),
            )
        sha = r.record["model"].get("weights_sha256")
        first = weights.setdefault(r.model, r)
        if sha and first.record["model"].get("weights_sha256") not in (None, sha):
            raise BadInputError(
                f"model {r.model!r} has other weights than in {first.path}; "
                "give different models different names (`atomfm eval --name`)",
                path=str(r.path),
                field="model.weights_sha256",
            )
        first = boards.setdefault(r.board, r)
        if r.primary_metric != first.primary_metric:
            raise BadInputError(
                f"task {r.task!r} ranks on {r.primary_metric!r} here but on {first.primary_metric!r} in "
                f"{first.path}; re-run one of them with the same atomfm",
                path=str(r.path),
                field="primary_metric",
            )
        sha, first_sha = r.record["data"].get("sha256"), first.record["data"].get("sha256")
        if sha and first_sha and sha != first_sha:
            raise BadInputError(
                f"data {r.data!r} differs from the data of the same name in {first.path} (sha256 "
                f"{sha[:12]} vs {first_sha[:12]}); results on different data cannot be ranked together",
                path=str(r.path),
                field="data.sha256",
            )
