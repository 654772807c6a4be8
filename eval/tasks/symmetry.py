"""Symmetry of the trained model: rotation and translation invariance, force and stress equivariance, and the
mirror-image gap, measured through the predictor's ASE calculator (float64 for checkpoints).

On up to ``max_structures`` test structures (one per ``group_id``, domains in turn, a seeded choice), at
their own level of theory:

- ``rotations`` seeded uniform random rotations R of positions and cell: |E(Rx) − E(x)| per atom,
  |F(Rx) − R F(x)| (mean and largest component), |σ(Rx) − R σ(x) Rᵀ| for 3D-periodic cells;
- a random translation (atoms wrapped back into a periodic cell, so lattice translations are tested too):
  |E(x + t) − E(x)| per atom and |F(x + t) − F(x)|;
- the mirror image Px (P: x → −x, the cell mirrored with the atoms and two lattice vectors swapped so that
  it stays right-handed; the same lattice): |E(Px) − E(x)| per atom, |F(Px) − P F(x)|, |σ(Px) − P σ(x) P|.
  Physics says zero: the energy of a structure and of its mirror image are equal, isolated or periodic (the
  issue names isolated structures; crystals are reported in their own domain). A chiral model, one whose
  scalars can tell left from right, shows a gap here, and this task reports it as it is.

Units are the field's, meV/atom, meV/Å and meV/Å³; ``*_forces`` is the mean absolute component error,
``*_forces_max`` the mean over structures of each structure's largest component error. An exactly
equivariant model in float64 shows round-off, ~1e-9 meV/atom. The primary metric is the mirror gap: the
rotation errors of an equivariant architecture are round-off by construction, the mirror gap is what
architectures differ in. Not for the baseline (a sum of per-element energies is trivially symmetric).
"""

from __future__ import annotations

from collections import defaultdict
from typing import Any

import numpy as np
from ase import Atoms
from tqdm import tqdm

from data_pipeline.schema import BadInputError
from eval.data import EvalData
from eval.metrics import mean_metric, ratio_metric
from eval.predictors import structure_to_atoms
from eval.tasks.base import EvalTask, Predictor
from eval.tasks.failures import Failures
from eval.tasks.selection import pick_structures

MEV = 1000.0
MIRROR = np.diag([-1.0, 1.0, 1.0])
TRANSLATION = 3.0  # Å, standard deviation of the random translation's components


def random_rotation(rng: np.random.Generator) -> np.ndarray:
    """A uniformly random proper rotation [3, 3] (QR of a Gaussian matrix, signs fixed, det +1)."""
    q, r = np.linalg.qr(rng.standard_normal((3, 3)))
    q = q * np.sign(np.diag(r))
    return q if np.linalg.det(q) > 0 else -q


def transformed(atoms: Atoms, matrix: np.ndarray, translation: np.ndarray | None = None) -> Atoms:
    """``atoms`` with positions and cell rows mapped by ``matrix`` (v → matrix v), then translated."""
    moved = atoms.copy()
    moved.positions = atoms.positions @ matrix.T + (0.0 if translation is None else translation)
    if atoms.pbc.any():
        cell = atoms.cell.array @ matrix.T
        if np.linalg.det(cell) < 0:
            cell = cell[[1, 0, 2]]  # the same lattice, right-handed again
        moved.set_cell(cell, scale_atoms=False)
        if translation is not None:
            moved.wrap()
    return moved


class _Outputs:
    """Energy (eV), forces [N, 3] (eV/Å) and, for 3D-periodic cells, stress [3, 3] (eV/Å³) of one structure."""

    def __init__(self, atoms: Atoms, calculator: Any) -> None:
        atoms.calc = calculator
        self.energy = float(atoms.get_potential_energy())
        self.forces = np.asarray(atoms.get_forces(), dtype=np.float64)
        periodic = bool(atoms.pbc.all()) and "stress" in getattr(calculator, "implemented_properties", ())
        self.stress = np.asarray(atoms.get_stress(voigt=False), dtype=np.float64) if periodic else None


def symmetry_errors(
    atoms: Atoms, calculator: Any, rotations: list[np.ndarray], translation: np.ndarray
) -> dict:
    """Per-structure errors (meV units): sums and counts for the mean force errors, values for the rest."""
    n = len(atoms)
    base = _Outputs(atoms, calculator)
    out: dict[str, Any] = defaultdict(float)

    def compare(prefix: str, moved: _Outputs, matrix: np.ndarray, weight: float) -> None:
        force_error = np.abs(moved.forces - base.forces @ matrix.T) * MEV
        out[f"{prefix}_energy"] += weight * MEV * abs(moved.energy - base.energy) / n
        out[f"{prefix}_forces_sum"] += weight * float(force_error.sum())
        out[f"{prefix}_forces_count"] += weight * force_error.size
        out[f"{prefix}_forces_max"] = max(out[f"{prefix}_forces_max"], float(force_error.max()))
        if base.stress is not None and moved.stress is not None:
            stress_error = np.abs(moved.stress - matrix @ base.stress @ matrix.T) * MEV
            out[f"{prefix}_stress"] += weight * float(stress_error.mean())

    for rotation in rotations:
        compare(
            "rotation", _Outputs(transformed(atoms, rotation), calculator), rotation, 1.0 / len(rotations)
        )
    compare("translation", _Outputs(transformed(atoms, np.eye(3), translation), calculator), np.eye(3), 1.0)
    compare("mirror", _Outputs(transformed(atoms, MIRROR), calculator), MIRROR, 1.0)
    return dict(out)


class Symmetry(EvalTask):
    name = "symmetry"
    primary_metric = "mirror_energy"
    description = "rotation/translation invariance, force and stress equivariance, mirror-image energy gap"

    def __init__(self, max_structures: int = 16, rotations: int = 2) -> None:
        if rotations < 1:
            raise BadInputError("at least one rotation", field="task-option symmetry.rotations")
        self.max_structures, self.rotations = max_structures, rotations

    def run(
        self, predictor: Predictor, data: EvalData, *, seed: int = 0, progress: bool = True
    ) -> dict[str, Any]:
        chosen = pick_structures(data.structures, self.max_structures, seed)
        failures = Failures()
        rows: dict[str, list[dict[str, Any]]] = defaultdict(list)
        table = {}
        for index, s in enumerate(
            tqdm(chosen, desc=f"symmetry {predictor.name}", unit=" structures", disable=not progress)
        ):
            rng = np.random.default_rng([seed, index])
            rotations = [random_rotation(rng) for _ in range(self.rotations)]
            translation = rng.normal(0.0, TRANSLATION, 3)
            calculator = predictor.calculator(s.level_of_theory)
            errors = failures.attempt(
                "model", s.key, symmetry_errors, structure_to_atoms(s), calculator, rotations, translation
            )
            if errors is None:
                continue
            for group in (s.domain, "all"):
                rows[group].append(errors)
            table[s.key] = {"domain": s.domain, **{k: float(f"{v:.6g}") for k, v in errors.items()}}
        metrics = {group: self._metrics(group_rows, seed) for group, group_rows in sorted(rows.items())}
        return {
            "metrics": metrics,
            "details": {"structures": table, "chosen": len(chosen), **failures.details()},
        }

    @staticmethod
    def _metrics(rows: list[dict[str, Any]], seed: int) -> dict[str, Any]:
        def values(name: str) -> np.ndarray:
            return np.array([r[name] for r in rows if name in r], dtype=np.float64)

        out = {}
        for prefix in ("rotation", "translation", "mirror"):
            out[f"{prefix}_energy"] = mean_metric(values(f"{prefix}_energy"), unit="meV/atom", seed=seed)
            out[f"{prefix}_forces"] = ratio_metric(
                values(f"{prefix}_forces_sum"), values(f"{prefix}_forces_count"), unit="meV/Å", seed=seed
            )
            out[f"{prefix}_forces_max"] = mean_metric(values(f"{prefix}_forces_max"), unit="meV/Å", seed=seed)
            if prefix != "translation":
                out[f"{prefix}_stress"] = mean_metric(values(f"{prefix}_stress"), unit="meV/Å³", seed=seed)
        return {k: m.to_dict() for k, m in out.items() if m.n > 0}
