"""Homonuclear diatomic curves: smooth, repulsive at short range, one minimum.

For every element of the test data and every domain it occurs in, an isolated dimer Z–Z (charge 0, singlet)
is evaluated at ``points`` distances from ``R_MIN_FRACTION`` of twice the element's covalent radius to the
model's cutoff (a checkpoint's ``backbone.cutoff``; ``DEFAULT_R_MAX`` Å for other calculators). The model is
conditioned on domain and level of theory, so each curve is asked for in the domain the element was seen in
and at the level most of that domain's structures with the element carry: H–H as a molecule at gfn2-xtb,
Pt–Pt as a material at emt, O–O both ways. An isolated "material" dimer is outside anything a material
corpus holds, which is the point: short-range repulsion should not depend on the conditioning.

Energies are relative to the far end, E(r) − E(r_max). Each curve is summarised by its shape, with energy
steps under ``FLAT`` eV counted as flat:

- ``single_minimum``: exactly one local minimum (the bound dimer; more are spurious wells, none an
  unbound or collapsing curve);
- ``repulsive``: E falls monotonically from the shortest distance to the global minimum and starts above the
  separated atoms;
- ``spurious_extrema``: sign changes of the force beyond the one at the minimum (a smoothness count).

Metrics per domain and overall; the curves themselves are in the details for plotting. Not for the baseline
(a constant curve).
"""

from __future__ import annotations

from collections import Counter, defaultdict
from typing import Any

import numpy as np
from ase import Atoms
from ase.data import chemical_symbols, covalent_radii
from tqdm import tqdm

from data_pipeline.schema import BadInputError
from eval.data import EvalData
from eval.metrics import fraction_metric, mean_metric
from eval.tasks.base import EvalTask, Predictor
from eval.tasks.failures import Failures

R_MIN_FRACTION = 0.5
DEFAULT_R_MAX = 6.0  # Å
FLAT = 1e-6  # eV


def dimers(data: EvalData) -> list[tuple[int, str, str]]:
    """(Z, domain, level of theory) of each element in each domain of the data."""
    levels: dict[tuple[int, str], Counter] = defaultdict(Counter)
    for s in data.structures:
        for z in np.unique(s.atomic_numbers):
            levels[(int(z), s.domain)][s.level_of_theory] += 1
    return [
        (z, domain, min(counts, key=lambda level: (-counts[level], level)))
        for (z, domain), counts in sorted(levels.items())
    ]


def dimer_curve(z: int, domain: str, distances: np.ndarray, calculator: Any) -> np.ndarray:
    """E(r) − E(r_max) (eV) of the isolated dimer Z–Z at each distance (Å)."""
    energies = []
    for r in distances:
        atoms = Atoms(numbers=[z, z], positions=[[0.0, 0.0, 0.0], [float(r), 0.0, 0.0]])
        atoms.info.update(charge=0, spin=1, domain=domain)
        atoms.calc = calculator
        energies.append(atoms.get_potential_energy())
    energies = np.array(energies, dtype=np.float64)
    if not np.isfinite(energies).all():
        raise FloatingPointError("non-finite dimer energies")
    return energies - energies[-1]


def curve_shape(energies: np.ndarray) -> dict[str, Any]:
    """Minima, extrema and short-range repulsion of a curve sampled at increasing distances."""
    steps = np.diff(energies)
    signs = np.where(np.abs(steps) < FLAT, 0.0, np.sign(steps))
    moving = signs[signs != 0]
    minima = int(np.sum((moving[:-1] < 0) & (moving[1:] > 0)))
    extrema = int(np.sum(moving[:-1] != moving[1:]))
    lowest = int(np.argmin(energies))
    repulsive = bool(lowest > 0 and energies[0] > 0 and np.all(signs[:lowest] <= 0))
    return {"minima": minima, "extrema": extrema, "repulsive": repulsive, "lowest": lowest}


class Diatomics(EvalTask):
    name = "diatomics"
    primary_metric = "single_minimum"
    description = "homonuclear dimer curves: one minimum, repulsive at short range, no spurious extrema"

    def __init__(self, points: int = 40) -> None:
        if points < 3:
            raise BadInputError(
                "a curve needs at least 3 points to have a minimum", field="task-option diatomics.points"
            )
        self.points = points

    def run(
        self, predictor: Predictor, data: EvalData, *, seed: int = 0, progress: bool = True
    ) -> dict[str, Any]:
        r_max = float(getattr(predictor.calculator(None), "cutoff", None) or DEFAULT_R_MAX)
        failures = Failures()
        shapes: dict[str, list[dict[str, Any]]] = defaultdict(list)
        curves = {}
        for z, domain, level in tqdm(
            dimers(data), desc=f"diatomics {predictor.name}", unit=" dimers", disable=not progress
        ):
            name = f"{chemical_symbols[z]}2@{domain}"
            distances = np.linspace(R_MIN_FRACTION * 2.0 * covalent_radii[z], r_max, self.points)
            energies = failures.attempt(
                "model", name, dimer_curve, z, domain, distances, predictor.calculator(level)
            )
            if energies is None:
                continue
            shape = curve_shape(energies)
            for group in (domain, "all"):
                shapes[group].append(shape)
            curves[name] = {
                "element": chemical_symbols[z],
                "domain": domain,
                "level_of_theory": level,
                "r": distances.round(5).tolist(),
                "energy": energies.round(6).tolist(),
                "minima": shape["minima"],
                "extrema": shape["extrema"],
                "repulsive": shape["repulsive"],
                "bond_length": round(float(distances[shape["lowest"]]), 5),
                "well_depth": round(float(-energies[shape["lowest"]]), 6),
            }
        metrics = {}
        for group, rows in sorted(shapes.items()):
            found = {
                "single_minimum": fraction_metric(np.array([r["minima"] == 1 for r in rows]), seed=seed),
                "repulsive": fraction_metric(np.array([r["repulsive"] for r in rows]), seed=seed),
                "spurious_extrema": mean_metric(
                    np.array([max(r["extrema"] - 1, 0) for r in rows]), unit="", seed=seed
                ),
            }
            metrics[group] = {k: m.to_dict() for k, m in found.items()}
        return {"metrics": metrics, "details": {"r_max": r_max, "curves": curves, **failures.details()}}
