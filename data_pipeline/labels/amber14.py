"""amber14 (ff14SB, OpenMM) energies and forces of proteins in vacuum, after pdbfixer completes them."""

from __future__ import annotations

import io
import os
import random
import xml.etree.ElementTree as ElementTree
from collections import OrderedDict
from typing import Any

import numpy as np
from ase.units import kJ, mol

from data_pipeline.labels.base import Labeller, LabellingError
from data_pipeline.labels.protein_topology import (
    protein_from_openmm,
    protein_pdb_text,
    single_threaded_openmm,
)
from data_pipeline.schema import Structure

KJ_PER_MOL = kJ / mol  # eV
KJ_PER_MOL_NM = KJ_PER_MOL / 10.0  # eV/Å


class Amber14Labeller(Labeller):
    """Vacuum amber14 (``amber14-all.xml`` + TIP3P for any water), no cutoff, no constraints.

    A structure that already matches the force field's templates is labelled as it is. Otherwise pdbfixer
    replaces non-standard residues by their parents, adds missing heavy atoms and adds hydrogens at ``ph``,
    and the labelled structure is the fixed one (positions, atomic numbers and residue fields rebuilt).
    Missing residues are not modelled. OpenMM systems and contexts are cached per topology, so frames of
    one protein build them once.
    """

    name = "amber14"
    level_of_theory = "amber14"

    def __init__(self, *, ph: float = 7.0, platform: str | None = None, cache_size: int = 8) -> None:
        import openmm
        from openmm import app

        single_threaded_openmm()
        self._openmm, self._app = openmm, app
        self.forcefield = app.ForceField("amber14-all.xml", "amber14/tip3p.xml")
        self.ph = ph
        self.platform = None if platform is None else openmm.Platform.getPlatformByName(platform)
        self.cache_size = cache_size
        self._contexts: OrderedDict[tuple, tuple[Any, Any]] = OrderedDict()
        self._residues_with_hydrogens = _hydrogen_definitions(app)

    def compute(self, s: Structure) -> Structure:
        from openmm import unit

        text = protein_pdb_text(s)
        pdb = self._app.PDBFile(io.StringIO(text))
        labelled, topology = s, pdb.topology
        positions = np.asarray(s.positions, dtype=np.float64) * unit.angstrom
        try:
            context = self._context(topology)
        except ValueError as err:  # no template matches a residue: complete the structure and retry
            if "template" not in str(err):
                raise
            topology, positions = self._fix(text)
            labelled = protein_from_openmm(s, topology, positions)
            labelled.extra = {**s.extra, "amber14_added_atoms": labelled.num_atoms - s.num_atoms}
            context = self._context(topology)
        context.setPositions(positions)
        state = context.getState(getEnergy=True, getForces=True)
        energy = state.getPotentialEnergy().value_in_unit(unit.kilojoule_per_mole) * KJ_PER_MOL
        forces = np.asarray(
            state.getForces(asNumpy=True).value_in_unit(unit.kilojoule_per_mole / unit.nanometer)
        )
        return labelled.with_labels(
            energy=energy, forces=forces * KJ_PER_MOL_NM, stress=None, level_of_theory=self.level_of_theory
        )

    def _fix(self, pdb_text: str) -> tuple[Any, Any]:
        """pdbfixer: standard residues, missing heavy atoms, hydrogens at ``self.ph`` → (topology, positions)."""
        from pdbfixer import PDBFixer

        fixer = PDBFixer(pdbfile=io.StringIO(pdb_text))
        fixer.findNonstandardResidues()
        fixer.replaceNonstandardResidues()
        unknown = sorted({r.name for r in fixer.topology.residues()} - self._residues_with_hydrogens)
        if unknown:
            raise LabellingError(
                f"residues {', '.join(unknown)} (ligands or ions) have no amber14 template here; "
                "amber14 labels standard amino acids, nucleic acids and water"
            )
        fixer.findMissingResidues()
        fixer.missingResidues = {}
        fixer.findMissingAtoms()
        random.seed(
            pdb_text
        )  # OpenMM's Modeller places added atoms randomly: the same input, the same labels
        fixer.addMissingAtoms()
        fixer.addMissingHydrogens(self.ph, forcefield=self.forcefield)
        return fixer.topology, fixer.positions

    def _context(self, topology: Any) -> Any:
        """The cached OpenMM context for ``topology``; builds the system (raises ValueError on no template)."""
        key = (
            tuple(a.element.atomic_number for a in topology.atoms()),
            tuple(r.name for r in topology.residues()),
            tuple((b[0].index, b[1].index) for b in topology.bonds()),
        )
        if key in self._contexts:
            self._contexts.move_to_end(key)
            return self._contexts[key][0]
        system = self.forcefield.createSystem(
            topology, nonbondedMethod=self._app.NoCutoff, constraints=None, rigidWater=False
        )
        integrator = self._openmm.VerletIntegrator(0.001)
        context = (
            self._openmm.Context(system, integrator)
            if self.platform is None
            else self._openmm.Context(system, integrator, self.platform)
        )
        self._contexts[key] = (context, integrator)  # a context must not outlive its integrator
        if len(self._contexts) > self.cache_size:
            self._contexts.popitem(last=False)
        return context


def _hydrogen_definitions(app: Any) -> set[str]:
    """Residue names OpenMM knows how to protonate (amino acids, nucleic acids, water)."""
    path = os.path.join(os.path.dirname(app.__file__), "data", "hydrogens.xml")
    return {r.get("name") for r in ElementTree.parse(path).getroot().iter("Residue")}
