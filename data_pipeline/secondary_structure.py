"""Three-state secondary structure per residue (DSSP, through pydssp) as a per-atom label of proteins.

pydssp (a NumPy/PyTorch reimplementation of DSSP's hydrogen-bond electrostatics, Kabsch & Sander 1983)
reads each chain's backbone N, CA, C, O in residue order; residues whose amide has no hydrogen (proline,
the N-terminus) are not donors. Its three states are DSSP's eight collapsed as usual (H, G, I → helix;
E, B → strand; the rest → coil). Every atom of a residue carries its residue's class in
``per_atom["secondary_structure"]``: 0 helix (H), 1 strand (E), 2 coil (C); −1 for atoms of residues
without a complete backbone, and for non-protein structures.
"""

from __future__ import annotations

from dataclasses import replace

import numpy as np

from data_pipeline.schema import BadInputError, Structure

SECONDARY_STRUCTURE = "secondary_structure"
CLASSES = ("H", "E", "C")  # class index → DSSP three-state letter
_PYDSSP_TO_CLASS = {"H": 0, "E": 1, "-": 2}
BACKBONE = ("N", "CA", "C", "O")


def residue_secondary_structure(s: Structure) -> np.ndarray:
    """int8 [N]: each atom's residue class (see the module docstring); needs per-atom ``residue_index``,
    ``atom_name`` (and ``chain_id``, when there are several chains)."""
    import pydssp

    labels = np.full(s.num_atoms, -1, dtype=np.int8)
    if s.domain != "protein":
        return labels
    for name in ("residue_index", "atom_name"):
        if name not in s.per_atom:
            raise BadInputError(
                "secondary structure needs the per-atom residue fields of a protein file",
                record=s.key,
                field=f"per_atom.{name}",
            )
    residues = np.asarray(s.per_atom["residue_index"])
    names = np.asarray(s.per_atom["atom_name"]).astype(str)
    chains = np.asarray(s.per_atom.get("chain_id", np.zeros(s.num_atoms, dtype="<U1"))).astype(str)
    positions = np.asarray(s.positions, dtype=np.float64)
    for chain in dict.fromkeys(chains.tolist()):
        in_chain = chains == chain
        order = list(dict.fromkeys(residues[in_chain].tolist()))
        backbone, donors, atoms_of = [], [], []
        for residue in order:
            atoms = np.flatnonzero(in_chain & (residues == residue))
            found = {names[i]: i for i in atoms}
            if all(a in found for a in BACKBONE):
                backbone.append([positions[found[a]] for a in BACKBONE])
                donors.append("H" in found)
                atoms_of.append(atoms)
        if len(backbone) < 3:
            continue
        states = pydssp.assign(np.asarray(backbone), donor_mask=np.asarray(donors), out_type="c3")
        for atoms, state in zip(atoms_of, states, strict=True):
            labels[atoms] = _PYDSSP_TO_CLASS[str(state)]
    return labels


def with_secondary_structure(s: Structure) -> Structure:
    """``s`` with ``per_atom["secondary_structure"]`` (proteins; other structures are returned as they are)."""
    if s.domain != "protein":
        return s
    return replace(s, per_atom={**s.per_atom, SECONDARY_STRUCTURE: residue_secondary_structure(s)})
