"""Relaxation: relax rattled test crystals with the model and with the reference method; compare the results.

Each crystal (one per ``group_id``, at most ``max_structures``, a seeded choice) has its atoms displaced by a
seeded Gaussian of ``rattle`` Å per component, then is relaxed from that same start by the predictor's
calculator and by the reference of :mod:`eval.reference` (EMT for the EMT alloys, CHGNet for other
crystals; the model answering at the reference's level of theory). Relaxation follows Matbench Discovery:
FIRE on ASE's ``FrechetCellFilter`` (atoms and cell, no symmetry constraint), converged when every force and
stress component (×volume) is below ``fmax`` eV/Å, at most ``max_steps`` steps.

Metrics (material), Matbench-Discovery style:

- ``energy_gap``: |E_ref(model-relaxed) − E_ref(reference-relaxed)| per atom (meV/atom): how far above the
  reference's minimum the model's relaxed structure lies, as the reference sees it;
- ``energy_error``: |E_model(model-relaxed) − E_ref(reference-relaxed)| per atom (meV/atom): the error of the
  relaxed energy the model would report;
- ``rmsd`` (Å) between the two relaxed structures: fractional displacements taken to the minimum image and
  with the mean (a rigid translation) removed, in the reference's cell; ``volume_error`` (%) of the cells;
- ``converged`` (% of model relaxations within ``max_steps``) and ``steps`` (mean model steps).

Not for the baseline: zero forces do not relax anything.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass
from typing import Any

import numpy as np
from ase import Atoms
from ase.filters import FrechetCellFilter
from ase.optimize import FIRE
from tqdm import tqdm

from eval.data import EvalData
from eval.metrics import fraction_metric, mean_metric
from eval.predictors import structure_to_atoms
from eval.reference import reference_for, reference_level
from eval.tasks.base import EvalTask, Predictor
from eval.tasks.failures import Failures
from eval.tasks.selection import crystals, pick_structures

MEV = 1000.0


@dataclass
class Relaxed:
    """The end of a relaxation: the structure, its energy (eV), whether it converged, the steps taken."""

    atoms: Atoms
    energy: float
    converged: bool
    steps: int


def relax(atoms: Atoms, calculator: Any, *, fmax: float, max_steps: int) -> Relaxed:
    """A relaxed copy of ``atoms`` (positions and cell)."""
    relaxed = atoms.copy()
    relaxed.calc = calculator
    optimizer = FIRE(FrechetCellFilter(relaxed), logfile=None)
    with warnings.catch_warnings():
        # the filter's matrix logarithm (scipy's logm) warns at every step about its ~1e-13 error estimate
        warnings.filterwarnings("ignore", message="logm result may be inaccurate")
        converged = bool(optimizer.run(fmax=fmax, steps=max_steps))
    if not (np.isfinite(relaxed.positions).all() and np.isfinite(relaxed.cell.array).all()):
        raise FloatingPointError("the relaxation left non-finite positions or cell")
    return Relaxed(relaxed, float(relaxed.get_potential_energy()), converged, int(optimizer.nsteps))


def relaxed_rmsd(model: Atoms, reference: Atoms) -> float:
    """RMSD (Å) of two relaxations of one crystal (same atom order): minimum-image fractional displacements,
    rigid translation removed, measured in the reference's cell."""
    shift = model.get_scaled_positions(wrap=False) - reference.get_scaled_positions(wrap=False)
    shift -= np.round(shift)
    shift -= shift.mean(axis=0)
    shift -= np.round(shift)
    return float(np.sqrt(((shift @ reference.cell.array) ** 2).sum(axis=1).mean()))


class Relaxation(EvalTask):
    name = "relaxation"
    primary_metric = "energy_gap"
    description = "relax rattled test crystals with the model and the reference; energy gap, RMSD, steps"

    def __init__(
        self, max_structures: int = 5, rattle: float = 0.05, fmax: float = 0.05, max_steps: int = 100
    ) -> None:
        self.max_structures, self.rattle, self.fmax, self.max_steps = max_structures, rattle, fmax, max_steps

    def applies_to(self, data: EvalData) -> str | None:
        return None if crystals(data.structures) else "no 3D-periodic crystals in the data"

    def run(
        self, predictor: Predictor, data: EvalData, *, seed: int = 0, progress: bool = True
    ) -> dict[str, Any]:
        chosen = pick_structures(crystals(data.structures), self.max_structures, seed)
        failures = Failures()
        rows: list[dict[str, Any]] = []
        table = {}
        for index, s in enumerate(
            tqdm(chosen, desc=f"relaxation {predictor.name}", unit=" crystals", disable=not progress)
        ):
            start = structure_to_atoms(s)
            start.positions += np.random.default_rng([seed, index]).normal(0.0, self.rattle, (s.num_atoms, 3))
            settings = {"fmax": self.fmax, "max_steps": self.max_steps}
            calculator = predictor.calculator(reference_level(s))
            model = failures.attempt("model", s.key, relax, start, calculator, **settings)
            if model is None:
                continue
            reference = reference_for(s)
            ref = failures.attempt("reference", s.key, relax, start, reference, **settings)
            model_by_ref = failures.attempt("reference", s.key, _energy, model.atoms, reference)
            if ref is None or model_by_ref is None:
                continue
            row = {
                "energy_gap": MEV * (model_by_ref - ref.energy) / s.num_atoms,
                "energy_error": MEV * (model.energy - ref.energy) / s.num_atoms,
                "rmsd": relaxed_rmsd(model.atoms, ref.atoms),
                "volume_error": 100.0 * (model.atoms.get_volume() / ref.atoms.get_volume() - 1.0),
                "converged": model.converged,
                "steps": model.steps,
                "reference_converged": ref.converged,
                "reference_steps": ref.steps,
                "level_of_theory": reference.level_of_theory,
            }
            rows.append(row)
            table[s.key] = {k: round(v, 6) if isinstance(v, float) else v for k, v in row.items()}

        def column(name: str) -> np.ndarray:
            return np.array([r[name] for r in rows], dtype=np.float64)

        metrics = {
            "energy_gap": mean_metric(np.abs(column("energy_gap")), unit="meV/atom", seed=seed),
            "energy_error": mean_metric(np.abs(column("energy_error")), unit="meV/atom", seed=seed),
            "rmsd": mean_metric(column("rmsd"), unit="Å", seed=seed),
            "volume_error": mean_metric(np.abs(column("volume_error")), unit="%", seed=seed),
            "converged": fraction_metric(column("converged"), seed=seed),
            "steps": mean_metric(column("steps"), unit="steps", seed=seed),
        }
        return {
            "metrics": {"material": {k: m.to_dict() for k, m in metrics.items() if m.n > 0}},
            "details": {"crystals": len(chosen), "structures": table, **failures.details()},
        }


def _energy(atoms: Atoms, calculator: Any) -> float:
    probe = atoms.copy()
    probe.calc = calculator
    return float(probe.get_potential_energy())
