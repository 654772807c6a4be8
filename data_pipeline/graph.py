"""One :class:`Structure` as one torch_geometric ``Data`` graph, exactly the fields of ``docs/batch.md``."""

from __future__ import annotations

import hashlib

import numpy as np
import torch
from torch_geometric.data import Data

from data_pipeline.neighbours import radius_graph_pbc
from data_pipeline.schema import Structure
from data_pipeline.vocab import LEVELS_OF_THEORY, domain_index, level_index

HASH_MASK = (1 << 63) - 1


def group_hash(group_id: str) -> int:
    """Stable 63-bit hash of a group id (the same in every process and Python version)."""
    digest = hashlib.blake2b(group_id.encode(), digest_size=8).digest()
    return int.from_bytes(digest, "little") & HASH_MASK


def structure_to_graph(
    s: Structure,
    cutoff: float,
    levels: tuple[str, ...] | list[str] = LEVELS_OF_THEORY,
    properties: tuple[str, ...] | list[str] = (),
    atom_labels: tuple[str, ...] | list[str] = (),
) -> Data:
    """The graph of ``s`` under a neighbour-list cutoff (Å); per-structure fields have a leading dimension 1.

    ``levels``: the vocabulary the level of theory is indexed in (the model's; default the built-in one).
    ``properties``: the structure properties carried as ``properties`` [1, P] (0 where ``has_properties`` is
    false). ``atom_labels``: per-atom integer classes carried as ``atom_labels`` [N, K] (−1 where the structure
    has none, e.g. ``secondary_structure``). A structure without a group id is its own group (its key is hashed). ``cell`` is zero when no
    direction is periodic; absent labels are zeros with ``has_*`` false.
    """
    n = s.num_atoms
    edge_index, shifts = radius_graph_pbc(s.positions, s.cell, s.pbc, cutoff)
    periodic = s.is_periodic
    cell = np.asarray(s.cell, dtype=np.float32) if periodic else np.zeros((3, 3), dtype=np.float32)
    forces = (
        np.zeros((n, 3), dtype=np.float32) if s.forces is None else np.asarray(s.forces, dtype=np.float32)
    )
    stress = (
        np.zeros((3, 3), dtype=np.float32) if s.stress is None else np.asarray(s.stress, dtype=np.float32)
    )
    residue = s.per_atom.get("residue_index")
    residue_id = torch.full((n,), -1, dtype=torch.int64) if residue is None else _long(residue)
    return Data(
        z=_long(s.atomic_numbers),
        pos=torch.from_numpy(np.asarray(s.positions, dtype=np.float32).copy()),
        natoms=torch.tensor([n], dtype=torch.int64),
        cell=torch.from_numpy(cell.copy()).reshape(1, 3, 3),
        pbc=torch.from_numpy(np.asarray(s.pbc, dtype=bool).copy()).reshape(1, 3),
        edge_index=edge_index,
        cell_offsets=shifts.to(torch.float32),
        charge=torch.tensor([s.charge], dtype=torch.int64),
        spin=torch.tensor([s.spin], dtype=torch.int64),
        level_of_theory=torch.tensor([level_index(s.level_of_theory, levels)], dtype=torch.int64),
        domain=torch.tensor([domain_index(s.domain)], dtype=torch.int64),
        energy=torch.tensor([0.0 if s.energy is None else s.energy], dtype=torch.float32),
        forces=torch.from_numpy(forces.copy()),
        stress=torch.from_numpy(stress.copy()).reshape(1, 3, 3),
        has_energy=torch.tensor([s.energy is not None]),
        has_forces=torch.tensor([s.forces is not None]),
        has_stress=torch.tensor([s.stress is not None]),
        residue_id=residue_id,
        properties=torch.tensor([[s.properties.get(p, 0.0) for p in properties]], dtype=torch.float32),
        has_properties=torch.tensor([[p in s.properties for p in properties]], dtype=torch.bool),
        atom_labels=_atom_labels(s, atom_labels),
        replay=torch.tensor([False]),
        group_hash=torch.tensor([group_hash(s.group_id or s.key)], dtype=torch.int64),
        key=s.key,
        num_nodes=n,
    )


def _atom_labels(s: Structure, names: tuple[str, ...] | list[str]) -> torch.Tensor:
    columns = [
        np.asarray(s.per_atom[name]).astype(np.int64)
        if name in s.per_atom
        else np.full(s.num_atoms, -1, dtype=np.int64)
        for name in names
    ]
    return torch.from_numpy(np.stack(columns, axis=1) if columns else np.zeros((s.num_atoms, 0), np.int64))


def _long(values: np.ndarray) -> torch.Tensor:
    return torch.from_numpy(np.asarray(values).astype(np.int64))
