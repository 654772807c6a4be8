"""GFN2-xTB and GFN1-xTB (tblite) energies and forces for molecules; stress as well for periodic cells."""

from __future__ import annotations

import numpy as np
from ase.units import Bohr, Hartree, kB

from data_pipeline.labels.base import Labeller, LabellingError
from data_pipeline.schema import Structure

MAX_XTB_Z = 86


class GFN2xTBLabeller(Labeller):
    """GFN2-xTB single points through tblite's Python API, using the record's total charge and spin.

    ``uhf`` (unpaired electrons) is ``spin - 1``; a multiplicity that the electron count cannot have is
    refused rather than silently smeared over fractional occupations.
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
        return s.with_labels(
            energy=float(result.get("energy")) * Hartree,
            forces=-result.get("gradient") * Hartree / Bohr,
            stress=stress,
            level_of_theory=self.level_of_theory,
        )


class GFN1xTBLabeller(GFN2xTBLabeller):
    """GFN1-xTB, the older tight-binding level: a second level of theory the labellers make here (for
    fine-tuning a model to a level it has never seen)."""

    name = "xtb-gfn1"
    level_of_theory = "gfn1-xtb"
    method = "GFN1-xTB"
