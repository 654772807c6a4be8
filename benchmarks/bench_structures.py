"""The structures the model benchmarks measure on, all real: drug-like molecules (MiniDrugBank), a protein
of the demo corpus (amber14 frames with hydrogens), rattled diamond silicon; and ``replicate``, which makes
a structure as large as asked for by repeating it (the largest-structure search).

    ligands(8)        # the first 8 MiniDrugBank molecules with 30-80 atoms (the openmmforcefields sdist)
    protein(1000)     # the demo corpus's validation protein, its first residues up to >= 1,000 atoms
    crystal()         # Si, 3x3x3 cubic diamond cells (216 atoms), rattled by 0.05 Å
"""

from __future__ import annotations

import itertools
from pathlib import Path

import numpy as np
from ase import Atoms
from ase.build import bulk

from data_pipeline.corpus_reader import read_split
from data_pipeline.manifest import read_manifest
from data_pipeline.schema import BadInputError, Structure
from data_pipeline.sources.drug_molecules import drug_molecules, fetch_minidrugbank

ROOT = Path(__file__).resolve().parents[1]
DOWNLOADS = ROOT / "data" / "downloads"  # where bench_accuracy / make_large_molecules keep the sdist
DEMO_CORPUS = ROOT / "data" / "demo"


def structure_to_atoms(s: Structure) -> Atoms:
    atoms = Atoms(
        numbers=np.asarray(s.atomic_numbers, dtype=int),
        positions=np.asarray(s.positions, dtype=float),
        cell=None if s.cell is None else np.asarray(s.cell, dtype=float),
        pbc=np.asarray(s.pbc, dtype=bool),
    )
    atoms.info.update(key=s.key, domain=s.domain, charge=int(s.charge), spin=int(s.spin))
    if "residue_index" in s.per_atom:
        atoms.arrays["residuenumbers"] = np.asarray(s.per_atom["residue_index"], dtype=int)
    return atoms


def ligands(count: int) -> list[Atoms]:
    """The first ``count`` MiniDrugBank molecules of 30-80 atoms with hydrogens (neutral or ±1)."""
    molecules = drug_molecules(fetch_minidrugbank(DOWNLOADS))
    return [structure_to_atoms(s) for s in itertools.islice(molecules, count)]


def protein(min_atoms: int | None = None) -> list[Atoms]:
    """The first protein frame of the demo corpus's validation split, or of its training split where it has
    no validation proteins (since 2026-12-02 its 8 chains are all training; amber14, with hydrogens); with
    ``min_atoms``, only its first residues, as few as make at least that many atoms."""
    if not (DEMO_CORPUS / "manifest.json").is_file():
        raise BadInputError(
            "no demo corpus: build it with `atomfm data demo --out data/demo`", path=str(DEMO_CORPUS)
        )
    splits = {info.split for info in read_manifest(str(DEMO_CORPUS)).select(source="proteins")}
    split = "val" if "val" in splits else "train"
    frame = next(read_split([str(DEMO_CORPUS)], split, source="proteins"))
    atoms = structure_to_atoms(frame)
    if min_atoms is not None and len(atoms) > min_atoms:
        residues = atoms.arrays["residuenumbers"]
        last = residues[min_atoms - 1]
        atoms = atoms[residues <= last]
    return [atoms]


def crystal() -> list[Atoms]:
    """Diamond silicon, 3x3x3 cubic cells (216 atoms, a = 5.43 Å), rattled by 0.05 Å (seed 0)."""
    atoms = bulk("Si", "diamond", a=5.43, cubic=True).repeat(3)
    atoms.rattle(0.05, seed=0)
    return [atoms]


def crystal_cells(copies: int) -> list[Atoms]:
    """``copies`` cubic diamond silicon cells in a row (8 atoms each, periodic, so every atom has the bulk's
    neighbours), rattled by 0.05 Å (seed 0): the crystal of the largest-structure search, in 8-atom steps."""
    atoms = bulk("Si", "diamond", a=5.43, cubic=True).repeat((copies, 1, 1))
    atoms.rattle(0.05, seed=0)
    return [atoms]


def replicate(structures: list[Atoms], copies: int, spacing: float) -> Atoms:
    """One structure of ``copies`` repeats: a periodic structure repeated along its first cell vector
    (every atom keeps its environment), a molecule set merged into one structure of copies on a line
    ``spacing`` Å apart (beyond the cutoff: no new edges)."""
    first = structures[0]
    if first.pbc.any():
        return first.repeat((copies, 1, 1))
    merged, offset = Atoms(), 0.0
    for _ in range(copies):
        for atoms in structures:
            shifted = atoms.copy()
            shifted.positions[:, 0] += offset - shifted.positions[:, 0].min()
            offset = shifted.positions[:, 0].max() + spacing
            merged += shifted
    merged.info.update(
        domain=first.info.get("domain", "molecule"),
        charge=copies * sum(int(a.info.get("charge", 0)) for a in structures),
    )
    return merged
