"""Generation: how chemically sound a set of 3D molecules is, by the field's standard measures.

Scored on any molecules (a sampler's, the training set's, a baseline's, another code's SDF): bonds are
always perceived again from the coordinates (``eval/generation/chemistry.py`` says how and with which
valence tables), so every source is judged alike. Metrics, each over all ``n`` molecules unless said:

| metric | what |
| --- | --- |
| ``atom_stability_edm``, ``molecule_stability_edm`` | % atoms whose EDM-distance-table bond orders sum to an EDM valence; % molecules whose atoms all do (comparable with EDM-style QM9 figures) |
| ``atom_stability``, ``molecule_stability`` | the same with rdDetermineBonds' Kekulé orders and formal charges, against the GEOM-Drugs-revisited table (charged valences) |
| ``validity_edm`` | % whose largest fragment, with EDM's bonds, RDKit sanitises (EDM's validity) |
| ``validity`` | % whose rdDetermineBonds molecule has bond orders and a sanitisable largest fragment |
| ``connected`` | % that are one fragment (rdDetermineBonds connectivity) |
| ``valid_and_connected`` | % valid (rdDetermineBonds) and one fragment |
| ``uniqueness`` | % of the valid molecules whose canonical SMILES (largest fragment, no stereo) is the first of its kind |
| ``novelty`` | % of the unique valid SMILES absent from the training molecules' SMILES (perceived the same way) |
| ``posebusters`` | % passing every check of PoseBusters' ``mol_fast`` configuration (sanitisation, InChI, connectivity, radicals, bond lengths, angles, internal clashes, aromatic-ring flatness, non-aromatic-ring non-flatness, double-bond flatness); molecules without bond orders fail. ``mol_fast`` leaves out ``mol``'s internal-energy check (UFF energy against a 50-conformer ensemble, ~1 s per molecule here); xTB judges energies instead. ``posebusters="mol"`` restores it |
| ``xtb_relaxation_energy`` | GFN2-xTB energy before minus after a short relaxation (L-BFGS to ``xtb_fmax`` or ``xtb_steps``), kcal/mol per molecule, on a seeded subset of up to ``xtb_molecules`` valid molecules |
| ``xtb_relaxation_energy_per_atom`` | the same per atom, meV/atom |
| ``xtb_rmsd`` | RMSD between the molecule and its relaxed self after optimal superposition (Kabsch), Å |

Intervals are bootstrap 95% over molecules (uniqueness and novelty over the indicator of each molecule being
a first / a novel first, an approximation). The per-size xTB energies per atom before and after relaxation
are in ``details.xtb_by_size``, to set beside the training molecules' of the same size.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from eval.generation.chemistry import (
    edm_bond_orders,
    edm_stable_atoms,
    fragment_count,
    largest_fragment_smiles,
    molecule_from_edm_bonds,
    perceive_rdkit,
)
from eval.generation.molecules import Molecule
from eval.metrics import Metric, fraction_metric, mean_metric, ratio_metric

KCAL_PER_EV = 23.0605


@dataclass
class MoleculeScore:
    """Per-molecule outcome of the bond-based checks."""

    atoms: int
    edm_stable: int
    rdkit_stable: int
    valid_edm: bool
    valid: bool
    fragments: int
    smiles: str | None
    mol: Any  # the rdDetermineBonds RDKit molecule (bond orders only when ``valid``)


def score_molecule(m: Molecule) -> MoleculeScore:
    orders = edm_bond_orders(m.numbers, m.positions)
    edm_stable = edm_stable_atoms(m.numbers, orders)
    perception = perceive_rdkit(m.numbers, m.positions, m.charge)
    smiles = largest_fragment_smiles(perception.mol) if perception.orders_found else None
    return MoleculeScore(
        atoms=m.num_atoms,
        edm_stable=int(edm_stable.sum()),
        rdkit_stable=int(perception.stable_atoms.sum()),
        valid_edm=largest_fragment_smiles(molecule_from_edm_bonds(m.numbers, m.positions, orders))
        is not None,
        valid=smiles is not None,
        fragments=fragment_count(perception.mol),
        smiles=smiles,
        mol=perception.mol,
    )


def molecule_smiles(m: Molecule) -> str | None:
    """The canonical SMILES validity and novelty use (rdDetermineBonds, largest fragment, no stereo)."""
    perception = perceive_rdkit(m.numbers, m.positions, m.charge)
    return largest_fragment_smiles(perception.mol) if perception.orders_found else None


def training_smiles(molecules: Sequence[Molecule]) -> set[str]:
    """Canonical SMILES of the training molecules, perceived exactly as samples are."""
    from rdkit import RDLogger

    RDLogger.DisableLog("rdApp.*")
    return {s for s in map(molecule_smiles, molecules) if s is not None}


class GenerationMetrics:
    """Scores a set of molecules (see the module docstring). ``xtb_molecules`` 0 skips xTB;
    ``posebusters``: the PoseBusters configuration (``mol_fast``, ``mol``), or ``off``."""

    name = "generation"
    primary_metric = "molecule_stability"
    description = "stability, validity, uniqueness, novelty, PoseBusters and xTB relaxation of 3D molecules"

    def __init__(
        self,
        xtb_molecules: int = 100,
        xtb_steps: int = 100,
        xtb_fmax: float = 0.05,
        posebusters: str = "mol_fast",
    ) -> None:
        self.xtb_molecules = xtb_molecules
        self.xtb_steps = xtb_steps
        self.xtb_fmax = xtb_fmax
        self.posebusters = posebusters

    def options(self) -> dict[str, Any]:
        return {
            "xtb_molecules": self.xtb_molecules,
            "xtb_steps": self.xtb_steps,
            "xtb_fmax": self.xtb_fmax,
            "posebusters": self.posebusters,
        }

    def run(
        self,
        molecules: Sequence[Molecule],
        reference_smiles: set[str],
        *,
        seed: int = 0,
        progress: bool = True,
    ) -> dict[str, Any]:
        """The body of a result file: ``metrics["molecule"]`` and ``details``."""
        from rdkit import RDLogger

        RDLogger.DisableLog("rdApp.*")
        scores = [score_molecule(m) for m in _progress(molecules, progress, "bonds")]
        atoms = np.array([s.atoms for s in scores], dtype=np.float64)
        valid = np.array([s.valid for s in scores], dtype=bool)
        connected = np.array([s.fragments == 1 for s in scores], dtype=bool)
        metrics: dict[str, Metric] = {
            "atom_stability_edm": _percent_of_atoms([s.edm_stable for s in scores], atoms, seed),
            "molecule_stability_edm": fraction_metric([s.edm_stable == s.atoms for s in scores], seed=seed),
            "atom_stability": _percent_of_atoms([s.rdkit_stable for s in scores], atoms, seed),
            "molecule_stability": fraction_metric([s.rdkit_stable == s.atoms for s in scores], seed=seed),
            "validity_edm": fraction_metric([s.valid_edm for s in scores], seed=seed),
            "validity": fraction_metric(valid, seed=seed),
            "connected": fraction_metric(connected, seed=seed),
            "valid_and_connected": fraction_metric(valid & connected, seed=seed),
        }
        first, novel = _first_and_novel([s.smiles for s in scores if s.valid], reference_smiles)
        metrics["uniqueness"] = fraction_metric(first, seed=seed)
        metrics["novelty"] = fraction_metric(novel, seed=seed)
        details: dict[str, Any] = {
            "molecules": len(scores),
            "sizes": dict(sorted(Counter(int(a) for a in atoms).items())),
            "reference_smiles": len(reference_smiles),
            "valid_smiles_top": Counter(s.smiles for s in scores if s.valid).most_common(10),
        }
        if self.posebusters != "off":
            passed, checks = _posebusters([s.mol if s.valid else None for s in scores], self.posebusters)
            metrics["posebusters"] = fraction_metric(passed, seed=seed)
            details["posebusters_checks"] = checks
        if self.xtb_molecules > 0:
            rng = np.random.default_rng(seed)
            candidates = np.flatnonzero(valid)
            chosen = sorted(
                rng.choice(candidates, size=min(self.xtb_molecules, len(candidates)), replace=False)
            )
            rows = [
                _xtb_relaxation(molecules[int(i)], self.xtb_steps, self.xtb_fmax)
                for i in _progress(chosen, progress, "xTB")
            ]
            metrics.update(_xtb_metrics(rows, seed))
            details["xtb_by_size"] = _xtb_by_size(rows)
            details["xtb_failures"] = [r["error"] for r in rows if r.get("error")]
        return {"metrics": {"molecule": {k: v.to_dict() for k, v in metrics.items()}}, "details": details}


def _percent_of_atoms(stable: Sequence[int], atoms: np.ndarray, seed: int) -> Metric:
    return ratio_metric(
        np.asarray(stable, dtype=np.float64), atoms, unit="%", scale=100.0, seed=seed, better="higher"
    )


def _first_and_novel(smiles: list[str | None], reference: set[str]) -> tuple[np.ndarray, np.ndarray]:
    """Per valid molecule: whether its SMILES is the first of its kind; per unique SMILES: whether novel."""
    seen: set[str] = set()
    first = []
    for s in smiles:
        first.append(s not in seen)
        seen.add(s)
    return np.array(first, dtype=bool), np.array([s not in reference for s in seen], dtype=bool)


def _posebusters(mols: list[Any], config: str) -> tuple[np.ndarray, dict[str, float]]:
    """Whether each molecule passes every check of PoseBusters' ``config`` (None: fails), and each check's
    pass rate (%) over the molecules it could run on."""
    from posebusters import PoseBusters

    checkable = [i for i, m in enumerate(mols) if m is not None]
    passed = np.zeros(len(mols), dtype=bool)
    if not checkable:
        return passed, {}
    table = PoseBusters(config=config).bust([mols[i] for i in checkable], None, None, full_report=False)
    columns = [c for c in table.columns if table[c].dtype == bool]
    passed[checkable] = table[columns].all(axis=1).to_numpy()
    return passed, {c: round(100.0 * float(table[c].mean()), 2) for c in columns}


def _xtb_relaxation(m: Molecule, steps: int, fmax: float) -> dict[str, Any]:
    """GFN2-xTB energy (eV) before and after L-BFGS, the RMSD (Å) between the two geometries, steps."""
    from ase import Atoms
    from ase.optimize import LBFGS
    from tblite.ase import TBLite

    electrons = int(m.numbers.sum()) - m.charge
    atoms = Atoms(numbers=m.numbers, positions=m.positions)
    atoms.calc = TBLite(method="GFN2-xTB", charge=m.charge, multiplicity=1 + electrons % 2, verbosity=0)
    try:
        before = float(atoms.get_potential_energy())
        optimizer = LBFGS(atoms, logfile=None)
        converged = bool(optimizer.run(fmax=fmax, steps=steps))
        after = float(atoms.get_potential_energy())
    except Exception as err:  # tblite raises plain exceptions when the SCF does not converge
        return {"atoms": m.num_atoms, "error": f"{m.source or 'molecule'}: {err}"}
    return {
        "atoms": m.num_atoms,
        "before": before,
        "after": after,
        "rmsd": kabsch_rmsd(m.positions, atoms.positions),
        "converged": converged,
        "steps": int(optimizer.nsteps),
    }


def kabsch_rmsd(a: np.ndarray, b: np.ndarray) -> float:
    """RMSD (Å) between two [n, 3] conformations of the same atoms after optimal rotation and translation."""
    a, b = a - a.mean(axis=0), b - b.mean(axis=0)
    u, _, vt = np.linalg.svd(a.T @ b)
    d = np.sign(np.linalg.det(u @ vt))
    rotation = u @ np.diag([1.0, 1.0, d]) @ vt
    return float(np.sqrt(((a @ rotation - b) ** 2).sum(axis=1).mean()))


def _xtb_metrics(rows: list[dict[str, Any]], seed: int) -> dict[str, Metric]:
    ok = [r for r in rows if "error" not in r]
    drop = np.array([r["before"] - r["after"] for r in ok])
    natoms = np.array([r["atoms"] for r in ok], dtype=np.float64)
    return {
        "xtb_relaxation_energy": mean_metric(drop * KCAL_PER_EV, unit="kcal/mol", seed=seed),
        "xtb_relaxation_energy_per_atom": mean_metric(
            drop / np.maximum(natoms, 1) * 1000.0, unit="meV/atom", seed=seed
        ),
        "xtb_rmsd": mean_metric(np.array([r["rmsd"] for r in ok]), unit="Å", seed=seed),
        "xtb_converged": fraction_metric(
            np.array([r.get("converged", False) for r in rows], dtype=bool), seed=seed
        ),
    }


def _xtb_by_size(rows: list[dict[str, Any]]) -> dict[int, dict[str, float]]:
    by_size: dict[int, list[dict[str, Any]]] = {}
    for r in rows:
        if "error" not in r:
            by_size.setdefault(int(r["atoms"]), []).append(r)
    return {
        n: {
            "molecules": len(group),
            "energy_before_per_atom_ev": float(np.mean([r["before"] / n for r in group])),
            "energy_after_per_atom_ev": float(np.mean([r["after"] / n for r in group])),
        }
        for n, group in sorted(by_size.items())
    }


def _progress(items: Sequence[Any], enabled: bool, what: str) -> Any:
    if not enabled:
        return items
    from tqdm import tqdm

    return tqdm(items, desc=f"generation: {what}", unit="mol", leave=False)
