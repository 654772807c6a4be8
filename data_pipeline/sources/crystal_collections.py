"""Real crystals shipped in pymatgen and ASE: AFLOW prototypes, common structures, elemental solids."""

from __future__ import annotations

import gzip
import json
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from data_pipeline.schema import Structure
from data_pipeline.sources.alloys import reduced_formula
from data_pipeline.sources.perturb import perturbed_crystal


@dataclass(frozen=True)
class Crystal:
    """One shipped crystal: ``name`` is unique within ``collection``."""

    collection: str
    name: str
    atoms: Any  # ase.Atoms


def shipped_crystals(*, max_atoms: int = 64, max_z: int = 94) -> list[Crystal]:
    """Every shipped ordered crystal with at most ``max_atoms`` atoms and elements up to ``max_z``.

    pymatgen's ``analysis/prototypes/aflow_prototypes.json.gz`` (288) and ``util/structures/*.json``,
    ASE's elemental ``bulk`` structures (experimental lattice constants) and ``collections.dcdft``.
    """
    found = [*_aflow_prototypes(), *_pymatgen_structures(), *_ase_elemental_bulk(), *_dcdft()]
    return [c for c in found if len(c.atoms) <= max_atoms and int(c.atoms.numbers.max()) <= max_z]


def _aflow_prototypes() -> list[Crystal]:
    import pymatgen.core
    from pymatgen.core import Structure as PymatgenStructure
    from pymatgen.io.ase import AseAtomsAdaptor

    # read as a file: importing pymatgen.analysis.prototypes decodes every entry with provenance (~20 s)
    path = Path(pymatgen.core.__file__).parents[1] / "analysis" / "prototypes" / "aflow_prototypes.json.gz"
    with gzip.open(path, "rt") as f:
        entries = json.load(f)
    structures = [
        (f"{i:03d}-{e['tags']['aflow']}", PymatgenStructure.from_dict(e["snl"]))
        for i, e in enumerate(entries)
    ]
    return [Crystal("aflow", name, AseAtomsAdaptor.get_atoms(s)) for name, s in structures if s.is_ordered]


def _pymatgen_structures() -> list[Crystal]:
    import pymatgen.core
    from pymatgen.core import Structure as PymatgenStructure
    from pymatgen.io.ase import AseAtomsAdaptor

    folder = Path(pymatgen.core.__file__).parents[1] / "util" / "structures"
    structures = [(p.stem, PymatgenStructure.from_file(p)) for p in sorted(folder.glob("*.json"))]
    return [Crystal("pymatgen", name, AseAtomsAdaptor.get_atoms(s)) for name, s in structures if s.is_ordered]


def _ase_elemental_bulk() -> list[Crystal]:
    from ase.build import bulk
    from ase.data import chemical_symbols, reference_states

    found = []
    for z, state in enumerate(reference_states):
        if state and state.get("symmetry") in {"fcc", "bcc", "hcp", "diamond", "sc"}:
            try:
                found.append(Crystal("ase_bulk", chemical_symbols[z], bulk(chemical_symbols[z])))
            except ValueError:  # reference states ASE cannot build without an explicit basis
                continue
    return found


def _dcdft() -> list[Crystal]:
    from ase.collections import dcdft

    return [Crystal("dcdft", name, dcdft[name]) for name in dcdft.names]


def crystals(
    limit: int | None = None,
    *,
    copies: int = 1,
    seed: int = 0,
    min_atoms: int = 8,
    max_atoms: int = 64,
    max_strain: float = 0.02,
    max_displacement: float = 0.03,
) -> Iterator[Structure]:
    """Up to ``limit`` shipped crystals (random, by ``seed``), each as ``copies`` strained, rattled cells.

    Cells under ``min_atoms`` are doubled along their shortest lattice vector until they reach it, so that
    a rattle is more than a rigid translation. Keys ``crystals/<collection>/<name>/<copy>``; group id =
    reduced composition.
    """
    found = shipped_crystals(max_atoms=max_atoms)
    rng = np.random.default_rng(seed)
    order = rng.permutation(len(found))[:limit]
    for i in order:
        crystal = found[i]
        atoms = crystal.atoms
        while len(atoms) < min_atoms:
            repeat = [1, 1, 1]
            repeat[int(np.argmin(atoms.cell.lengths()))] = 2
            atoms = atoms.repeat(repeat)
        group = reduced_formula(atoms.get_chemical_symbols())
        for copy in range(copies):
            yield perturbed_crystal(
                atoms,
                key=f"crystals/{crystal.collection}/{crystal.name}/{copy}",
                group_id=group,
                extra={"origin": crystal.collection, "name": crystal.name},
                max_strain=max_strain,
                max_displacement=max_displacement,
                rng=rng,
            )
