"""Accuracy on labelled data, in the units of MACE's error tables: energy MAE and RMSE per atom (meV/atom),
force MAE and RMSE per component (meV/Å) and cosine similarity, stress MAE (meV/Å³); per domain, overall, and
the force error of each element; parity samples for the plots; and each structure's absolute energy and force
error sums under its key (``per_structure``), so that two models scored on the same structures can be compared
pairwise (the leaderboard's pretrained-versus-scratch gain interval)."""

from __future__ import annotations

from collections import defaultdict
from typing import Any

import numpy as np
from ase.data import chemical_symbols
from tqdm import tqdm

from eval.data import EvalData
from eval.metrics import ratio_metric
from eval.tasks.base import EvalTask, Predictor
from model.predict import label_errors

MEV = 1000.0
PARITY_ENERGIES = 1000  # points per domain in the result file
PARITY_FORCES = 3000
PER_STRUCTURE = ("energy_abs", "force_abs")  # the columns kept per structure


class _Errors:
    """Per-structure error sums of one group (a domain, or all)."""

    def __init__(self) -> None:
        self.columns: dict[str, tuple[list[float], list[float]]] = defaultdict(lambda: ([], []))
        self.keys: dict[str, list[str]] = defaultdict(list)  # the structure of each entry of a column
        self.parity: dict[str, tuple[list[float], list[float]]] = defaultdict(lambda: ([], []))

    def add(self, name: str, total: float, count: float, key: str = "") -> None:
        sums, counts = self.columns[name]
        sums.append(total)
        counts.append(count)
        self.keys[name].append(key)

    def per_structure(self) -> dict[str, dict[str, list]]:
        """{column: {"keys", "sums", "counts"}}: each structure's error total (eV/atom·atoms, eV/Å·components)."""
        return {
            name: {
                "keys": self.keys[name],
                "sums": [round(x, 9) for x in self.columns[name][0]],
                "counts": self.columns[name][1],
            }
            for name in PER_STRUCTURE
            if self.columns[name][0]
        }

    def metric(
        self, name: str, *, unit: str, scale: float = MEV, root: bool = False, better: str = "lower"
    ) -> Any:
        sums, counts = self.columns[name]
        return ratio_metric(
            np.array(sums), np.array(counts), unit=unit, scale=scale, root=root, better=better
        )


class Accuracy(EvalTask):
    name = "accuracy"
    primary_metric = "force_mae"
    description = "energy, force and stress errors per domain and per element, beside the baselines"
    baseline_applies = True

    def applies_to(self, data: EvalData) -> str | None:
        if not any(s.energy is not None or s.forces is not None for s in data.structures):
            return "the data carries no energy or force labels"
        return None

    def run(
        self, predictor: Predictor, data: EvalData, *, seed: int = 0, progress: bool = True
    ) -> dict[str, Any]:
        groups: dict[str, _Errors] = defaultdict(_Errors)
        elements: dict[tuple[str, int], _Errors] = defaultdict(_Errors)
        bar = tqdm(
            total=len(data.structures),
            desc=f"accuracy {predictor.name}",
            unit=" structures",
            disable=not progress,
        )
        failed: dict[str, int] = defaultdict(int)
        for s, pred in predictor.predict(data.structures):
            bar.update()
            if pred is None:  # the predictor could not handle it: counted, left out of the metrics
                failed[s.domain] += 1
                continue
            for group in (groups[s.domain], groups["all"]):
                self._add(group, s, pred, elements if group is groups["all"] else None)
        bar.close()
        metrics, per_element, parity, per_structure = {}, defaultdict(dict), {}, {}
        for domain, errors in sorted(groups.items()):
            metrics[domain] = {
                "energy_mae": errors.metric("energy_abs", unit="meV/atom"),
                "energy_rmse": errors.metric("energy_sq", unit="meV/atom", root=True),
                "force_mae": errors.metric("force_abs", unit="meV/Å"),
                "force_rmse": errors.metric("force_sq", unit="meV/Å", root=True),
                "force_cos": errors.metric("force_cos", unit="", scale=1.0, better="higher"),
                "stress_mae": errors.metric("stress_abs", unit="meV/Å³"),
            }
            metrics[domain] = {k: v.to_dict() for k, v in metrics[domain].items() if v.n > 0}
            if domain != "all":
                parity[domain] = _parity(errors, seed)
                per_structure[domain] = errors.per_structure()
        for (domain, z), errors in sorted(elements.items()):
            m = errors.metric("force_abs", unit="meV/Å")
            if m.n:
                per_element[domain][chemical_symbols[z]] = {"force_mae": m.to_dict()}
        counts = {d: len(v) for d, v in data.by_domain().items()}
        details = {
            "structures_per_domain": counts,
            "force_kind": predictor.identity().get("forces"),
            "failed_per_domain": dict(failed),
            "failures": dict(getattr(predictor, "failures", {})),
        }
        return {
            "metrics": metrics,
            "per_element": dict(per_element),
            "parity": parity,
            "per_structure": per_structure,
            "details": details,
        }

    @staticmethod
    def _add(errors: _Errors, s: Any, pred: Any, elements: dict | None) -> None:
        for name, (total, count) in label_errors(s, pred).items():
            errors.add(name, total, count, s.key)
        if s.energy is not None:
            errors.parity["energy"][0].append(s.energy / s.num_atoms)
            errors.parity["energy"][1].append(pred.energy / s.num_atoms)
        if s.forces is not None and pred.forces is not None:
            ref = np.asarray(s.forces, dtype=np.float64)
            norms = np.linalg.norm(ref, axis=1) * np.linalg.norm(pred.forces, axis=1)
            ok = norms > 1e-8
            cos = (ref[ok] * pred.forces[ok]).sum(axis=1) / norms[ok]
            errors.add("force_cos", float(cos.sum()), int(ok.sum()))
            errors.parity["forces"][0].extend(ref.ravel().tolist())
            errors.parity["forces"][1].extend(pred.forces.ravel().tolist())
            if elements is not None:
                diff = np.abs(pred.forces - ref)
                for z in np.unique(s.atomic_numbers):
                    rows = np.asarray(s.atomic_numbers) == z
                    elements[(s.domain, int(z))].add("force_abs", float(diff[rows].sum()), diff[rows].size)


def _parity(errors: _Errors, seed: int) -> dict[str, Any]:
    rng = np.random.default_rng(seed)
    out = {}
    for name, limit, unit in (("energy", PARITY_ENERGIES, "eV/atom"), ("forces", PARITY_FORCES, "eV/Å")):
        ref, pred = (np.asarray(v) for v in errors.parity[name])
        if len(ref) == 0:
            continue
        keep = np.sort(rng.choice(len(ref), size=min(limit, len(ref)), replace=False))
        out[name] = {
            "reference": ref[keep].round(6).tolist(),
            "predicted": pred[keep].round(6).tolist(),
            "unit": unit,
            "points": int(len(ref)),
        }
    return out
