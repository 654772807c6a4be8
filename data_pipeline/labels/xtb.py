"""GFN2-xTB and GFN1-xTB (tblite) energies and forces for molecules; stress as well for periodic cells; the
HOMO–LUMO gap and the dipole moment of molecules as structure properties."""

from __future__ import annotations

from dataclasses import replace

import numpy as np
from ase.units import Bohr, Hartree, kB

from data_pipeline.labels.base import Labeller, LabellingError
from data_pipeline.schema import Structure

MAX_XTB_Z = 86


class GFN2xTBLabeller(Labeller):
    """GFN2-xTB single points through tblite's Python API, using the record's total charge and spin.

    ``uhf`` (unpaired electrons) is ``spin - 1``; a multiplicity that the electron count cannot have is
    refused rather than silently smeared over fractional occupations. Non-periodic structures also get the
    properties ``homo_lumo_gap`` (eV, from the orbital energies) and ``dipole_moment`` (|μ|, e·Å).
    """

    name = "xtb"
    level_of_theory = "gfn2-xtb"
    method = "GFN2-xTB"  # tblite's name

    def __init__(
        self, *, accuracy: float = 1.0, max_iterations: int = 250, electronic_temperature: float = 300.0
    ) -> None:
        from tblite.interface import Calculator

        self._calculator = Calculator
        self.accuracy = accuracy
        self.max_iterations = max_iterations
        self.electronic_temperature = electronic_temperature  # K

    def compute(self, s: Structure) -> Structure:
        z = np.asarray(s.atomic_numbers, dtype=np.int64)
        if z.max() > MAX_XTB_Z:
            raise LabellingError(
                f"{self.method} is parametrised up to Z={MAX_XTB_Z}; this structure has Z={z.max()}"
            )
        electrons = int(z.sum()) - int(s.charge)
        unpaired = int(s.spin) - 1
        if electrons < 0 or (electrons - unpaired) % 2 or unpaired > electrons:
            raise LabellingError(
                f"spin multiplicity {s.spin} is impossible with {electrons} electrons (charge {s.charge})"
            )
        periodic = s.is_periodic
        calc = self._calculator(
            self.method,
            z,
            np.asarray(s.positions, dtype=np.float64) / Bohr,
            charge=float(s.charge),
            uhf=unpaired,
            lattice=np.asarray(s.cell, dtype=np.float64) / Bohr if periodic else None,
            periodic=np.asarray(s.pbc, dtype=bool) if periodic else None,
        )
        calc.set("verbosity", 0)
        calc.set("accuracy", self.accuracy)
        calc.set("max-iter", self.max_iterations)
        calc.set("temperature", self.electronic_temperature * kB / Hartree)
        result = calc.singlepoint()
        stress = None
        if periodic and np.all(s.pbc):
            volume = abs(float(np.linalg.det(np.asarray(s.cell, dtype=np.float64))))
            stress = result.get("virial") * Hartree / volume
        labelled = s.with_labels(
            energy=float(result.get("energy")) * Hartree,
            forces=-result.get("gradient") * Hartree / Bohr,
            stress=stress,
            level_of_theory=self.level_of_theory,
        )
        if periodic:
            return labelled
        properties = {"dipole_moment": float(np.linalg.norm(result.get("dipole"))) * Bohr}
        gap = homo_lumo_gap(result.get("orbital-energies"), result.get("orbital-occupations"))
        if gap is not None:
            properties["homo_lumo_gap"] = gap
        return replace(labelled, properties={**s.properties, **properties})


def homo_lumo_gap(orbital_energies: np.ndarray, occupations: np.ndarray) -> float | None:
    """LUMO − HOMO in eV from tblite's orbital energies (Hartree, ascending) and occupations (electrons per
    spatial orbital, summing to the valence electron count n): by aufbau the HOMO is orbital ⌈n/2⌉ − 1 (a
    radical's singly occupied one), the LUMO the next; a degenerate, partly filled shell (an atom) has gap 0;
    None when there is no LUMO in the basis (a hydrogen atom)."""
    energies = np.asarray(orbital_energies, dtype=np.float64).reshape(-1)
    electrons = int(round(float(np.sum(occupations))))
    homo = (electrons + 1) // 2 - 1
    if homo < 0 or homo + 1 >= energies.size:
        return None
    return max(0.0, float(energies[homo + 1] - energies[homo]) * Hartree)


class GFN1xTBLabeller(GFN2xTBLabeller):
    """GFN1-xTB, the older tight-binding level: a second level of theory the labellers make here (for
    fine-tuning a model to a level it has never seen)."""

    name = "xtb-gfn1"
    level_of_theory = "gfn1-xtb"
    method = "GFN1-xTB"
