"""Real structures and a small float64 model for the model tests (test_model_physics, test_heads,
test_calculator)."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import ase.io
import biotite.structure.info as ccd
import numpy as np
import torch
from ase import Atoms
from ase.build import bulk, molecule
from ase.data import chemical_symbols, reference_states
from torch_geometric.data import Batch

from model.atomfm import AtomFM, model_config
from model.calculator import atoms_to_batch

CUTOFF = 5.0  # Å
# A small model: 2 layers, lmax 3 with mmax 2 in the edge frame (so the truncated SO(2) path is exercised),
# exact gate activations (the S² grid's aliasing error is the backbone's own test).
SMALL = dict(
    lmax=3,
    mmax=2,
    channels=16,
    num_layers=2,
    num_heads=2,
    attn_channels=8,
    ffn_channels=16,
    num_rbf=16,
    radial_channels=16,
    cutoff=CUTOFF,
    activation="gate",
    zbl=False,  # the learned energy alone: its finite-difference checks are tight; tests/test_zbl.py has the prior's
)


def small_model(seed: int = 0, **overrides) -> AtomFM:
    """A randomly initialised float64 model in eval mode (``overrides`` go to ``model_config``)."""
    torch.manual_seed(seed)
    return AtomFM(model_config("tiny", **{**SMALL, **overrides})).double().eval()


def batch_of(*structures: Atoms, level: str = "gfn2-xtb", cutoff: float = CUTOFF) -> Batch:
    return atoms_to_batch(list(structures), cutoff, level_of_theory=level, dtype=torch.float64)


def water() -> Atoms:
    """H2O, experimental geometry (ASE's G2 set)."""
    return molecule("H2O")


def alanine() -> Atoms:
    """L-alanine with hydrogens, ideal coordinates of the PDB Chemical Component Dictionary (biotite)."""
    residue = ccd.residue("ALA")
    return Atoms(
        symbols=[e.capitalize() for e in residue.element], positions=residue.coord.astype(np.float64)
    )


def peptide(num_residues: int | None = None) -> Atoms:
    """Ala6-Pro-Ala6 α-helix with hydrogens (MDAnalysisTests ``A6PA6_alpha.pdb``), optionally its first
    residues; a protein, with residue numbers."""
    data = Path(importlib.util.find_spec("MDAnalysisTests").origin).parent / "data"
    atoms = ase.io.read(data / "A6PA6_alpha.pdb")
    if num_residues is not None:
        atoms = atoms[atoms.arrays["residuenumbers"] <= num_residues]
    atoms.info["domain"] = "protein"
    return atoms


def rocksalt(rattle: float = 0.05, seed: int = 1) -> Atoms:
    """NaCl, primitive rocksalt cell (a = 5.64 Å), atoms rattled so forces and stress are non-trivial."""
    atoms = bulk("NaCl", "rocksalt", a=5.64)
    atoms.rattle(rattle, seed=seed)
    return atoms


def silicon(rattle: float = 0.05, seed: int = 2) -> Atoms:
    """Si, cubic diamond cell (8 atoms, a = 5.43 Å), rattled."""
    atoms = bulk("Si", "diamond", a=5.43, cubic=True)
    atoms.rattle(rattle, seed=seed)
    return atoms


# model.overrides of a 2-layer model small enough for fine-tuning and diffusion runs of a few steps
TINY_TRAINING = {
    "channels": 16,
    "num_layers": 2,
    "num_heads": 2,
    "attn_channels": 8,
    "ffn_channels": 16,
    "lmax": 2,
    "mmax": 1,
    "cutoff": 4.5,
    "num_rbf": 8,
    "radial_channels": 16,
}


def elemental_crystals(count: int = 50, rattle: float = 0.1) -> list[Atoms]:
    """The first ``count`` elemental crystals of ASE's reference states (fcc, bcc as cubic cells; hcp,
    diamond primitive: 2-4 atoms, experimental lattice constants), each rattled."""
    out = []
    for z, ref in enumerate(reference_states):
        if ref is None or ref.get("symmetry") not in ("fcc", "bcc", "hcp", "diamond"):
            continue
        try:
            atoms = bulk(chemical_symbols[z], cubic=ref["symmetry"] in ("fcc", "bcc"))
        except ValueError:  # a reference state without the parameters bulk needs
            continue
        atoms.rattle(rattle, seed=z)
        out.append(atoms)
    return out[:count]
