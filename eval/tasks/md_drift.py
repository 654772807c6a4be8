"""Energy drift of short NVE molecular dynamics with the predictor's ASE calculator.

On up to ``max_structures`` test molecules (of two or more atoms; one per ``group_id``, a seeded choice),
at their own level of theory: velocities from a seeded Maxwell–Boltzmann distribution at ``temperature_k``
(centre-of-mass motion and rotation removed), then ``steps`` velocity-Verlet steps of ``timestep_fs``. A
conservative force field keeps E_pot + E_kin constant up to the integrator's O(dt²) error, which does not
grow; a drift means forces that are not −∂E/∂x, or an energy surface too rough for the time step.

- ``drift``: |slope| of a straight-line fit of the total energy per atom against time (meV/atom/ps);
- ``energy_fluctuation``: the largest |E_tot(t) − E_tot(0)| per atom (meV/atom);
- ``stable``: the share of runs that did not blow up: a non-finite energy or position, an atom whose
  nearest neighbour moved more than ``FLY_APART`` Å further away than at the start (the molecule came
  apart), or a total energy off by more than ``ENERGY_JUMP`` eV/atom. A run that blows up stops there and
  says why in the details, with the drift and fluctuation of the steps before (when there are at least
  ``MIN_FIT_STEPS``); the metrics ``drift`` and ``energy_fluctuation`` average the stable runs only, so a
  model whose molecules all come apart has none and ranks below every model that has them.

A calculator whose forces are not −∂E/∂x of its energy (``conserves_energy`` False: a checkpoint served by
its direct force head) is refused: NVE with such forces does not conserve any energy, so no drift would
mean anything. The result file says so (``details.not_applicable``) and has no metrics; evaluate the
checkpoint with ``--forces conservative`` to test its −∂E/∂x. Not for the baseline (zero forces).
"""

from __future__ import annotations

import logging
from typing import Any

import numpy as np
from ase import Atoms, units
from ase.md.velocitydistribution import Stationary, ZeroRotation
from ase.md.verlet import VelocityVerlet
from tqdm import tqdm

from data_pipeline.schema import Structure
from eval.data import EvalData
from eval.metrics import fraction_metric, mean_metric
from eval.predictors import structure_to_atoms
from eval.tasks.base import EvalTask, Predictor
from eval.tasks.failures import Failures
from eval.tasks.selection import pick_structures

log = logging.getLogger(__name__)

MEV = 1000.0
FLY_APART = 2.0  # Å
ENERGY_JUMP = 1.0  # eV/atom
MIN_FIT_STEPS = 20  # steps a run needs for its drift to be fitted
TRACE_POINTS = 50  # samples of each energy trace kept in the result file


def largest_neighbour_distance(positions: np.ndarray) -> float:
    """The largest distance (Å) from an atom to its nearest neighbour."""
    d = np.linalg.norm(positions[:, None, :] - positions[None, :, :], axis=-1)
    np.fill_diagonal(d, np.inf)
    return float(d.min(axis=1).max())


def nve_run(
    atoms: Atoms,
    calculator: Any,
    *,
    steps: int,
    timestep_fs: float,
    temperature_k: float,
    rng: np.random.Generator,
) -> dict[str, Any]:
    """Total energies (eV) of an NVE run, its times (ps) and why it stopped early (None: it did not)."""
    atoms.calc = calculator
    kt = units.kB * temperature_k
    atoms.set_momenta(rng.standard_normal((len(atoms), 3)) * np.sqrt(atoms.get_masses() * kt)[:, None])
    Stationary(atoms)
    ZeroRotation(atoms)
    dynamics = VelocityVerlet(atoms, timestep=timestep_fs * units.fs, logfile=None)
    n = len(atoms)
    start_spread = largest_neighbour_distance(atoms.positions)
    totals, temperatures = [atoms.get_total_energy()], [atoms.get_temperature()]
    blew_up = None
    for step in range(1, steps + 1):
        dynamics.run(1)
        total = atoms.get_total_energy()
        if not (np.isfinite(total) and np.isfinite(atoms.positions).all()):
            blew_up = f"non-finite energy or positions at step {step}"
        elif largest_neighbour_distance(atoms.positions) > start_spread + FLY_APART:
            blew_up = f"an atom left its neighbours at step {step}"
        elif abs(total - totals[0]) / n > ENERGY_JUMP:
            blew_up = f"total energy off by {abs(total - totals[0]) / n:.3g} eV/atom at step {step}"
        if blew_up:
            break
        totals.append(total)
        temperatures.append(atoms.get_temperature())
    times = np.arange(len(totals)) * timestep_fs / 1000.0
    return {
        "times": times,
        "totals": np.array(totals),
        "temperature": float(np.mean(temperatures)),
        "blew_up": blew_up,
    }


def _molecules(data: EvalData) -> list[Structure]:
    return [s for s in data.structures if s.domain == "molecule" and s.num_atoms >= 2]


class MDDrift(EvalTask):
    name = "md_drift"
    primary_metric = "drift"
    description = "total-energy drift of short NVE runs of test molecules (velocity Verlet, 300 K)"

    def __init__(
        self,
        max_structures: int = 4,
        steps: int = 200,
        timestep_fs: float = 0.5,
        temperature_k: float = 300.0,
    ) -> None:
        self.max_structures, self.steps = max_structures, steps
        self.timestep_fs, self.temperature_k = timestep_fs, temperature_k

    def applies_to(self, data: EvalData) -> str | None:
        return None if _molecules(data) else "no molecules of two or more atoms in the data"

    def run(
        self, predictor: Predictor, data: EvalData, *, seed: int = 0, progress: bool = True
    ) -> dict[str, Any]:
        molecules = pick_structures(_molecules(data), self.max_structures, seed)
        if not getattr(predictor.calculator(molecules[0].level_of_theory), "conserves_energy", True):
            reason = (
                f"{predictor.name}'s forces are its direct force head, not −∂E/∂x: NVE conserves no energy with "
                "them; evaluate with --forces conservative to test the checkpoint's −∂E/∂x"
            )
            log.warning("md_drift: %s", reason)
            return {"metrics": {}, "details": {"not_applicable": reason}}
        failures = Failures()
        drifts, fluctuations, stable, table = [], [], [], {}
        for index, s in enumerate(
            tqdm(molecules, desc=f"md_drift {predictor.name}", unit=" molecules", disable=not progress)
        ):
            run = failures.attempt(
                "model",
                s.key,
                nve_run,
                structure_to_atoms(s),
                predictor.calculator(s.level_of_theory),
                steps=self.steps,
                timestep_fs=self.timestep_fs,
                temperature_k=self.temperature_k,
                rng=np.random.default_rng([seed, index]),
            )
            if run is None:
                continue
            per_atom = MEV * (run["totals"] - run["totals"][0]) / s.num_atoms
            stable.append(run["blew_up"] is None)
            row: dict[str, Any] = {
                "atoms": s.num_atoms,
                "steps": len(per_atom) - 1,
                "temperature_K": round(run["temperature"], 2),
                "blew_up": run["blew_up"],
            }
            if len(per_atom) > MIN_FIT_STEPS:
                row["drift"] = abs(float(np.polyfit(run["times"], per_atom, 1)[0]))
                row["energy_fluctuation"] = float(np.abs(per_atom).max())
                if run["blew_up"] is None:
                    drifts.append(row["drift"])
                    fluctuations.append(row["energy_fluctuation"])
            every = max(1, len(per_atom) // TRACE_POINTS)
            row["time_ps"] = run["times"][::every].round(6).tolist()
            row["total_energy_meV_per_atom"] = per_atom[::every].round(6).tolist()
            table[s.key] = row
        metrics = {
            "drift": mean_metric(np.array(drifts), unit="meV/atom/ps", seed=seed),
            "energy_fluctuation": mean_metric(np.array(fluctuations), unit="meV/atom", seed=seed),
            "stable": fraction_metric(np.array(stable), seed=seed),
        }
        return {
            "metrics": {"molecule": {k: m.to_dict() for k, m in metrics.items() if m.n > 0}},
            "details": {"molecules": table, "blown_up": int(len(stable) - sum(stable)), **failures.details()},
        }
