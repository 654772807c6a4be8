"""A protein :class:`Structure` as an OpenMM topology, and an OpenMM topology back as a Structure.

A protein record carries per-atom ``chain_id``, ``residue_index`` (the file's residue number),
``residue_name`` and ``atom_name``, and optionally ``insertion_code``, as the PDB/mmCIF reader writes
them. OpenMM reads the record through PDB text, so atom names are normalised to its templates and bonds
(disulfides included) are made the way its PDB reader makes them.
"""

from __future__ import annotations

import io
from dataclasses import replace
from typing import Any

import numpy as np

from data_pipeline.labels.base import LabellingError
from data_pipeline.schema import Structure

PROTEIN_ATOM_FIELDS: tuple[str, ...] = ("chain_id", "residue_index", "residue_name", "atom_name")
RESIDUE_FIELDS: tuple[str, ...] = ("chain_id", "residue_index", "insertion_code")
PEPTIDE_BOND_MAX = 2.0  # Å: a longer C(i)–N(i+1) distance is a chain break (missing residues)


def single_threaded_openmm() -> None:
    """One thread for OpenMM's CPU platform in this process, as for every labeller: its multithreaded force
    sums differ in the last bits from run to run, and one process per core is faster here anyway."""
    import openmm

    openmm.Platform.getPlatformByName("CPU").setPropertyDefaultValue("Threads", "1")


def residue_starts(s: Structure) -> np.ndarray:
    """Index of the first atom of each residue: where chain, residue number or insertion code changes."""
    missing = [name for name in PROTEIN_ATOM_FIELDS if name not in s.per_atom]
    if missing:
        raise LabellingError(
            f"protein record lacks per-atom {', '.join(missing)} (residue information that a "
            "PDB/mmCIF reader provides)"
        )
    change = np.zeros(s.num_atoms, dtype=bool)
    change[0] = True
    for name in RESIDUE_FIELDS:
        if name in s.per_atom:
            values = np.asarray(s.per_atom[name])
            change[1:] |= values[1:] != values[:-1]
    return np.flatnonzero(change)


def segment_starts(s: Structure, starts: np.ndarray) -> set[int]:
    """First atoms of the residues that begin a chain: a new ``chain_id``, or a gap after the residue before
    (its C more than :data:`PEPTIDE_BOND_MAX` from this residue's N), so that no bond spans missing residues.
    """
    chain_ids, atom_names = np.asarray(s.per_atom["chain_id"]), np.asarray(s.per_atom["atom_name"])
    positions = np.asarray(s.positions, dtype=np.float64)
    bounds = np.r_[starts, s.num_atoms]
    first = {int(starts[0])}
    for k in range(1, len(starts)):
        c = [i for i in range(bounds[k - 1], bounds[k]) if atom_names[i] == "C"]
        n = [i for i in range(bounds[k], bounds[k + 1]) if atom_names[i] == "N"]
        gap = bool(c and n) and np.linalg.norm(positions[c[0]] - positions[n[0]]) > PEPTIDE_BOND_MAX
        if gap or chain_ids[bounds[k]] != chain_ids[bounds[k - 1]]:
            first.add(int(bounds[k]))
    return first


def protein_pdb_text(s: Structure) -> str:
    """PDB text of ``s``, residues numbered from 1 in record order; each unbroken run of a chain is a chain."""
    from openmm import unit
    from openmm.app import Element, PDBFile, Topology

    starts = residue_starts(s)
    chain_starts = segment_starts(s, starts)
    residue_set = set(starts.tolist())
    atom_names, residue_names = s.per_atom["atom_name"], s.per_atom["residue_name"]
    chain_ids = s.per_atom["chain_id"]
    topology = Topology()
    chain = residue = None
    for i, z in enumerate(s.atomic_numbers):
        if i in chain_starts:
            chain = topology.addChain(str(chain_ids[i]))
        if i in residue_set:
            residue = topology.addResidue(str(residue_names[i]), chain)
        topology.addAtom(str(atom_names[i]), Element.getByAtomicNumber(int(z)), residue)
    text = io.StringIO()
    PDBFile.writeFile(topology, np.asarray(s.positions, dtype=np.float64) * unit.angstrom, text)
    return text.getvalue()


def openmm_atom_fields(topology: Any) -> tuple[np.ndarray, dict[str, np.ndarray]]:
    """Atomic numbers [N] and the per-atom residue fields of an OpenMM topology read from a file."""
    atoms = list(topology.atoms())

    def number(residue: Any) -> int:
        text = residue.id.strip()
        return int(text) if text.lstrip("-").isdigit() else residue.index + 1

    per_atom = {
        "chain_id": np.array([a.residue.chain.id for a in atoms]),
        "residue_index": np.array([number(a.residue) for a in atoms], dtype=np.int32),
        "insertion_code": np.array([a.residue.insertionCode.strip() for a in atoms]),
        "residue_name": np.array([a.residue.name for a in atoms]),
        "atom_name": np.array([a.name for a in atoms]),
    }
    return np.array([a.element.atomic_number for a in atoms], dtype=np.uint8), per_atom


def angstrom_array(positions: Any) -> np.ndarray:
    """OpenMM positions (a Quantity) as float64 [N, 3] Å."""
    from openmm import unit

    return np.asarray(positions.value_in_unit(unit.angstrom), dtype=np.float64).reshape(-1, 3)


def protein_from_openmm(template: Structure, topology: Any, positions: Any) -> Structure:
    """``template`` rebuilt with the atoms of an OpenMM ``topology`` whose residues are ``template``'s, in order.

    Positions, atomic numbers, atom and residue names come from the topology; chain id, residue number
    and insertion code are carried over from ``template`` residue by residue. Other per-atom arrays and
    labels are dropped, since they described the old atoms.
    """
    starts = residue_starts(template)
    if len(starts) != topology.getNumResidues():
        raise LabellingError(
            f"residue count changed from {len(starts)} to {topology.getNumResidues()} while fixing"
        )
    atomic_numbers, fields = openmm_atom_fields(topology)
    residue_of_atom = np.array([a.residue.index for a in topology.atoms()], dtype=np.int64)
    per_atom = {
        name: np.asarray(template.per_atom[name])[starts][residue_of_atom]
        for name in RESIDUE_FIELDS
        if name in template.per_atom
    }
    per_atom.update(residue_name=fields["residue_name"], atom_name=fields["atom_name"])
    return replace(
        template,
        atomic_numbers=atomic_numbers,
        positions=angstrom_array(positions).astype(np.float32),
        per_atom=per_atom,
        energy=None,
        forces=None,
        stress=None,
    )
