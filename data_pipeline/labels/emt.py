"""Effective-medium theory (ASE's EMT) for fcc metals and their alloys: energy, forces, stress."""

from __future__ import annotations

import numpy as np
from ase import Atoms
from ase.data import chemical_symbols

from data_pipeline.labels.base import Labeller, LabellingError
from data_pipeline.schema import Structure

# The metals ASE's EMT is parametrised for (its H, C, N, O parameters are for demonstration only).
EMT_ELEMENTS: frozenset[int] = frozenset({13, 28, 29, 46, 47, 78, 79})  # Al Ni Cu Pd Ag Pt Au


class EMTLabeller(Labeller):
    """ASE's EMT calculator; stress only for cells periodic in all three directions."""

    name = "emt"
    level_of_theory = "emt"

    def __init__(self) -> None:
        from ase.calculators.emt import EMT

        self._emt = EMT

    def compute(self, s: Structure) -> Structure:
        unsupported = sorted({int(z) for z in s.atomic_numbers} - EMT_ELEMENTS)
        if unsupported:
            names = ", ".join(chemical_symbols[z] for z in unsupported)
            raise LabellingError(f"EMT has no parameters for {names}; it covers Al, Ni, Cu, Pd, Ag, Pt, Au")
        atoms = Atoms(
            numbers=s.atomic_numbers,
            positions=np.asarray(s.positions, dtype=np.float64),
            cell=None if s.cell is None else np.asarray(s.cell, dtype=np.float64),
            pbc=s.pbc,
        )
        atoms.calc = self._emt()
        energy = atoms.get_potential_energy()
        forces = atoms.get_forces()
        stress = atoms.get_stress(voigt=False) if np.all(s.pbc) else None
        return s.with_labels(
            energy=energy, forces=forces, stress=stress, level_of_theory=self.level_of_theory
        )
