"""The batch contract in code: what the stream hands the model, the tasks and the calculator.

``AtomBatch`` is a structural type for the torch_geometric ``Batch`` the stream yields (``docs/batch.md`` has
the table with units). Signatures say ``batch: AtomBatch``; any object with these fields fits, a ``Batch``
from :func:`data_pipeline.graph.structure_to_graph` graphs in particular. B structures, N atoms, E edges.
"""

from __future__ import annotations

from typing import Protocol, runtime_checkable

import torch
from torch import Tensor


@runtime_checkable
class AtomBatch(Protocol):
    z: Tensor  # int64 [N] atomic numbers (0: the masked-atom token)
    pos: Tensor  # float [N, 3] Å
    batch: Tensor  # int64 [N] structure index of each atom
    natoms: Tensor  # int64 [B]
    cell: Tensor  # float [B, 3, 3] Å, rows are lattice vectors; zeros when not periodic
    pbc: Tensor  # bool [B, 3]
    edge_index: Tensor  # int64 [2, E]: row 0 neighbour j (source), row 1 centre i (target)
    cell_offsets: Tensor  # float [E, 3] integer image shifts S: r_ij = pos[j] - pos[i] + S @ cell
    charge: Tensor  # int64 [B] total charge, e
    spin: Tensor  # int64 [B] spin multiplicity
    level_of_theory: Tensor  # int64 [B] index into data_pipeline.vocab.LEVELS_OF_THEORY
    domain: Tensor  # int64 [B] index into data_pipeline.schema.DOMAINS
    energy: Tensor  # float [B] eV (0 where has_energy is false)
    forces: Tensor  # float [N, 3] eV/Å
    stress: Tensor  # float [B, 3, 3] eV/Å³, ASE's sign
    has_energy: Tensor  # bool [B]
    has_forces: Tensor  # bool [B]
    has_stress: Tensor  # bool [B]
    residue_id: Tensor  # int64 [N], -1 for atoms outside a protein chain
    properties: Tensor  # float [B, P] the stream's structure properties (StreamConfig.properties)
    has_properties: Tensor  # bool [B, P]
    atom_labels: Tensor  # int64 [N, K] per-atom classes (StreamConfig.atom_labels), -1 where absent
    replay: Tensor  # bool [B] drawn from the replay corpus (fine-tuning with replay)
    group_hash: Tensor  # int64 [B] stable hash of the group id
    key: list[str]  # [B]

    @property
    def num_graphs(self) -> int: ...

    @property
    def num_nodes(self) -> int: ...


def edge_vectors(batch: AtomBatch, pos: Tensor | None = None, cell: Tensor | None = None) -> Tensor:
    """r_ij = pos[j] − pos[i] + S·cell per edge [E, 3] Å, by explicit differences (so gradients reach ``pos``
    and ``cell``); ``pos`` and ``cell`` default to the batch's own."""
    pos = batch.pos if pos is None else pos
    cell = batch.cell if cell is None else cell
    src, dst = batch.edge_index
    shift = torch.einsum("ei,eij->ej", batch.cell_offsets.to(pos.dtype), cell.to(pos.dtype)[batch.batch[dst]])
    return pos[src] - pos[dst] + shift
