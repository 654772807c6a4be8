"""The G2 molecules ASE ships (``ase.collections.g2``): 162 small molecules and radicals at their geometries."""

from __future__ import annotations

from collections.abc import Iterator

import numpy as np

from data_pipeline.schema import Structure
from data_pipeline.sources.molecule_identity import connectivity_key


def g2_molecules() -> Iterator[Structure]:
    """Every G2 molecule, neutral; spin multiplicity from ASE's initial magnetic moments.

    Key ``g2/<name>``; group id from bonds RDKit perceives from the geometry (connectivity alone where
    bond orders cannot be assigned, as for radicals).
    """
    from ase.collections import g2

    for name in g2.names:
        atoms = g2[name]
        unpaired = int(round(abs(float(np.sum(atoms.get_initial_magnetic_moments())))))
        yield Structure(
            key=f"g2/{name}",
            domain="molecule",
            atomic_numbers=atoms.numbers.astype(np.uint8),
            positions=atoms.positions.astype(np.float32),
            charge=0,
            spin=unpaired + 1,
            group_id=_perceived_key(atoms.get_chemical_symbols(), atoms.positions),
            extra={"origin": "ase.collections.g2", "name": name},
        )


def _perceived_key(symbols: list[str], positions: np.ndarray) -> str:
    from rdkit import Chem, RDLogger
    from rdkit.Chem import rdDetermineBonds

    RDLogger.DisableLog("rdApp.*")
    xyz = f"{len(symbols)}\n\n" + "\n".join(
        f"{s} {x:.6f} {y:.6f} {z:.6f}" for s, (x, y, z) in zip(symbols, positions, strict=True)
    )
    mol = Chem.MolFromXYZBlock(xyz)
    try:
        rdDetermineBonds.DetermineBonds(mol, charge=0)
    except ValueError:
        mol = Chem.MolFromXYZBlock(xyz)
        rdDetermineBonds.DetermineConnectivity(mol)
    return connectivity_key(mol)
