"""The reference methods of the physics tasks, as ASE calculators: the labellers that made the corpus's labels.

``reference_for(s)`` is :func:`data_pipeline.labels.auto.labeller_for`'s choice (EMT for crystals made only
of EMT metals, CHGNet for other crystals, GFN2-xTB for molecules), wrapped so that ASE optimisers and
equation-of-state scans can drive it. Each labeller is built once per process (CHGNet loads its network).
Labellers store forces and stress in float32, so the reference's forces carry ~1e-7 relative round-off.
"""

from __future__ import annotations

from functools import cache
from typing import Any

import numpy as np
from ase import Atoms
from ase.calculators.calculator import Calculator, all_changes
from ase.stress import full_3x3_to_voigt_6_stress

from data_pipeline.labels.auto import labeller_for
from data_pipeline.labels.base import Labeller
from data_pipeline.schema import Structure


class LabellerCalculator(Calculator):
    """An ASE calculator that asks a labeller for energy, forces and (3D-periodic cells) stress.

    A labeller's failure is raised as its ``BadInputError`` (which names the structure and the method).
    """

    implemented_properties = ["energy", "free_energy", "forces", "stress"]

    def __init__(self, labeller: Labeller) -> None:
        super().__init__()
        self.labeller = labeller

    @property
    def level_of_theory(self) -> str:
        return self.labeller.level_of_theory

    def calculate(
        self, atoms: Atoms | None = None, properties: Any = None, system_changes: Any = all_changes
    ) -> None:
        super().calculate(atoms, properties, system_changes)
        a = self.atoms
        periodic = bool(a.pbc.any())
        labelled = self.labeller(
            Structure(
                key=str(a.info.get("key", "reference")),
                domain=str(a.info.get("domain", "material" if periodic else "molecule")),
                atomic_numbers=a.numbers.astype(np.uint8),
                positions=a.positions.copy(),
                cell=a.cell.array.copy() if periodic else None,
                pbc=a.pbc.copy(),
                charge=int(a.info.get("charge", 0)),
                spin=int(a.info.get("spin", 1)),
            )
        )
        self.results = {
            "energy": labelled.energy,
            "free_energy": labelled.energy,
            "forces": np.asarray(labelled.forces, dtype=np.float64),
        }
        if labelled.stress is not None:
            self.results["stress"] = full_3x3_to_voigt_6_stress(np.asarray(labelled.stress, dtype=np.float64))


def reference_for(s: Structure) -> LabellerCalculator:
    """The reference method of ``s`` (see the module docstring), as an ASE calculator."""
    return LabellerCalculator(_labeller(labeller_for(s)))


def reference_level(s: Structure) -> str:
    """The level of theory of ``s``'s reference method, without building it (CHGNet loads a network)."""
    return labeller_for(s).level_of_theory


@cache
def _labeller(kind: type[Labeller]) -> Labeller:
    return kind()
