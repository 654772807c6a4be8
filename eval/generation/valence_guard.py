"""The valence guard: post-processing that rejects or repairs molecules whose valences are not allowed, and
says how many, never silently.

A molecule passes when rdDetermineBonds finds bond orders and formal charges for it and every atom's
valence is allowed for its element and charge (``eval/generation/chemistry.py``, the GEOM-Drugs-revisited
table). Modes:

- ``off``: every molecule kept, the failures counted;
- ``reject``: failing molecules dropped;
- ``repair``: a failing molecule is repaired, re-checked after each change, at most ``MAX_REPAIRS`` times:
  (1) if it is in several fragments, only the largest is kept; (2) otherwise, hydrogens bonded to two atoms
  are removed, and every heavy atom with more neighbours than its largest allowed valence loses its farthest
  hydrogen; a molecule that still fails, or that no rule applies to, is rejected.

Metrics of guarded sets are not comparable with published raw-sample figures (filtering raises them); the
result file records the guard's counts beside them.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np

from data_pipeline.schema import BadInputError
from eval.generation.chemistry import CHARGED_VALENCES, perceive_rdkit
from eval.generation.molecules import Molecule

MAX_REPAIRS = 8


@dataclass
class GuardReport:
    """How many molecules the guard checked, passed as they were, repaired (and by which rules), rejected."""

    mode: str
    checked: int = 0
    passed: int = 0
    repaired: int = 0
    rejected: int = 0
    repairs: Counter = field(default_factory=Counter)

    def to_dict(self) -> dict:
        return {
            "mode": self.mode,
            "checked": self.checked,
            "passed": self.passed,
            "repaired": self.repaired,
            "rejected": self.rejected,
            "repairs": dict(self.repairs),
        }

    def summary(self) -> str:
        kept = self.passed + self.repaired if self.mode != "off" else self.checked
        return (
            f"valence guard ({self.mode}): {self.checked} checked, {self.passed} passed, {self.repaired} repaired "
            f"({', '.join(f'{k}: {v}' for k, v in sorted(self.repairs.items())) or 'none'}), "
            f"{self.rejected} {'rejected' if self.mode != 'off' else 'failing (kept)'}; {kept} kept"
        )


def valences_allowed(m: Molecule) -> bool:
    perception = perceive_rdkit(m.numbers, m.positions, m.charge)
    return perception.orders_found and bool(perception.stable_atoms.all())


def apply_valence_guard(molecules: Sequence[Molecule], mode: str) -> tuple[list[Molecule], GuardReport]:
    """The molecules ``mode`` keeps (``off`` | ``reject`` | ``repair``) and the report of what it did."""
    if mode not in ("off", "reject", "repair"):
        raise BadInputError(
            f"unknown valence guard mode {mode!r}; expected off, reject or repair", field="valence-guard"
        )
    report = GuardReport(mode)
    kept: list[Molecule] = []
    for m in molecules:
        report.checked += 1
        if valences_allowed(m):
            report.passed += 1
            kept.append(m)
            continue
        if mode == "off":
            report.rejected += 1
            kept.append(m)
            continue
        repaired = _repair(m, report.repairs) if mode == "repair" else None
        if repaired is None:
            report.rejected += 1
        else:
            report.repaired += 1
            kept.append(repaired)
    return kept, report


def _repair(m: Molecule, repairs: Counter) -> Molecule | None:
    """The repaired molecule, or None; ``repairs`` counts each rule applied (only for successful repairs)."""
    from rdkit import Chem

    applied: Counter = Counter()
    for _ in range(MAX_REPAIRS):
        perception = perceive_rdkit(m.numbers, m.positions, m.charge)
        if perception.orders_found and perception.stable_atoms.all():
            repairs.update(applied)
            return m
        fragments = Chem.GetMolFrags(perception.mol)
        if len(fragments) > 1:
            keep = np.array(sorted(max(fragments, key=len)))
            m = Molecule(m.numbers[keep], m.positions[keep], m.charge, m.source)
            applied["kept largest fragment"] += 1
            continue
        drop = _surplus_hydrogens(m, perception.mol)
        if not drop:
            return None
        keep = np.setdiff1d(np.arange(m.num_atoms), drop)
        m = Molecule(m.numbers[keep], m.positions[keep], m.charge, m.source)
        applied["removed hydrogens"] += len(drop)
    return None


def _surplus_hydrogens(m: Molecule, mol: object) -> list[int]:
    """Every hydrogen bonded to more than one atom, and for each heavy atom with more neighbours than its
    largest allowed valence, its farthest hydrogen."""
    drop = []
    for atom in mol.GetAtoms():
        allowed = CHARGED_VALENCES.get(atom.GetSymbol())
        if atom.GetAtomicNum() == 1:
            if atom.GetDegree() > 1:
                drop.append(atom.GetIdx())
            continue
        if not allowed:
            continue
        largest = max(v for valences in allowed.values() for v in valences)
        hydrogens = [n.GetIdx() for n in atom.GetNeighbors() if n.GetAtomicNum() == 1]
        if atom.GetDegree() > largest and hydrogens:
            i = atom.GetIdx()
            drop.append(max(hydrogens, key=lambda h: float(np.linalg.norm(m.positions[h] - m.positions[i]))))
    return sorted(set(drop))
