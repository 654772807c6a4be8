"""Conformers of SMILES molecules: RDKit ETKDG embedding, MMFF relaxation, a gentle rattle.

The default SMILES are the NCI set RDKit ships (``rdkit/Data/NCI/first_5K.smi``).
"""

from __future__ import annotations

import zlib
from collections.abc import Iterable, Iterator
from pathlib import Path

import numpy as np

from data_pipeline.labels.process_pool import default_workers, ordered_process_map
from data_pipeline.schema import Structure
from data_pipeline.sources.molecule_identity import (
    ORGANIC_ELEMENTS,
    connectivity_key,
    lowest_spin_multiplicity,
)
from data_pipeline.sources.perturb import rattle


def nci_smiles_path() -> Path:
    import rdkit

    return Path(rdkit.__file__).parent / "Data" / "NCI" / "first_5K.smi"


def read_smiles(
    path: str | Path | None = None, *, min_atoms: int = 10, max_atoms: int = 30
) -> list[tuple[str, str]]:
    """``(record id, SMILES)`` of single-fragment organic molecules with min..max atoms (H included).

    The file has one ``SMILES id`` per line (the id defaults to the line number).
    """
    from rdkit import Chem, RDLogger

    RDLogger.DisableLog("rdApp.*")
    path = nci_smiles_path() if path is None else Path(path)
    kept = []
    for number, line in enumerate(path.read_text().splitlines(), start=1):
        fields = line.split()
        if not fields:
            continue
        mol = Chem.MolFromSmiles(fields[0])
        if mol is None or len(Chem.GetMolFrags(mol)) != 1:
            continue
        if any(a.GetAtomicNum() not in ORGANIC_ELEMENTS for a in mol.GetAtoms()):
            continue
        if min_atoms <= Chem.AddHs(mol).GetNumAtoms() <= max_atoms:
            kept.append((fields[1] if len(fields) > 1 else str(number), fields[0]))
    return kept


def conformers_of(task: tuple[str, str, str, int, int, float]) -> list[Structure]:
    """``(source, record id, SMILES, conformers, seed, max displacement Å)`` → rattled MMFF conformers.

    An empty list when RDKit cannot embed the molecule.
    """
    from rdkit import Chem
    from rdkit.Chem import AllChem

    source, record, smiles, count, seed, max_displacement = task
    mol = Chem.AddHs(Chem.MolFromSmiles(smiles))
    mol_seed = zlib.crc32(f"{seed}/{record}".encode())
    params = AllChem.ETKDGv3()
    params.randomSeed = mol_seed & 0x7FFFFFFF
    conformer_ids = list(AllChem.EmbedMultipleConfs(mol, count, params))
    if not conformer_ids:
        return []
    if AllChem.MMFFHasAllMoleculeParams(mol):
        AllChem.MMFFOptimizeMoleculeConfs(mol, maxIters=500)
    z = np.array([a.GetAtomicNum() for a in mol.GetAtoms()], dtype=np.uint8)
    charge = Chem.GetFormalCharge(mol)
    group = connectivity_key(mol)
    rng = np.random.default_rng(mol_seed)
    return [
        Structure(
            key=f"{source}/{record}/{k}",
            domain="molecule",
            atomic_numbers=z,
            positions=rattle(mol.GetConformer(cid).GetPositions(), max_displacement, rng).astype(np.float32),
            charge=charge,
            spin=lowest_spin_multiplicity(z, charge),
            group_id=group,
            extra={"origin": "RDKit ETKDG + MMFF", "smiles": smiles, "conformer": k},
        )
        for k, cid in enumerate(conformer_ids)
    ]


def smiles_conformers(
    records: Iterable[tuple[str, str]],
    *,
    source: str = "nci",
    conformers: int = 4,
    seed: int = 0,
    max_displacement: float = 0.02,
    workers: int | None = None,
) -> Iterator[Structure]:
    """Conformers of each ``(record id, SMILES)``, generated in ``workers`` processes (0: this process).

    Keys ``<source>/<record>/<k>``; conformers of one molecule share its InChIKey connectivity block as
    group id. Rattled by at most ``max_displacement`` Å so that forces are moderate but not zero.
    """
    tasks = ((source, record, smiles, conformers, seed, max_displacement) for record, smiles in records)
    workers = default_workers() if workers is None else workers
    batches = (
        (conformers_of(t) for t in tasks)
        if workers == 0
        else ordered_process_map(conformers_of, tasks, workers=workers)
    )
    for batch in batches:
        yield from batch
