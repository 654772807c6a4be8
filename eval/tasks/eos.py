"""Equation of state: bulk modulus and equilibrium volume of test crystals, against the reference method.

Each crystal (one per ``group_id``, at most ``max_structures``, a seeded choice) is scaled isotropically to
``points`` volumes spanning ±``volume_range`` of its own volume, atoms moving with the cell (fixed fractional
coordinates, as in the ACWF verification protocol), and its energy computed by the predictor's calculator
and by the reference method of :mod:`eval.reference` (EMT for the EMT alloys, CHGNet for other crystals),
the model answering at the reference's level of theory. Both see the same geometries: the test structures
as the data pipeline made them (slightly strained and rattled, so V0 is near the scan's centre), not
relaxed first, which would cost a reference relaxation per crystal.

E(V) is fitted by the third-order Birch–Murnaghan equation, which is a cubic polynomial in V^(-2/3): a
linear least-squares fit, with no starting guess to go wrong. A fit fails when the cubic has no minimum
inside the scanned volumes (V0 would be an extrapolation) or is not convex there.

Metrics (material): bulk modulus MAE (GPa) and V0 error (% of the reference's V0) over crystals both fits
succeed on, and the share of crystals (whose reference fit succeeds) that the model fits; crystals the
reference cannot fit are listed, not scored. Not for the baseline (no volume dependence).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
from ase.units import GPa
from numpy.polynomial import Polynomial
from tqdm import tqdm

from data_pipeline.schema import BadInputError, Structure
from eval.data import EvalData
from eval.metrics import fraction_metric, mean_metric
from eval.predictors import structure_to_atoms
from eval.reference import reference_for, reference_level
from eval.tasks.base import EvalTask, Predictor
from eval.tasks.failures import Failures
from eval.tasks.selection import crystals, pick_structures


@dataclass
class BirchMurnaghan:
    """A fitted equation of state: V0 (Å³), B0 (GPa), E0 (eV)."""

    volume: float
    bulk_modulus: float
    energy: float


def birch_murnaghan(volumes: np.ndarray, energies: np.ndarray) -> BirchMurnaghan | str:
    """The third-order Birch–Murnaghan fit of E(V) (Å³, eV), or why there is none.

    E = a + b x + c x² + d x³ with x = V^(-2/3); at the minimum x0, B0 = V d²E/dV² = (4/9) E''(x0) V0^(-7/3).
    """
    volumes, energies = np.asarray(volumes, dtype=np.float64), np.asarray(energies, dtype=np.float64)
    if not np.isfinite(energies).all():
        return "non-finite energies"
    x = volumes ** (-2.0 / 3.0)
    cubic = Polynomial.fit(x, energies, 3)
    slope, curvature = cubic.deriv(), cubic.deriv(2)
    inside = [
        float(r.real)
        for r in slope.roots()
        if abs(r.imag) < 1e-12 and x.min() <= r.real <= x.max() and curvature(r.real) > 0
    ]
    if not inside:
        return "no convex minimum inside the scanned volumes"
    x0 = min(inside, key=cubic)
    v0 = x0**-1.5
    return BirchMurnaghan(v0, float(4.0 / 9.0 * curvature(x0) * v0 ** (-7.0 / 3.0)) / GPa, float(cubic(x0)))


def energy_volume_scan(s: Structure, calculator: Any, factors: np.ndarray) -> np.ndarray:
    """Energies (eV) of ``s`` with its volume scaled by each of ``factors``, atoms moving with the cell."""
    start = structure_to_atoms(s)
    energies = []
    for factor in factors:
        atoms = start.copy()
        atoms.set_cell(start.cell.array * factor ** (1.0 / 3.0), scale_atoms=True)
        atoms.calc = calculator
        energies.append(atoms.get_potential_energy())
    return np.array(energies, dtype=np.float64)


class EquationOfState(EvalTask):
    name = "eos"
    primary_metric = "bulk_modulus_mae"
    description = "bulk modulus and V0 of test crystals from E(V), against EMT / CHGNet"

    def __init__(self, max_structures: int = 16, points: int = 7, volume_range: float = 0.06) -> None:
        if points < 5:
            raise BadInputError(
                f"{points} volumes cannot test a 4-parameter fit; give 5 or more",
                field="task-option eos.points",
            )
        self.max_structures, self.points, self.volume_range = max_structures, points, volume_range

    def applies_to(self, data: EvalData) -> str | None:
        return None if crystals(data.structures) else "no 3D-periodic crystals in the data"

    def run(
        self, predictor: Predictor, data: EvalData, *, seed: int = 0, progress: bool = True
    ) -> dict[str, Any]:
        chosen = pick_structures(crystals(data.structures), self.max_structures, seed)
        factors = np.linspace(1.0 - self.volume_range, 1.0 + self.volume_range, self.points)
        failures = Failures()
        modulus_errors, volume_errors, fitted, table = [], [], [], {}
        for s in tqdm(chosen, desc=f"eos {predictor.name}", unit=" crystals", disable=not progress):
            level = reference_level(s)
            model = failures.attempt(
                "model", s.key, energy_volume_scan, s, predictor.calculator(level), factors
            )
            if model is None:
                continue
            ref = failures.attempt("reference", s.key, energy_volume_scan, s, reference_for(s), factors)
            if ref is None:
                continue
            volumes = factors * abs(float(np.linalg.det(np.asarray(s.cell, dtype=np.float64))))
            ref_fit, model_fit = birch_murnaghan(volumes, ref), birch_murnaghan(volumes, model)
            table[s.key] = {
                "group_id": s.group_id,
                "level_of_theory": level,
                "volume_per_atom": (volumes / s.num_atoms).round(5).tolist(),
                "reference_energy_per_atom": (ref / s.num_atoms).round(6).tolist(),
                "model_energy_per_atom": (model / s.num_atoms).round(6).tolist(),
                "reference_fit": _fit_row(ref_fit, s.num_atoms),
                "model_fit": _fit_row(model_fit, s.num_atoms),
            }
            if isinstance(ref_fit, str):
                continue
            fitted.append(not isinstance(model_fit, str))
            if isinstance(model_fit, BirchMurnaghan):
                modulus_errors.append(abs(model_fit.bulk_modulus - ref_fit.bulk_modulus))
                volume_errors.append(100.0 * abs(model_fit.volume - ref_fit.volume) / ref_fit.volume)
        metrics = {
            "bulk_modulus_mae": mean_metric(np.array(modulus_errors), unit="GPa", seed=seed),
            "volume_error": mean_metric(np.array(volume_errors), unit="%", seed=seed),
            "fit_success": fraction_metric(np.array(fitted), seed=seed),
        }
        return {
            "metrics": {"material": {k: m.to_dict() for k, m in metrics.items() if m.n > 0}},
            "details": {
                "crystals": len(chosen),
                "volume_factors": factors.round(6).tolist(),
                "structures": table,
                **failures.details(),
            },
        }


def _fit_row(fit: BirchMurnaghan | str, num_atoms: int) -> dict[str, Any]:
    if isinstance(fit, str):
        return {"failed": fit}
    return {
        "volume_per_atom": round(fit.volume / num_atoms, 5),
        "bulk_modulus_GPa": round(fit.bulk_modulus, 3),
        "energy_per_atom": round(fit.energy / num_atoms, 6),
    }
