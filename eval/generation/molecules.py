"""Molecules as generation handles them, and their files: SDF (with perceived bonds) and extxyz."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from data_pipeline.schema import BadInputError, Structure


@dataclass
class Molecule:
    """One molecule to score: atomic numbers [n], positions [n, 3] Å, total charge (e), where it came from."""

    numbers: np.ndarray
    positions: np.ndarray
    charge: int = 0
    source: str = ""

    @property
    def num_atoms(self) -> int:
        return int(len(self.numbers))

    @classmethod
    def from_structure(cls, s: Structure) -> Molecule:
        positions = np.asarray(s.positions, dtype=np.float64)
        return cls(
            np.asarray(s.atomic_numbers, dtype=np.int64).copy(),
            positions - positions.mean(axis=0),
            charge=int(s.charge),
            source=s.key,
        )


def write_sdf(path: str | Path, molecules: Sequence[Molecule]) -> Path:
    """Each molecule with the bonds and formal charges rdDetermineBonds perceives (connectivity alone, all
    single bonds, where it finds no bond orders; the record's ``bond_orders`` property says which)."""
    from rdkit import Chem

    from eval.generation.chemistry import perceive_rdkit

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    writer = Chem.SDWriter(str(tmp))
    writer.SetKekulize(False)
    for index, m in enumerate(molecules):
        perception = perceive_rdkit(m.numbers, m.positions, m.charge)
        mol = Chem.Mol(perception.mol)
        mol.UpdatePropertyCache(strict=False)
        mol.SetProp("_Name", m.source or f"sample_{index}")
        mol.SetIntProp("index", index)
        mol.SetIntProp("total_charge", int(m.charge))
        mol.SetProp("bond_orders", "perceived" if perception.orders_found else f"none ({perception.error})")
        writer.write(mol)
    writer.close()
    tmp.replace(path)
    return path


def write_extxyz(path: str | Path, molecules: Sequence[Molecule]) -> Path:
    import ase.io
    from ase import Atoms

    path = Path(path)
    frames = []
    for index, m in enumerate(molecules):
        atoms = Atoms(numbers=m.numbers, positions=m.positions)
        atoms.info.update({"index": index, "charge": int(m.charge), "source": m.source or f"sample_{index}"})
        frames.append(atoms)
    tmp = path.with_name(path.name + ".tmp")
    ase.io.write(tmp, frames, format="extxyz")
    tmp.replace(path)
    return path


def read_molecules(path: str | Path) -> list[Molecule]:
    """Molecules of an SDF (atoms and coordinates; bonds are perceived again when scored, so files from any
    code are judged alike) or of any file ASE reads (extxyz, xyz, ...; ``charge`` from each frame's info)."""
    path = Path(path)
    if not path.is_file():
        raise BadInputError("no such file", path=str(path))
    if path.suffix.lower() == ".sdf":
        from rdkit import Chem

        out = []
        for index, mol in enumerate(Chem.SDMolSupplier(str(path), removeHs=False, sanitize=False)):
            if mol is None or mol.GetNumConformers() == 0:
                raise BadInputError(f"record {index} is unreadable or has no coordinates", path=str(path))
            numbers = np.array([a.GetAtomicNum() for a in mol.GetAtoms()], dtype=np.int64)
            charge = (
                mol.GetIntProp("total_charge")
                if mol.HasProp("total_charge")
                else sum(a.GetFormalCharge() for a in mol.GetAtoms())
            )
            name = mol.GetProp("_Name") if mol.HasProp("_Name") else ""
            out.append(Molecule(numbers, mol.GetConformer().GetPositions(), int(charge), name))
        return out
    import ase.io

    try:
        frames = ase.io.read(path, index=":")
    except Exception as err:  # ASE raises many types for unreadable files
        raise BadInputError(f"ASE cannot read it: {err}", path=str(path)) from None
    return [
        Molecule(
            a.numbers.astype(np.int64),
            a.positions.astype(np.float64),
            int(a.info.get("charge", 0)),
            str(a.info.get("source", "")),
        )
        for a in frames
    ]
