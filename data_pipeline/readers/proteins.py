"""PDB and mmCIF files: one protein record per file (all chains), read with biotite.

Per atom the record keeps ``chain_id`` (author chain), ``residue_index`` (author residue number),
``insertion_code``, ``residue_name`` and ``atom_name``. Alternate locations are resolved per residue by
occupancy or first-listed; waters and ligands (hetero groups other than amino acids and nucleotides, e.g.
``MSE`` stays) are dropped unless asked for; hydrogens stay as the file has them. Elements come from the
element column (biotite guesses from the atom name where it is blank). Protein records are not periodic
(a CRYST1 / ``_cell`` of the asymmetric unit is not a periodic box) and carry charge 0: PDB files rarely
fill their formal-charge column, and the labelling stage knows the protonation state.
"""

from __future__ import annotations

import io
import warnings
from collections.abc import Callable, Iterator

import biotite.structure as struc
import numpy as np
from biotite.structure.io import pdb, pdbx

from data_pipeline.readers.elements import atomic_number
from data_pipeline.readers.options import ReaderOptions
from data_pipeline.readers.sources import InputFile
from data_pipeline.schema import BadInputError, Structure

LoadModel = Callable[[int], struc.AtomArray]


def read_pdb(f: InputFile) -> Iterator[Structure | BadInputError]:
    """The protein record (or its model frames) of a PDB file."""
    try:
        pdb_file = pdb.PDBFile.read(io.StringIO(f.text))
    except Exception as err:  # biotite raises several types on damaged text
        raise f.error(
            f"cannot parse as PDB ({type(err).__name__}: {err})", record=f.key(0), field="contents"
        ) from None
    entry_id = next((line[62:66].strip() for line in pdb_file.lines if line.startswith("HEADER")), "")

    def load(model: int) -> struc.AtomArray:
        return pdb_file.get_structure(model=model, altloc=f.options.altloc, extra_fields=["atom_id"])

    yield from protein_records(f, model_count=pdb_file.get_model_count(), entry_id=entry_id, load=load)


def read_mmcif(f: InputFile) -> Iterator[Structure | BadInputError]:
    """The protein record (or its model frames) of the first data block of an mmCIF file."""
    try:
        cif = pdbx.CIFFile.read(io.StringIO(f.text))
        block = cif.block
        model_count = pdbx.get_model_count(block)
    except Exception as err:  # biotite raises several types on damaged text
        raise f.error(
            f"cannot parse as mmCIF ({type(err).__name__}: {err})", record=f.key(0), field="contents"
        ) from None
    entry = block.get("entry")
    entry_id = entry["id"].as_item() if entry is not None and "id" in entry else ""

    def load(model: int) -> struc.AtomArray:
        return pdbx.get_structure(
            block, model=model, altloc=f.options.altloc, extra_fields=["atom_id"], use_author_fields=True
        )

    yield from protein_records(f, model_count=model_count, entry_id=entry_id, load=load)


def protein_records(
    f: InputFile, *, model_count: int, entry_id: str, load: LoadModel
) -> Iterator[Structure | BadInputError]:
    """The first model as record ``source/0``, or with ``protein_models="all"`` and several models, every
    model as frame ``source/0/<frame>``."""
    if model_count == 0:
        raise f.error("no ATOM/HETATM records", record=f.key(0), field="atoms")
    every_model = f.options.protein_models == "all" and model_count > 1
    models = range(1, model_count + 1) if every_model else range(1, 2)
    for frame, model in enumerate(models):
        key = f.key(0, frame) if every_model else f.key(0)
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")  # "elements were guessed from atom name" is expected
                atoms = load(model)
        except Exception as err:  # a damaged ATOM line or model: float(), index and biotite errors
            yield f.error(
                f"cannot read model {model} ({type(err).__name__}: {err}); is the file truncated?",
                record=key,
                field="atoms",
            )
            continue
        atoms = atoms[kept_atoms(atoms, f.options)]
        yield protein_structure(
            f,
            atoms,
            key=key,
            entry_id=entry_id,
            extra={"entry_id": entry_id, "model": model, "model_count": model_count},
        )


def kept_atoms(atoms: struc.AtomArray, options: ReaderOptions) -> np.ndarray:
    """Mask [N] of the atoms a record keeps: polymer always, water and ligands when the options say so."""
    water = struc.filter_solvent(atoms)
    polymer = struc.filter_amino_acids(atoms) | struc.filter_nucleotides(atoms)
    ligand = atoms.hetero & ~water & ~polymer
    return ~(water & (not options.keep_water)) & ~(ligand & (not options.keep_ligands))


def protein_structure(
    f: InputFile, atoms: struc.AtomArray, *, key: str, entry_id: str, extra: dict
) -> Structure | BadInputError:
    """A record from one model's atoms, or the error naming the first atom of unknown element."""
    if atoms.array_length() == 0:
        return f.error(
            "no atoms left after dropping water and ligands (see keep_water, keep_ligands)",
            record=key,
            field="atoms",
        )
    numbers = np.array([atomic_number(e) or 0 for e in atoms.element], dtype=np.int64)
    if not numbers.all():
        atom = atoms[int(np.argmin(numbers))]
        return f.error(
            f"atom {str(atom.atom_name)!r} (serial {atom.atom_id}) of residue {atom.res_name} "
            f"{atom.res_id}{atom.ins_code} chain {str(atom.chain_id)!r} has unknown element {str(atom.element)!r}",
            record=key,
            field="element",
        )
    chains = ",".join(dict.fromkeys(atoms.chain_id.tolist()))
    return Structure(
        key=key,
        domain="protein",
        atomic_numbers=numbers,
        positions=atoms.coord,
        group_id=f"{entry_id.lower()}:{chains}" if entry_id else f.source,
        per_atom={
            "chain_id": atoms.chain_id.astype(str),
            "residue_index": atoms.res_id.astype(np.int32),
            "insertion_code": atoms.ins_code.astype(str),
            "residue_name": atoms.res_name.astype(str),
            "atom_name": atoms.atom_name.astype(str),
        },
        extra=extra,
    )
