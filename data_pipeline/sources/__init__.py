"""Real structures from what installed packages ship, for the demo corpus and for tests.

| builder | domain | what |
| --- | --- | --- |
| :func:`ccd_molecules` | molecule | PDB Chemical Component Dictionary ideal coordinates (biotite), rattled |
| :func:`smiles_conformers` (+ :func:`read_smiles`) | molecule | RDKit ETKDG + MMFF conformers of SMILES (RDKit's NCI set) |
| :func:`g2_molecules` | molecule | ASE's G2 collection |
| :func:`drug_molecules` (+ :func:`fetch_minidrugbank`) | molecule | MiniDrugBank drug-like molecules (openmmforcefields sdist), rattled; not in the demo corpus |
| :func:`protein_frames` (+ :func:`shipped_protein_chains`) | protein | amber14 vacuum MD frames of real chains |
| :func:`emt_alloys` | material | random fcc alloys of the EMT metals |
| :func:`crystals` | material | AFLOW prototypes, pymatgen structures, ASE elemental solids |

Every builder yields unlabelled :class:`~data_pipeline.schema.Structure` records with domain and group
id set and split empty; labels come from :mod:`data_pipeline.labels`.
"""

from data_pipeline.sources.alloys import emt_alloys
from data_pipeline.sources.ase_molecules import g2_molecules
from data_pipeline.sources.ccd import ccd_molecules
from data_pipeline.sources.conformers import read_smiles, smiles_conformers
from data_pipeline.sources.crystal_collections import crystals, shipped_crystals
from data_pipeline.sources.drug_molecules import drug_molecules, fetch_minidrugbank
from data_pipeline.sources.proteins import protein_frames, shipped_protein_chains

__all__ = [
    "ccd_molecules",
    "crystals",
    "drug_molecules",
    "emt_alloys",
    "fetch_minidrugbank",
    "g2_molecules",
    "protein_frames",
    "read_smiles",
    "shipped_crystals",
    "shipped_protein_chains",
    "smiles_conformers",
]
