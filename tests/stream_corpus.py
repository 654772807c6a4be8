"""Small real corpora for the stream tests: ASE g2 molecules, EMT-labelled metal cells, a peptide's frames."""

from __future__ import annotations

import importlib.util
import json
import warnings
from collections import defaultdict
from dataclasses import asdict
from pathlib import Path

import biotite.structure.io.pdb as pdb
import numpy as np
from ase.build import bulk, molecule
from ase.calculators.emt import EMT
from ase.collections import g2
from ase.data import atomic_numbers

from data_pipeline.manifest import FORMAT, Manifest, read_manifest, write_manifest
from data_pipeline.schema import Structure, validate
from data_pipeline.shards import ShardWriter

EMT_ELEMENTS = {"H", "C", "N", "O", "Al", "Cu", "Ag", "Au", "Ni", "Pd", "Pt"}


def protein_file(name: str) -> Path:
    """A PDB file shipped with MDAnalysisTests (data only; the package is never imported)."""
    return Path(importlib.util.find_spec("MDAnalysisTests").origin).parent / "data" / name


def molecules(count: int, split: str = "train") -> list[Structure]:
    """g2 molecules; those made of EMT elements carry EMT energy and forces."""
    out = []
    for name in sorted(g2.names)[:count]:
        atoms = molecule(name)
        energy = forces = None
        level = "none"
        if set(atoms.get_chemical_symbols()) <= EMT_ELEMENTS:
            atoms.calc = EMT()
            energy, forces, level = atoms.get_potential_energy(), atoms.get_forces(), "emt"
        s = Structure(
            key=f"g2/{name}",
            domain="molecule",
            atomic_numbers=atoms.numbers,
            positions=atoms.positions,
            energy=energy,
            forces=forces,
            level_of_theory=level,
            group_id=name,
            split=split,
        )
        out.append(validate(s))
    return out


def crystals(count: int, split: str = "train", seed: int = 0) -> list[Structure]:
    """Rattled, strained fcc metal cells (1 to 8 atoms per cell, some supercells) with EMT labels."""
    rng = np.random.default_rng(seed)
    metals = ["Cu", "Al", "Ni", "Pd", "Ag", "Au", "Pt"]
    out = []
    for i in range(count):
        element = metals[i % len(metals)]
        atoms = bulk(element, "fcc", cubic=bool(i % 2)).repeat((1 + i % 3, 1, 1))
        atoms.set_cell(atoms.cell.array @ (np.eye(3) + 0.02 * rng.standard_normal((3, 3))), scale_atoms=True)
        atoms.rattle(0.05, seed=seed + i)
        atoms.calc = EMT()
        s = Structure(
            key=f"emt-{seed}/{element}/{i}",
            domain="material",
            atomic_numbers=atoms.numbers,
            positions=atoms.positions,
            cell=atoms.cell.array,
            pbc=atoms.pbc,
            energy=atoms.get_potential_energy(),
            forces=atoms.get_forces(),
            stress=atoms.get_stress(voigt=False),
            level_of_theory="emt",
            group_id=atoms.get_chemical_formula(),
            split=split,
        )
        out.append(validate(s))
    return out


def protein_frames(
    count: int, split: str = "train", name: str = "A6PA6_alpha.pdb", seed: int = 0
) -> list[Structure]:
    """Gently rattled copies of a shipped protein file, with per-atom residue indices."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)  # elements guessed from atom names, as intended
        array = pdb.PDBFile.read(str(protein_file(name))).get_structure(model=1)
    z = np.array([atomic_numbers[e.capitalize()] for e in array.element])
    residue_index = np.cumsum(np.r_[0, np.diff(array.res_id) != 0])
    rng = np.random.default_rng(seed)
    out = []
    for frame in range(count):
        s = Structure(
            key=f"{name}/{frame}",
            domain="protein",
            atomic_numbers=z,
            positions=array.coord + 0.02 * rng.standard_normal(array.coord.shape),
            group_id=name,
            split=split,
            per_atom={"residue_index": residue_index, "residue_name": array.res_name.astype(str)},
        )
        out.append(validate(s))
    return out


def write_corpus(folder: Path, structures: list[Structure], shard_size: int) -> Manifest:
    """Shards of ``shard_size`` per (domain, split) and the manifest, as ``atomfm data ingest`` writes them."""
    groups: dict[tuple[str, str], list[Structure]] = defaultdict(list)
    for s in structures:
        groups[(s.domain, s.split)].append(s)
    manifest = Manifest()
    for (domain, split), members in sorted(groups.items()):
        with ShardWriter(folder, source="test", domain=domain, split=split, shard_size=shard_size) as writer:
            for s in members:
                writer.write(s)
        manifest.shards.extend(writer.finished)
    write_manifest(folder, manifest)
    return manifest


def as_version_1(corpus: Path) -> Path:
    """Rewrite a corpus in the layout atomfm wrote before atom-counts files (manifest version 1): every shard's
    entry, its per-sample atom counts and its source's resume checkpoints inline in ``manifest.json``, no shard
    lists, count files or key index. The shards are not touched."""
    manifest = read_manifest(corpus)
    entries = []
    for info in manifest.shards:
        entry = asdict(info)
        entry["natoms"] = info.atom_counts(corpus).tolist()
        del entry["max_atoms"], entry["natoms_file"]
        entries.append(entry)
    sources = {}
    for name, record in manifest.sources.items():
        streams: dict[str, list] = {}
        for info in sorted(manifest.select(source=name), key=lambda s: s.path):
            if info.path in manifest.resume:
                streams.setdefault(f"{info.domain}-{info.split}", []).append(manifest.resume[info.path])
        sources[name] = {**record, "streams": streams}
    raw = {
        "format": FORMAT,
        "version": 1,
        "corpus": manifest.summary(),
        "sources": sources,
        "shards": entries,
    }
    for stale in [*corpus.glob("*.shards.jsonl"), *corpus.glob("*.natoms.npy"), *corpus.glob("keys.sqlite")]:
        stale.unlink()
    (corpus / "manifest.json").write_text(json.dumps(raw, indent=1))
    return corpus
