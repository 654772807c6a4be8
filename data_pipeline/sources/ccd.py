"""Small molecules from the PDB Chemical Component Dictionary that biotite ships, at their ideal coordinates."""

from __future__ import annotations

from collections.abc import Iterator

import numpy as np
from ase.data import atomic_numbers as ATOMIC_NUMBERS

from data_pipeline.schema import Structure
from data_pipeline.sources.molecule_identity import (
    ORGANIC_ELEMENTS,
    connectivity_key,
    lowest_spin_multiplicity,
)
from data_pipeline.sources.perturb import rattle

BOND_ORDERS = {"SING": 1, "DOUB": 2, "TRIP": 3}


class ComponentTable:
    """Atoms and bonds of every released CCD component, as column arrays grouped by component."""

    def __init__(self) -> None:
        import biotite.structure.info as info

        ccd = info.get_ccd()
        comp, atom, bond = ccd["chem_comp"], ccd["chem_comp_atom"], ccd["chem_comp_bond"]
        released = comp["id"].as_array()[comp["pdbx_release_status"].as_array() == "REL"]
        self.atom_comp = atom["comp_id"].as_array()
        self.atom_id = atom["atom_id"].as_array()
        symbols, symbol_of_atom = np.unique(atom["type_symbol"].as_array(), return_inverse=True)
        self.z = np.array([ATOMIC_NUMBERS.get(s.capitalize(), 0) for s in symbols], dtype=np.int64)[
            symbol_of_atom
        ]
        self.formal_charge = atom["charge"].as_array(np.int64, masked_value=0)
        self.xyz = np.stack(
            [atom[f"pdbx_model_Cartn_{c}_ideal"].as_array(np.float64, masked_value=np.nan) for c in "xyz"],
            axis=1,
        )
        self.bond_comp = bond["comp_id"].as_array()
        self.bond_atoms = np.stack([bond["atom_id_1"].as_array(), bond["atom_id_2"].as_array()], axis=1)
        self.bond_order = bond["value_order"].as_array()
        self.atom_rows = _runs(self.atom_comp)
        self.bond_rows = _runs(self.bond_comp)
        self.released = set(released.tolist())

    def names(self, min_atoms: int, max_atoms: int) -> list[str]:
        """Released components of organic elements with ideal coordinates and min..max atoms (H included)."""
        organic = np.isin(self.z, list(ORGANIC_ELEMENTS))
        complete = np.isfinite(self.xyz).all(axis=1)
        keep = []
        for name, (start, stop) in self.atom_rows.items():
            if (
                min_atoms <= stop - start <= max_atoms
                and name in self.released
                and organic[start:stop].all()
                and complete[start:stop].all()
            ):
                keep.append(name)
        return sorted(keep)

    def molecule(self, name: str) -> object:
        """The component as an RDKit molecule with explicit hydrogens and its ideal conformer."""
        from rdkit import Chem

        start, stop = self.atom_rows[name]
        mol = Chem.RWMol()
        for z, q in zip(self.z[start:stop], self.formal_charge[start:stop], strict=True):
            atom = Chem.Atom(int(z))
            atom.SetFormalCharge(int(q))
            atom.SetNoImplicit(True)
            mol.AddAtom(atom)
        index = {a: i for i, a in enumerate(self.atom_id[start:stop])}
        b0, b1 = self.bond_rows.get(name, (0, 0))
        for (a, b), order in zip(self.bond_atoms[b0:b1], self.bond_order[b0:b1], strict=True):
            mol.AddBond(index[a], index[b], Chem.BondType.values[BOND_ORDERS[order]])
        Chem.SanitizeMol(mol)
        conformer = Chem.Conformer(stop - start)
        for i, xyz in enumerate(self.xyz[start:stop]):
            conformer.SetAtomPosition(i, xyz.tolist())
        mol.AddConformer(conformer, assignId=True)
        return mol.GetMol()


def _runs(labels: np.ndarray) -> dict[str, tuple[int, int]]:
    """``label → (start, stop)`` for an array whose equal labels are contiguous."""
    starts = np.flatnonzero(np.r_[True, labels[1:] != labels[:-1]])
    stops = np.r_[starts[1:], len(labels)]
    return {str(labels[a]): (int(a), int(b)) for a, b in zip(starts, stops, strict=True)}


def ccd_molecules(
    limit: int | None = None,
    *,
    seed: int = 0,
    min_atoms: int = 10,
    max_atoms: int = 30,
    copies: int = 1,
    max_displacement: float = 0.02,
) -> Iterator[Structure]:
    """Up to ``limit`` CCD components (random, by ``seed``), each as ``copies`` rattled ideal geometries.

    Keys ``ccd/<component>/<copy>``; group id = InChIKey connectivity block; charge from the formal charges.
    Components RDKit cannot sanitise are passed over.
    """
    from rdkit import RDLogger

    RDLogger.DisableLog("rdApp.*")
    table = ComponentTable()
    names = table.names(min_atoms, max_atoms)
    rng = np.random.default_rng(seed)
    rng.shuffle(names)
    produced = 0
    for name in names:
        if limit is not None and produced >= limit:
            return
        try:
            mol = table.molecule(name)
            group = connectivity_key(mol)
        except (KeyError, ValueError, RuntimeError):  # bond to an unlisted atom; RDKit: bad valence
            continue
        z = np.array([a.GetAtomicNum() for a in mol.GetAtoms()], dtype=np.uint8)
        charge = sum(a.GetFormalCharge() for a in mol.GetAtoms())
        ideal = mol.GetConformer().GetPositions()
        for copy in range(copies):
            yield Structure(
                key=f"ccd/{name}/{copy}",
                domain="molecule",
                atomic_numbers=z,
                positions=rattle(ideal, max_displacement, rng).astype(np.float32),
                charge=charge,
                spin=lowest_spin_multiplicity(z, charge),
                group_id=group,
                extra={"origin": "PDB Chemical Component Dictionary (biotite)", "component": name},
            )
        produced += 1
