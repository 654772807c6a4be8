"""SDF and MOL files: molecules with 3D coordinates and explicit hydrogens, read and sanitised by RDKit.

Each molblock is one record, keyed by its index in the file. The total charge is the sum of the formal
charges, the spin multiplicity is the number of radical electrons + 1, and the group id is the first block
of the InChIKey (the connectivity), so conformers and stereoisomers of one molecule share a split. A bond of
an order a molecule cannot have (a query type 5–8, a hydrogen bond, a number the format does not define) is
bad input: RDKit would keep it as "unspecified", or as a single bond.
"""

from __future__ import annotations

import io
import re
from collections.abc import Iterable, Iterator

import numpy as np
from rdkit import Chem, rdBase
from rdkit.Chem import Descriptors

from data_pipeline.readers.sources import InputFile
from data_pipeline.schema import BadInputError, Structure

RDKIT_LOG_PREFIX = re.compile(r"^\[\d\d:\d\d:\d\d\]\s*(ERROR:\s*)?")


# MDL bond types (CTfile formats): what a molecule's bond can be, and what the others are.
BOND_ORDERS = {1: "single", 2: "double", 3: "triple", 4: "aromatic", 9: "coordination"}
NOT_A_BOND_ORDER = {
    0: "an unset bond type",
    5: "a query bond (single or double)",
    6: "a query bond (single or aromatic)",
    7: "a query bond (double or aromatic)",
    8: "a query bond (any)",
    10: "a hydrogen bond",
}


def read_sdf(f: InputFile) -> Iterator[Structure | BadInputError]:
    """Records of an SDF (many molblocks) or MOL file (one)."""
    try:
        with f.open_binary() as stream:
            text = io.TextIOWrapper(stream, encoding="utf-8", errors="replace")
            for index, block in enumerate(sd_records(text)):
                key = f.key(index)
                supplier = Chem.SDMolSupplier()
                supplier.SetData(block, sanitize=False, removeHs=False)
                with rdBase.CaptureErrorLog() as log:
                    mol = supplier[0]
                if mol is None:
                    reason = "; ".join(_rdkit_errors(log.messages)) or "no message"
                    yield f.error(f"RDKit cannot parse this molblock ({reason})", record=key, field="molblock")
                    continue
                problem = bond_order_problem(block)
                if problem is not None:
                    yield f.error(problem, record=key, field="bonds")
                    continue
                yield molecule_record(f, mol, key=key)
    except (OSError, EOFError) as err:  # a damaged compressed stream
        raise f.error(
            f"cannot read the file ({type(err).__name__}: {err}); is it truncated or corrupt?",
            record=f.source,
            field="contents",
        ) from None


def sd_records(lines: Iterable[str]) -> Iterator[str]:
    """The text of each record of an SD file (molblock and data items), split at its ``$$$$`` lines."""
    record: list[str] = []
    for line in lines:
        if line.strip() == "$$$$":
            yield "".join(record) + line
            record = []
        else:
            record.append(line)
    if any(line.strip() for line in record):
        yield "".join(record)


def bond_order_problem(block: str) -> str | None:
    """What is wrong with the first bond of ``block`` whose MDL type is not a bond order, or None.

    V2000 bond lines follow the atom lines (type in columns 7–9); V3000 lists them between ``BEGIN BOND`` and
    ``END BOND``. A block too damaged to read is left to RDKit, which reports it.
    """
    lines = block.splitlines()
    try:
        if len(lines) > 3 and "V3000" in lines[3]:
            bonds = _v3000_bond_types(lines)
        else:
            num_atoms, num_bonds = int(lines[3][0:3]), int(lines[3][3:6])
            rows = lines[4 + num_atoms : 4 + num_atoms + num_bonds]
            bonds = [(int(row[0:3]), int(row[3:6]), int(row[6:9])) for row in rows]
    except (IndexError, ValueError):
        return None
    for first, second, kind in bonds:
        if kind not in BOND_ORDERS:
            what = NOT_A_BOND_ORDER.get(kind, "a type the MDL format does not define")
            return (
                f"the bond between atoms {first} and {second} has type {kind}, {what}: a molecule's bonds are "
                f"{', '.join(f'{k} ({v})' for k, v in BOND_ORDERS.items())}"
            )
    return None


def _v3000_bond_types(lines: list[str]) -> list[tuple[int, int, int]]:
    """(atom, atom, type) of the V3000 bond table (``M  V30 index type atom atom ...``)."""
    out, inside = [], False
    for line in lines:
        body = line[6:].strip() if line.startswith("M  V30") else None
        if body == "BEGIN BOND":
            inside = True
        elif body == "END BOND":
            break
        elif inside and body:
            _, kind, first, second, *_ = body.split()
            out.append((int(first), int(second), int(kind)))
    return out


def molecule_record(f: InputFile, mol: Chem.Mol, *, key: str) -> Structure | BadInputError:
    """A record from an unsanitised RDKit molecule, or the error that disqualifies it."""
    try:
        Chem.SanitizeMol(mol)
    except Exception as err:  # RDKit's sanitisation exceptions (valence, kekulisation, ...)
        return f.error(f"RDKit cannot sanitise this molecule: {err}", record=key, field="bonds")
    if mol.GetNumConformers() == 0 or not mol.GetConformer().Is3D():
        return f.error(
            "the molblock has 2D coordinates; 3D coordinates are needed", record=key, field="positions"
        )
    implicit = sum(atom.GetNumImplicitHs() for atom in mol.GetAtoms())
    if implicit:
        return f.error(
            f"{implicit} hydrogens are implicit (no coordinates); write explicit hydrogens, e.g. "
            "RDKit Chem.AddHs(mol, addCoords=True)",
            record=key,
            field="hydrogens",
        )
    return Structure(
        key=key,
        domain="molecule",
        atomic_numbers=np.array([atom.GetAtomicNum() for atom in mol.GetAtoms()], dtype=np.int64),
        positions=mol.GetConformer().GetPositions(),
        charge=sum(atom.GetFormalCharge() for atom in mol.GetAtoms()),
        spin=Descriptors.NumRadicalElectrons(mol) + 1,
        group_id=connectivity_id(mol),
        extra={
            "name": mol.GetProp("_Name").strip() if mol.HasProp("_Name") else "",
            "properties": {name: mol.GetProp(name) for name in mol.GetPropNames()},
        },
    )


def _rdkit_errors(log_text: str) -> list[str]:
    """RDKit's error lines without their time stamps and its note about skipping ahead."""
    lines = (RDKIT_LOG_PREFIX.sub("", line).strip() for line in log_text.splitlines())
    return [line for line in lines if line and not line.startswith("moving to the beginning")]


def connectivity_id(mol: Chem.Mol) -> str:
    """First InChIKey block (connectivity, no stereo, no protonation); canonical SMILES where InChI fails."""
    with rdBase.BlockLogs():
        inchikey = Chem.MolToInchiKey(mol)
    if inchikey:
        return inchikey.split("-")[0]
    return "smiles:" + Chem.MolToSmiles(Chem.RemoveHs(mol, sanitize=False), isomericSmiles=False)
