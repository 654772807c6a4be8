"""SDF and MOL files: molecules with 3D coordinates and explicit hydrogens, read and sanitised by RDKit.

Each molblock is one record, keyed by its index in the file. The total charge is the sum of the formal
charges, the spin multiplicity is the number of radical electrons + 1, and the group id is the first block
of the InChIKey (the connectivity), so conformers and stereoisomers of one molecule share a split.
"""

from __future__ import annotations

import itertools
import re
from collections.abc import Iterator

import numpy as np
from rdkit import Chem, rdBase
from rdkit.Chem import Descriptors

from data_pipeline.readers.sources import InputFile
from data_pipeline.schema import BadInputError, Structure

RDKIT_LOG_PREFIX = re.compile(r"^\[\d\d:\d\d:\d\d\]\s*(ERROR:\s*)?")


def read_sdf(f: InputFile) -> Iterator[Structure | BadInputError]:
    """Records of an SDF (many molblocks) or MOL file (one)."""
    with f.open_binary() as stream:
        supplier = iter(Chem.ForwardSDMolSupplier(stream, sanitize=False, removeHs=False))
        for index in itertools.count():
            key = f.key(index)
            with rdBase.CaptureErrorLog() as log:
                try:
                    mol = next(supplier)
                except StopIteration:
                    return
                except Exception as err:  # RDKit raises on unreadable streams
                    raise f.error(
                        f"RDKit cannot read the file ({type(err).__name__}: {err})",
                        record=key,
                        field="contents",
                    ) from None
            if mol is None:
                reason = "; ".join(_rdkit_errors(log.messages)) or "no message"
                yield f.error(f"RDKit cannot parse this molblock ({reason})", record=key, field="molblock")
                continue
            yield molecule_record(f, mol, key=key)


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
