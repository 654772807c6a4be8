"""Result files for the leaderboard tests, written by evaluation's own ``result_record`` and ``write_result``.

Three models on three boards, chosen so that every ranking rule shows:
- accuracy on water/test (domains all, molecule, material), force_mae ranks: large 30 < small 50 < baseline 300,
  while energy_mae orders them small 4 < baseline 6 < large 9 (a sort by it reorders the rows);
- eos on water/test, material only (no "all"), volume_error: small 2 < large 3; the baseline is not scored;
- conformer_ranking on water/test, molecule only, spearman (higher is better): small 0.9 > large 0.8.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from eval.metrics import ratio_metric
from eval.results import result_record, write_result

DATA = {"name": "water/test", "kind": "corpus", "structures": 10, "atoms": 30, "domains": {"molecule": 10}}
CONFIG = {"backbone": {"channels": 32, "num_layers": 2}, "heads": ["energy", "forces_direct"]}
CURVE = [
    {"step": s, "loss": 2.0 / s, "loss/energy": 1.0 / s, "lr": 1e-3, "val/force_mae": 90.0 / s}
    for s in (1, 2, 3, 4)
]


def metric(value: float, unit: str = "meV/Å", better: str = "lower", n: int = 10) -> dict[str, Any]:
    """A metric whose value is ``value``, over n structures of 3 items each, with a real bootstrap interval."""
    counts = np.full(n, 3.0)
    return ratio_metric(value * counts * np.linspace(0.5, 1.5, n), counts, unit=unit, better=better).to_dict()


def accuracy_body(force: dict[str, float], energy: float, plots: bool) -> dict[str, Any]:
    metrics = {
        domain: {"force_mae": metric(value), "energy_mae": metric(energy, unit="meV/atom")}
        for domain, value in force.items()
    }
    body: dict[str, Any] = {"metrics": metrics, "details": {"structures_per_domain": {"molecule": 10}}}
    if plots:
        reference = np.linspace(-2.0, 2.0, 30)
        points = {"reference": reference.tolist(), "predicted": (0.9 * reference).tolist(), "points": 30}
        parity = {"energy": {**points, "unit": "eV/atom"}, "forces": {**points, "unit": "eV/Å"}}
        body["parity"] = {"molecule": parity, "material": parity}
        body["per_element"] = {
            "molecule": {"H": {"force_mae": metric(20.0)}, "O": {"force_mae": metric(60.0)}},
            "material": {"Si": {"force_mae": metric(40.0)}},
        }
    return body


def model(name: str, kind: str, curve: list | None = None) -> dict[str, Any]:
    return {"name": name, "kind": kind, "path": None, "config": CONFIG, "training_curve": curve}


def write_results(folder: Path) -> Path:
    large, small = model("large", "checkpoint", CURVE), model("small", "checkpoint")
    baseline = model("reference+zero-force", "baseline")
    records = [
        (
            "accuracy",
            "force_mae",
            large,
            accuracy_body({"all": 30, "molecule": 20, "material": 40}, 9.0, True),
        ),
        (
            "accuracy",
            "force_mae",
            small,
            accuracy_body({"all": 50, "molecule": 45, "material": 70}, 4.0, True),
        ),
        (
            "accuracy",
            "force_mae",
            baseline,
            accuracy_body({"all": 300, "molecule": 250, "material": 400}, 6.0, False),
        ),
    ]
    for who, volume in ((small, 2.0), (large, 3.0)):
        records.append(
            ("eos", "volume_error", who, {"metrics": {"material": {"volume_error": metric(volume, "%")}}})
        )
    for who, rho in ((small, 0.9), (large, 0.8)):
        body = {"metrics": {"molecule": {"spearman": metric(rho, "", "higher")}}}
        records.append(("conformer_ranking", "spearman", who, body))
    for task, primary, who, body in records:
        write_result(
            folder, result_record(task, primary, who, DATA, {"details": {}, **body}, wall_time_s=1.0)
        )
    return folder
