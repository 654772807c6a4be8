"""Protein frames: real chains from PDB files that installed packages ship, completed by pdbfixer and moved
off equilibrium by a short amber14 vacuum Langevin MD in OpenMM.

Chains come from the MDAnalysisTests data folder (``pip install --no-deps MDAnalysisTests``; it is data,
never imported) and from pdbfixer's test data.
"""

from __future__ import annotations

import bz2
import contextlib
import functools
import gzip
import importlib.util
import io
import logging
import random
import warnings
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from data_pipeline.labels.process_pool import default_workers, ordered_process_map
from data_pipeline.labels.protein_topology import (
    PEPTIDE_BOND_MAX,
    angstrom_array,
    openmm_atom_fields,
    single_threaded_openmm,
)
from data_pipeline.schema import BadInputError, Structure

log = logging.getLogger(__name__)

# Multi-chain files beside the single-chain DSSP set: (path under MDAnalysisTests/data, protein id, chains).
MDANALYSIS_CHAINS: tuple[tuple[str, str, str], ...] = (
    ("adk_open.pdb", "adk_open", " "),
    ("1hvr.pdb", "1hvr", "AB"),
    ("4E43.pdb", "4e43", "AB"),
    ("5a7u.pdb", "5a7u", "A"),
    ("1a28.pdb.gz", "1a28", "AB"),
    ("19hc.pdb.gz", "19hc", "AB"),
    ("1osm.pdb.gz", "1osm", "A"),
    ("mmcif/1BD2.pdb.gz", "1bd2", "ABDE"),
    ("mmcif/3PWP.pdb.gz", "3pwp", "ABDE"),
    ("mmcif/3KPR.pdb.gz", "3kpr", "ABDE"),
    ("mmcif/5PTI.cif.gz", "5pti", "A"),
)


@dataclass(frozen=True)
class ProteinChain:
    """One chain of one shipped file; ``chain`` is the file's chain id, ``residues`` its polymer length."""

    protein_id: str
    chain: str
    path: str
    residues: int

    @property
    def group_id(self) -> str:
        return f"{self.protein_id}:{self.chain.strip() or '_'}"


def mdanalysis_data_dir() -> Path:
    spec = importlib.util.find_spec("MDAnalysisTests")
    if spec is None or spec.origin is None:
        raise FileNotFoundError(
            "the MDAnalysisTests data package is not installed: "
            "pip install --no-deps 'MDAnalysisTests>=2.7' (make setup does it)"
        )
    return Path(spec.origin).parent / "data"


def shipped_protein_chains() -> list[ProteinChain]:
    """Every chain this module knows in installed packages (75 with MDAnalysisTests 2.x)."""
    import pdbfixer

    data = mdanalysis_data_dir()
    files = [
        (p, p.name[:4].lower(), p.name[4])
        for p in sorted((data / "dssp").glob("*.pdb.gz"))
        if len(p.name) == len("1abcA.pdb.gz")
    ]
    files += [(data / name, protein_id, ids) for name, protein_id, ids in MDANALYSIS_CHAINS]
    files.append((Path(pdbfixer.__file__).parent / "tests" / "data" / "1BHL.pdb", "1bhl", "A"))
    chains = []
    for path, protein_id, ids in files:
        if path.is_file():
            lengths = polymer_lengths(path)
            chains += [ProteinChain(protein_id, c, str(path), lengths.get(c.strip(), 0)) for c in ids]
    return chains


def polymer_lengths(path: Path) -> dict[str, int]:
    """Residues of each chain's polymer in the first model, by chain id (read with gemmi: milliseconds)."""
    import gemmi

    structure = gemmi.read_structure(str(path))
    structure.setup_entities()
    lengths: dict[str, int] = {}
    for chain in structure[0]:
        lengths[chain.name.strip()] = max(lengths.get(chain.name.strip(), 0), len(chain.get_polymer()))
    return lengths


def open_chain(path: str | Path, chain: str | None = None) -> Any:
    """A PDBFixer holding one chain of a PDB/mmCIF file (``.gz``/``.bz2`` too), without ligands or water.

    Non-standard residues are replaced by their standard parents first (MSE → MET). ``chain=None`` takes
    the first chain.
    """
    from pdbfixer import PDBFixer

    path = Path(path)
    opener = {".gz": gzip.open, ".bz2": bz2.open}.get(path.suffix, open)
    with opener(path, "rt") as f:
        text = f.read()
    is_cif = ".cif" in path.suffixes
    with warnings.catch_warnings():
        # OpenMM warns about the duplicate atoms of unlabelled alternate locations
        warnings.simplefilter("ignore")
        fixer = PDBFixer(pdbxfile=io.StringIO(text)) if is_cif else PDBFixer(pdbfile=io.StringIO(text))
    fixer.findNonstandardResidues()
    fixer.replaceNonstandardResidues()
    fixer.removeHeterogens(keepWater=False)
    chains = list(fixer.topology.chains())
    wanted = [c.index for c in chains if (chain is None or c.id == chain) and len(list(c.residues())) > 0]
    if not wanted:
        raise BadInputError(f"no protein chain {chain!r}", path=str(path), field="chain")
    fixer.removeChains(chainIndices=[c.index for c in chains if c.index != wanted[0]])
    return fixer


def longest_unbroken_segment(fixer: Any) -> int:
    """Keep only the longest run of residues joined by peptide bonds; returns its length in residues."""
    from openmm.app import Modeller

    residues = list(fixer.topology.residues())
    xyz = angstrom_array(fixer.positions)

    def atom(residue: Any, name: str) -> np.ndarray | None:
        found = [a.index for a in residue.atoms() if a.name == name]
        return xyz[found[0]] if found else None

    runs, start = [], 0
    for i in range(1, len(residues) + 1):
        if i < len(residues):
            c, n = atom(residues[i - 1], "C"), atom(residues[i], "N")
            if c is not None and n is not None and np.linalg.norm(c - n) <= PEPTIDE_BOND_MAX:
                continue
        runs.append((start, i))
        start = i
    first, stop = max(runs, key=lambda r: r[1] - r[0])
    drop = residues[:first] + residues[stop:]
    if drop:
        modeller = Modeller(fixer.topology, fixer.positions)
        modeller.delete(drop)
        fixer.topology, fixer.positions = modeller.topology, modeller.positions
    return stop - first


def strip_hydrogens(fixer: Any) -> None:
    """Delete the file's hydrogens (and deuteriums), so that pdbfixer adds a consistent set for pH 7."""
    from openmm.app import Modeller

    hydrogens = [a for a in fixer.topology.atoms() if a.element is not None and a.element.atomic_number == 1]
    if hydrogens:
        modeller = Modeller(fixer.topology, fixer.positions)
        modeller.delete(hydrogens)
        fixer.topology, fixer.positions = modeller.topology, modeller.positions


def frames_of(task: tuple[ProteinChain, int, int, int, int, int]) -> list[Structure]:
    """``(chain, frames, steps between frames, seed, min residues, max residues)`` → MD frames.

    The chain is cut to its longest unbroken segment, completed (missing heavy atoms, the file's hydrogens
    replaced by a pH 7 set), relaxed briefly, and run at 300 K (2 fs steps, bonds to hydrogen constrained).
    An empty list when the chain is out of the size range or OpenMM / pdbfixer cannot handle it.
    """
    chain, frames, steps, seed, min_residues, max_residues = task
    try:
        return _simulate(chain, frames, steps, seed, min_residues, max_residues)
    except Exception as err:  # pdbfixer and OpenMM raise many types on chains they cannot complete
        log.warning(
            "protein chain %s of %s passed over: %s: %s", chain.chain, chain.path, type(err).__name__, err
        )
        return []


def _simulate(
    chain: ProteinChain, frames: int, steps: int, seed: int, min_residues: int, max_residues: int
) -> list[Structure]:
    import openmm
    from openmm import app, unit

    single_threaded_openmm()
    fixer = open_chain(chain.path, chain.chain)
    length = longest_unbroken_segment(fixer)
    if not min_residues <= length <= max_residues:
        return []
    strip_hydrogens(fixer)
    random.seed(f"{chain.protein_id}{chain.chain}/{seed}")  # OpenMM's Modeller places added atoms randomly
    fixer.findMissingResidues()
    fixer.missingResidues = {}
    fixer.findMissingAtoms()
    fixer.addMissingAtoms()
    forcefield = _amber14()
    fixer.addMissingHydrogens(7.0, forcefield=forcefield)
    relaxed = _relieve_clashes(forcefield, fixer.topology, fixer.positions)
    system = forcefield.createSystem(fixer.topology, nonbondedMethod=app.NoCutoff, constraints=app.HBonds)
    integrator = openmm.LangevinMiddleIntegrator(
        300 * unit.kelvin, 1 / unit.picosecond, 0.002 * unit.picoseconds
    )
    integrator.setRandomNumberSeed(seed + 1)
    context = openmm.Context(system, integrator)
    context.setPositions(relaxed)
    context.applyConstraints(1e-6)
    context.setVelocitiesToTemperature(300 * unit.kelvin, seed + 1)
    z, per_atom = openmm_atom_fields(fixer.topology)
    name = f"{chain.protein_id}{chain.chain.strip()}"
    out = []
    for k in range(frames):
        integrator.step(steps)
        xyz = angstrom_array(context.getState(getPositions=True).getPositions())
        if not np.isfinite(xyz).all():
            raise RuntimeError(f"the MD blew up before frame {k}")
        out.append(
            Structure(
                key=f"proteins/{name}/{k}",
                domain="protein",
                atomic_numbers=z,
                positions=xyz.astype(np.float32),
                group_id=chain.group_id,
                per_atom=per_atom,
                extra={
                    "origin": Path(chain.path).name,
                    "chain": chain.chain,
                    "frame": k,
                    "time_ps": 0.002 * steps * (k + 1),
                    "md": "amber14 vacuum, Langevin 300 K, 2 fs, HBonds",
                },
            )
        )
    return out


def _relieve_clashes(forcefield: Any, topology: Any, positions: Any) -> Any:
    """50 L-BFGS steps without constraints (with constraints OpenMM's minimiser costs several times more):
    enough to remove clashes of added atoms, not to cool the structure down."""
    import openmm
    from openmm import app

    system = forcefield.createSystem(topology, nonbondedMethod=app.NoCutoff, constraints=None)
    context = openmm.Context(system, openmm.VerletIntegrator(0.001))
    context.setPositions(positions)
    openmm.LocalEnergyMinimizer.minimize(context, 10.0, 50)
    return context.getState(getPositions=True).getPositions()


@functools.cache
def _amber14() -> Any:
    from openmm import app

    return app.ForceField("amber14-all.xml")


def protein_frames(
    chains: Iterable[ProteinChain],
    *,
    limit: int | None = None,
    frames: int = 5,
    steps_between: int = 25,
    seed: int = 0,
    min_residues: int = 20,
    max_residues: int = 400,
    workers: int | None = None,
) -> Iterator[Structure]:
    """``frames`` MD snapshots of each chain of min..max residues (of the first ``limit`` that yield any),
    simulated in ``workers`` processes (0: this process).

    Keys ``proteins/<id><chain>/<frame>``; group id ``<id>:<chain>``; per-atom residue fields included.
    """
    tasks = (
        (c, frames, steps_between, seed, min_residues, max_residues)
        for c in chains
        if min_residues <= c.residues <= max_residues
    )
    workers = default_workers() if workers is None else workers
    batches = (
        (frames_of(t) for t in tasks)
        if workers == 0
        else ordered_process_map(frames_of, tasks, workers=workers)
    )
    simulated = 0
    with contextlib.closing(batches):  # stopping at the limit cancels the chains not yet started
        for batch in batches:
            yield from batch
            simulated += bool(batch)
            if limit is not None and simulated >= limit:
                return
