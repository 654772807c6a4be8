"""Structure properties through a fine-tuned ``properties`` head: a molecule's HOMO–LUMO gap or dipole moment.

The checkpoint must carry a ``properties`` head that predicts the property (``head_options.properties.names``,
trained by ``atomfm finetune`` with the ``property`` task: ``configs/finetune_gap_demo.yaml``); the data are
structures with that property (``Structure.properties``, written by the xTB labeller). Scored on every
structure that has it:

- ``mae``: mean absolute error (bootstrap 95% interval over structures), in the property's unit;
- ``rmse``: root mean squared error;
- ``baseline_mae``: the mean predictor's MAE on the same structures, its mean taken over the training split
  of the corpus (of the data itself, for files: said in ``details``), the floor any head must beat;
- ``skill``: 1 − MAE / baseline MAE (1 perfect, 0 no better than the mean).

Only for checkpoints. Option ``target``: the property (default ``homo_lumo_gap``).
"""

from __future__ import annotations

from typing import Any

import numpy as np

from data_pipeline.corpus_reader import read_split
from data_pipeline.schema import PROPERTY_UNITS
from eval.data import EvalData
from eval.metrics import mean_metric, ratio_metric
from eval.tasks.base import EvalTask, Predictor
from eval.tasks.head_outputs import head_outputs


class PropertyPrediction(EvalTask):
    name = "property"
    primary_metric = "mae"
    description = "a structure property (HOMO-LUMO gap) from a fine-tuned head, beside the mean predictor"

    def __init__(self, target: str = "homo_lumo_gap") -> None:
        self.target = target

    def applies_to(self, data: EvalData) -> str | None:
        if not any(self.target in s.properties for s in data.structures):
            return f"no structure carries the property {self.target!r}"
        return None

    def run(
        self, predictor: Predictor, data: EvalData, *, seed: int = 0, progress: bool = True
    ) -> dict[str, Any]:
        model = getattr(predictor, "model", None)
        names = (
            getattr(model.heads["properties"], "names", []) if model and "properties" in model.heads else []
        )
        if self.target not in names:
            why = f"the checkpoint has no properties head predicting {self.target!r}"
            return {"metrics": {}, "details": {"not_applicable": why}}
        column = names.index(self.target)
        structures = [s for s in data.structures if self.target in s.properties]
        predicted = np.concatenate(
            [
                out["properties"][:, column].double().cpu().numpy()
                for _, _, out in head_outputs(model, structures, ("properties",))
            ]
        )
        target = np.array([s.properties[self.target] for s in structures])
        mean, fitted_on = self._training_mean(data, target)
        unit = PROPERTY_UNITS.get(self.target, "")
        error, baseline = predicted - target, mean - target
        metrics = {
            "mae": mean_metric(np.abs(error), unit=unit, seed=seed),
            "rmse": ratio_metric(error**2, np.ones_like(error), unit=unit, root=True, seed=seed),
            "baseline_mae": mean_metric(np.abs(baseline), unit=unit, seed=seed),
            "skill": _skill(np.abs(error), np.abs(baseline), seed),
        }
        by_domain: dict[str, dict[str, Any]] = {}
        for domain in sorted({s.domain for s in structures}):
            rows = np.array([s.domain == domain for s in structures])
            by_domain[domain] = {
                "mae": mean_metric(np.abs(error[rows]), unit=unit, seed=seed).to_dict(),
                "baseline_mae": mean_metric(np.abs(baseline[rows]), unit=unit, seed=seed).to_dict(),
            }
        details = {
            "property": self.target,
            "unit": unit,
            "structures": len(structures),
            "baseline_mean": mean,
            "baseline_fitted_on": fitted_on,
            "target_std": float(np.std(target)),
            "rows": [
                {"key": s.key, "reference": float(t), "predicted": float(p)}
                for s, t, p in zip(structures, target, predicted, strict=True)
            ][:1000],
        }
        return {
            "metrics": {"all": {k: v.to_dict() for k, v in metrics.items()}, **by_domain},
            "details": details,
        }

    def _training_mean(self, data: EvalData, target: np.ndarray) -> tuple[float, str]:
        """The mean predictor's constant: the property's mean over the corpus's training split."""
        if data.train_corpora:
            values = [
                s.properties[self.target]
                for s in read_split(data.train_corpora, "train")
                if self.target in s.properties
            ]
            if values:
                return float(np.mean(values)), "train split of " + ", ".join(data.train_corpora)
        return float(np.mean(target)), "the evaluated structures themselves (no training split)"


def _skill(model_error: np.ndarray, baseline_error: np.ndarray, seed: int) -> Any:
    """1 − Σ|model error| / Σ|baseline error| with a structure bootstrap (a ratio of paired sums)."""
    metric = ratio_metric(model_error, baseline_error, unit="", seed=seed, better="lower")
    metric.value = 1.0 - metric.value
    metric.ci95 = (1.0 - metric.ci95[1], 1.0 - metric.ci95[0])
    metric.better = "higher"
    metric.n_items = metric.n
    return metric
