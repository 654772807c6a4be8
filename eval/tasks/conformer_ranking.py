"""Conformer energy ranking: does the model order the conformers of each test molecule as the reference does?

Molecules are grouped by ``group_id`` (the molecule's identity, which the data pipeline hashes the splits on,
so no conformer of a test molecule was trained on), atoms, charge, spin and level of theory: conformers are
one molecule's geometries, and a group_id alone can join different molecules (the G2 set's N, NH, NH2 and
NH3 share ammonia's). Groups with at least ``min_conformers`` energy-labelled conformers are scored. Per group: the Spearman rank correlation of
predicted and reference energies, whether the reference's lowest conformer is predicted strictly lowest, and
the error of the energies relative to the group's mean (meV per molecule, the quantity conformer
benchmarks compare, free of any per-element offset).

A model that gives every conformer the same energy (the per-element reference baseline) ranks nothing: its
Spearman correlation is undefined and is counted as 0, and its lowest conformer is not "found" (ties are not
strictly lowest; predictions within ``TIE`` are ties, as a sum of per-element energies taken in another atom
order differs in its last digits). So the baseline scores 0 and 0%, the floor any model should beat.
"""

from __future__ import annotations

from collections import Counter, defaultdict
from typing import Any

import numpy as np
from ase import Atoms
from tqdm import tqdm

from data_pipeline.schema import Structure
from eval.data import EvalData
from eval.metrics import fraction_metric, mean_metric, ratio_metric
from eval.tasks.base import EvalTask, Predictor
from eval.tasks.failures import Failures

MEV = 1000.0
TIE = 1e-6  # eV: energies closer than this are equal (a sum of per-element energies in another atom order)


def average_ranks(values: np.ndarray, tie: float = TIE) -> np.ndarray:
    """Ranks 1..n of ``values``, values within ``tie`` of their sorted neighbour sharing their mean rank."""
    order = np.argsort(values, kind="stable")
    tie_group = np.concatenate([[0], np.cumsum(np.diff(values[order]) > tie)])
    ranks = np.empty(len(values), dtype=np.float64)
    for group in np.unique(tie_group):
        members = np.flatnonzero(tie_group == group)
        ranks[order[members]] = members.mean() + 1.0
    return ranks


def spearman(predicted: np.ndarray, reference: np.ndarray) -> float:
    """Spearman's rank correlation; 0 when either side is constant (no ranking to correlate)."""
    a = average_ranks(np.asarray(predicted, dtype=np.float64))
    b = average_ranks(np.asarray(reference, dtype=np.float64))
    a, b = a - a.mean(), b - b.mean()
    norm = np.sqrt((a * a).sum() * (b * b).sum())
    return float((a * b).sum() / norm) if norm > 0 else 0.0


def conformer_groups(structures: list[Structure], min_conformers: int) -> dict[str, list[Structure]]:
    """Energy-labelled conformers by ``group_id/formula[charge,spin]@level_of_theory``, groups of at least
    ``min_conformers``."""
    groups: dict[str, list[Structure]] = defaultdict(list)
    for s in sorted(structures, key=lambda s: s.key):
        if s.domain == "molecule" and s.energy is not None and s.group_id:
            formula = Atoms(numbers=s.atomic_numbers).get_chemical_formula()
            groups[f"{s.group_id}/{formula}[{s.charge},{s.spin}]@{s.level_of_theory}"].append(s)
    return {k: v for k, v in sorted(groups.items()) if len(v) >= min_conformers}


def _predicted_energies(predictor: Predictor, group: list[Structure]) -> np.ndarray:
    """The predicted energy (eV) of each conformer; an error naming the causes when some have none (a
    foreign calculator's predictions are None for elements it does not cover, its ``failures`` say why)."""
    seen = Counter(getattr(predictor, "failures", {}))
    energies = [None if p is None else p.energy for _, p in predictor.predict(group)]
    if None in energies:
        causes = Counter(getattr(predictor, "failures", {})) - seen
        raise RuntimeError(
            f"no prediction for {energies.count(None)} of {len(group)} conformers: {', '.join(causes)}"
        )
    return np.array(energies, dtype=np.float64)


class ConformerRanking(EvalTask):
    name = "conformer_ranking"
    primary_metric = "spearman"
    description = "Spearman correlation of conformer energies per test molecule, lowest conformer found"
    baseline_applies = True

    def __init__(self, min_conformers: int = 3) -> None:
        self.min_conformers = min_conformers

    def applies_to(self, data: EvalData) -> str | None:
        if not conformer_groups(data.structures, self.min_conformers):
            return f"no molecule has {self.min_conformers} or more energy-labelled conformers"
        return None

    def run(
        self, predictor: Predictor, data: EvalData, *, seed: int = 0, progress: bool = True
    ) -> dict[str, Any]:
        groups = conformer_groups(data.structures, self.min_conformers)
        failures = Failures()
        rho, found, abs_sums, counts, table = [], [], [], [], {}
        for name, group in tqdm(
            groups.items(),
            desc=f"conformer_ranking {predictor.name}",
            unit=" molecules",
            disable=not progress,
        ):
            model = failures.attempt("model", name, _predicted_energies, predictor, group)
            if model is None:
                if predictor.kind == "calculator":  # an ASE calculator can keep the state it failed in
                    predictor.calculator().reset()
                continue
            reference = np.array([s.energy for s in group], dtype=np.float64)
            lowest = int(np.argmin(reference))
            relative_ref, relative_model = reference - reference.mean(), model - model.mean()
            rho.append(spearman(model, reference))
            found.append(bool(model[lowest] < np.delete(model, lowest).min() - TIE))
            abs_sums.append(float(np.abs(relative_model - relative_ref).sum()))
            counts.append(len(group))
            table[name] = {
                "conformers": [s.key for s in group],
                "spearman": rho[-1],
                "lowest_found": found[-1],
                "reference_relative_meV": (MEV * relative_ref).round(3).tolist(),
                "predicted_relative_meV": (MEV * relative_model).round(3).tolist(),
            }
        metrics = {
            "spearman": mean_metric(np.array(rho), unit="", seed=seed, better="higher"),
            "lowest_conformer": fraction_metric(np.array(found), seed=seed),
            "relative_energy_mae": ratio_metric(
                np.array(abs_sums), np.array(counts), unit="meV", scale=MEV, seed=seed
            ),
        }
        return {
            "metrics": {"molecule": {k: m.to_dict() for k, m in metrics.items() if m.n > 0}},
            "details": {"groups": table, **failures.details()},
        }
