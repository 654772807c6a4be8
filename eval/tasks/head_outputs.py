"""A checkpoint's head outputs on evaluation structures, batched by atom count (for the probe-head tasks)."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import replace
from typing import Any

import torch
from torch import Tensor
from torch_geometric.data import Batch

from data_pipeline.graph import structure_to_graph
from data_pipeline.schema import Structure


def head_outputs(
    model: Any, structures: list[Structure], outputs: tuple[str, ...], *, max_atoms: int = 2048
) -> Iterator[tuple[list[Structure], Any, dict[str, Tensor]]]:
    """(structures, batch, outputs) per batch of at most ``max_atoms`` atoms (one structure alone when it is
    larger), each structure at its own level of theory (its main one when unlabelled or unknown to it)."""
    cutoff, levels = model.config.backbone.cutoff, model.config.levels_of_theory
    device = model.reference_energies.energies.device
    pending: list[Structure] = []
    atoms = 0
    for s in [*structures, None]:
        if pending and (s is None or atoms + s.num_atoms > max_atoms):
            graphs = [
                structure_to_graph(
                    p
                    if p.level_of_theory in levels and p.level_of_theory != "none"
                    else replace(p, level_of_theory=model.config.main_level_of_theory),
                    cutoff,
                    levels,
                )
                for p in pending
            ]
            batch = Batch.from_data_list(graphs).to(device)
            batch.pos, batch.cell = batch.pos.to(model.dtype), batch.cell.to(model.dtype)
            with torch.no_grad():
                out = model(batch, outputs)
            yield pending, batch, out
            pending, atoms = [], 0
        if s is not None:
            pending.append(s)
            atoms += s.num_atoms
