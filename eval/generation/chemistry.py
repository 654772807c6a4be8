"""Bonds perceived from 3D coordinates, two ways, and the valence tables that judge them.

**EDM's distance table** (Hoogeboom et al. 2022, for comparability with published QM9 figures): a pair is
bonded with order 3, 2 or 1 when its distance is under the tabulated triple, double or single bond length
plus a margin of 3, 5 or 10 pm (lengths from wiredchemist.com's table of covalent bond lengths, the values
EDM uses); pairs the table lacks are never bonded. An atom is stable when the sum of its bond orders is one
of EDM's allowed valences (formal charges do not exist in this picture, so N⁺ in a nitro group is
"unstable"). Every order is an integer, so aromatic rings come out as alternating single and double bonds
when the distances allow it, and never as the "aromatic counted as 1" that makes several published codes
overstate stability (a benzene carbon with three "single" aromatic bonds and an H has valence 4 there
whether or not its ring is chemically sensible).

**RDKit's rdDetermineBonds** (xyz2mol, Kim & Kim 2015): connectivity from covalent radii, then integer
(Kekulé) bond orders and formal charges that reproduce the molecule's total charge. An atom is stable when
its total valence (Kekulé orders, hydrogens explicit) is allowed for its element *and formal charge* in the
table of "GEOM-Drugs revisited" (Nikitin et al. 2025), with two changes: neutral S may have valence 4
(sulfoxides, which GEOM files only as S⁺–O⁻) and the rows that come from radicals or charge-separated
artefacts in GEOM (S⁰ valence 3, S³⁺) are left out. Aromatic bonds are never counted as single: orders are
Kekulé orders, the ones whose sum the table is about. When no bond-order assignment exists, each atom is
judged on its connectivity alone, every bond single and no charges (the molecule is then unstable anyway,
and its atoms are not all condemned).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
from ase.data import chemical_symbols

EDM_MARGINS_PM = {1: 10.0, 2: 5.0, 3: 3.0}

# Covalent bond lengths (pm) of EDM's table: single, double and triple bonds per element pair.
_SINGLE_PM = """
H-H 74 H-C 109 H-N 101 H-O 96 H-F 92 H-B 119 H-Si 148 H-P 144 H-As 152 H-S 134 H-Cl 127 H-Br 141 H-I 161
C-C 154 C-N 147 C-O 143 C-F 135 C-Si 185 C-P 184 C-S 182 C-Cl 177 C-Br 194 C-I 214
N-N 145 N-O 140 N-F 136 N-Cl 175 N-Br 214 N-S 168 N-I 222 N-P 177
O-O 148 O-F 142 O-Br 172 O-S 151 O-P 163 O-Si 163 O-Cl 164 O-I 194
F-F 142 F-S 158 F-Si 160 F-Cl 166 F-Br 178 F-P 156 F-I 187
B-Cl 175 Si-Si 233 Si-S 200 Si-Cl 202 Si-Br 215 Si-I 243
Cl-Cl 199 Cl-P 203 Cl-S 207 Cl-Br 214 S-S 204 S-Br 225 S-P 210 S-I 234 Br-Br 228 Br-P 222 P-P 221 I-I 266
"""
_DOUBLE_PM = "C-C 134 C-N 129 C-O 120 C-S 160 N-N 125 N-O 121 O-O 121 O-P 150 P-S 186"
_TRIPLE_PM = "C-C 120 C-N 116 C-O 113 N-N 110"

# EDM's allowed valences (no formal charges).
EDM_VALENCES: dict[str, tuple[int, ...]] = {
    "H": (1,), "C": (4,), "N": (3,), "O": (2,), "F": (1,), "B": (3,), "Al": (3,), "Si": (4,), "P": (3, 5),
    "S": (4,), "Cl": (1,), "As": (3,), "Br": (1,), "I": (1,), "Hg": (1, 2), "Bi": (3, 5),
}  # fmt: skip

# Allowed total valence per (element, formal charge): GEOM-Drugs revisited's table, changed as the module
# docstring says.
CHARGED_VALENCES: dict[str, dict[int, tuple[int, ...]]] = {
    "H": {0: (1,)},
    "B": {0: (3,), -1: (4,)},
    "C": {0: (4,), -1: (3,), 1: (3,)},
    "N": {0: (3,), 1: (4,), -1: (2,), -2: (1,)},
    "O": {0: (2,), -1: (1,), 1: (3,)},
    "F": {0: (1,)},
    "Si": {0: (4,), 1: (5,)},
    "P": {0: (3, 5), 1: (4,)},
    "S": {0: (2, 4, 6), 1: (3,), 2: (4,), -1: (1,)},
    "Cl": {0: (1,), 1: (2,)},
    "Br": {0: (1,), 1: (2,)},
    "I": {0: (1,), 1: (2,), 2: (3,)},
}


def _pair_table(text: str) -> dict[tuple[str, str], float]:
    words = text.split()
    pairs = {}
    for pair, length in zip(words[::2], words[1::2], strict=True):
        a, b = pair.split("-")
        pairs[tuple(sorted((a, b)))] = float(length)
    return pairs


EDM_BOND_LENGTHS_PM: dict[int, dict[tuple[str, str], float]] = {
    1: _pair_table(_SINGLE_PM),
    2: _pair_table(_DOUBLE_PM),
    3: _pair_table(_TRIPLE_PM),
}


def edm_bond_orders(numbers: np.ndarray, positions: np.ndarray) -> np.ndarray:
    """EDM's bond order of every pair [N, N] (0 none, 1–3) from distances; ``positions`` [N, 3] Å."""
    symbols = [chemical_symbols[int(z)] for z in numbers]
    distance = 100.0 * np.linalg.norm(positions[:, None] - positions[None], axis=-1)  # pm
    orders = np.zeros((len(symbols), len(symbols)), dtype=np.int64)
    for i in range(len(symbols)):
        for j in range(i + 1, len(symbols)):
            pair = tuple(sorted((symbols[i], symbols[j])))
            order = 0
            for k in (1, 2, 3):
                length = EDM_BOND_LENGTHS_PM[k].get(pair)
                if length is None or distance[i, j] >= length + EDM_MARGINS_PM[k]:
                    break
                order = k
            orders[i, j] = orders[j, i] = order
    return orders


def edm_stable_atoms(numbers: np.ndarray, orders: np.ndarray) -> np.ndarray:
    """[N] bool: the sum of each atom's EDM bond orders is one of its element's EDM valences."""
    valence = orders.sum(axis=1)
    return np.array(
        [
            int(v) in EDM_VALENCES.get(chemical_symbols[int(z)], ())
            for z, v in zip(numbers, valence, strict=True)
        ]
    )


def charged_valence_allowed(symbol: str, charge: int, valence: int) -> bool:
    """Whether ``valence`` is allowed for ``symbol`` with formal ``charge`` (:data:`CHARGED_VALENCES`)."""
    return valence in CHARGED_VALENCES.get(symbol, {}).get(charge, ())


@dataclass
class Perception:
    """One molecule's bonds as RDKit perceived them from 3D.

    mol: the RDKit molecule with conformer, connectivity and (when found) bond orders and formal charges;
    orders_found: whether rdDetermineBonds found bond orders reproducing the total charge; error: why not.
    """

    mol: object
    orders_found: bool
    error: str = ""
    stable_atoms: np.ndarray = field(default_factory=lambda: np.zeros(0, dtype=bool))


def xyz_block(numbers: np.ndarray, positions: np.ndarray) -> str:
    lines = [
        f"{chemical_symbols[int(z)]} {x:.6f} {y:.6f} {w:.6f}"
        for z, (x, y, w) in zip(numbers, positions, strict=True)
    ]
    return f"{len(lines)}\n\n" + "\n".join(lines) + "\n"


def perceive_rdkit(numbers: np.ndarray, positions: np.ndarray, charge: int = 0) -> Perception:
    """Connectivity and Kekulé bond orders with formal charges (rdDetermineBonds), and each atom's stability
    against :data:`CHARGED_VALENCES` (see the module docstring for molecules without an assignment)."""
    from rdkit import Chem
    from rdkit.Chem import rdDetermineBonds

    mol = Chem.MolFromXYZBlock(xyz_block(numbers, positions))
    rdDetermineBonds.DetermineConnectivity(mol)
    connected = Chem.Mol(mol)
    try:
        rdDetermineBonds.DetermineBondOrders(mol, charge=int(charge), allowChargedFragments=True)
        Chem.Kekulize(mol, clearAromaticFlags=True)
        found, error = True, ""
    except (ValueError, RuntimeError) as err:
        mol, found, error = connected, False, str(err).splitlines()[0]
    stable = np.array(
        [
            charged_valence_allowed(
                atom.GetSymbol(),
                atom.GetFormalCharge(),
                int(round(sum(b.GetBondTypeAsDouble() for b in atom.GetBonds()))),
            )
            and atom.GetNumRadicalElectrons() == 0
            for atom in mol.GetAtoms()
        ],
        dtype=bool,
    )
    return Perception(mol=mol, orders_found=found, error=error, stable_atoms=stable)


def molecule_from_edm_bonds(numbers: np.ndarray, positions: np.ndarray, orders: np.ndarray) -> object:
    """An RDKit molecule (no formal charges, with a conformer) holding EDM's bonds."""
    from rdkit import Chem
    from rdkit.Geometry import Point3D

    bond_type = {1: Chem.BondType.SINGLE, 2: Chem.BondType.DOUBLE, 3: Chem.BondType.TRIPLE}
    rw = Chem.RWMol()
    for z in numbers:
        rw.AddAtom(Chem.Atom(int(z)))
    for i, j in zip(*np.nonzero(np.triu(orders)), strict=True):
        rw.AddBond(int(i), int(j), bond_type[int(orders[i, j])])
    conformer = Chem.Conformer(len(numbers))
    for i, (x, y, w) in enumerate(positions):
        conformer.SetAtomPosition(i, Point3D(float(x), float(y), float(w)))
    mol = rw.GetMol()
    mol.AddConformer(conformer, assignId=True)
    for atom in mol.GetAtoms():
        atom.SetNoImplicit(True)
    return mol


def largest_fragment_smiles(mol: object) -> str | None:
    """Canonical SMILES (no stereo, hydrogens implicit) of the sanitised largest fragment; None when RDKit
    cannot sanitise it (EDM's validity)."""
    from rdkit import Chem

    try:
        fragments = Chem.GetMolFrags(Chem.Mol(mol), asMols=True, sanitizeFrags=False)
        largest = Chem.Mol(max(fragments, key=lambda m: m.GetNumAtoms()))
        Chem.SanitizeMol(largest)
        return Chem.MolToSmiles(Chem.RemoveHs(largest), isomericSmiles=False)
    except (ValueError, RuntimeError, Chem.rdchem.MolSanitizeException):
        return None


def fragment_count(mol: object) -> int:
    from rdkit import Chem

    return len(Chem.GetMolFrags(mol))
