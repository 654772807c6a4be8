"""What makes two molecular structures the same molecule: the InChIKey connectivity block."""

from __future__ import annotations

import numpy as np

# H C N O F P S Cl Br I
ORGANIC_ELEMENTS: frozenset[int] = frozenset({1, 6, 7, 8, 9, 15, 16, 17, 35, 53})


def connectivity_key(mol: object) -> str:
    """First block of the InChIKey of an RDKit molecule: its skeleton, blind to stereo and protonation.

    Conformers of one molecule share it, so splits hashed on it keep them on one side.
    """
    from rdkit import Chem

    key = Chem.MolToInchiKey(mol)
    if not key:
        raise ValueError(f"RDKit could not make an InChIKey for {Chem.MolToSmiles(mol)}")
    return key.split("-")[0]


def lowest_spin_multiplicity(atomic_numbers: np.ndarray, charge: int) -> int:
    """1 for an even electron count, 2 for an odd one (closed shell or doublet)."""
    return 1 + (int(np.sum(atomic_numbers, dtype=np.int64)) - int(charge)) % 2
