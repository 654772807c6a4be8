"""What a checkpoint's training batches held, so its calculator can say when it is asked about something else.

The trainer counts, over every batch it trains on (before any corruption), the elements present and the shortest
interatomic distance within the cutoff; the checkpoint's ``model_config.json`` records them as ``coverage``. A
checkpoint without the record (older ones) warns of nothing.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch

from data_pipeline.batch import AtomBatch, edge_vectors
from data_pipeline.schema import MAX_Z


@dataclass
class TrainingCoverage:
    """elements: atomic numbers seen in training; shortest_distance: Å, the closest pair seen (None: no pair)."""

    elements: list[int] = field(default_factory=list)
    shortest_distance: float | None = None

    def merged(self, other: TrainingCoverage | None) -> TrainingCoverage:
        """What either saw."""
        if other is None:
            return TrainingCoverage(sorted(self.elements), self.shortest_distance)
        distances = [d for d in (self.shortest_distance, other.shortest_distance) if d is not None]
        return TrainingCoverage(
            sorted(set(self.elements) | set(other.elements)), min(distances, default=None)
        )


def batch_coverage(batch: AtomBatch) -> TrainingCoverage:
    """The elements of ``batch`` and its shortest edge (Å)."""
    present = torch.bincount(batch.z.detach().cpu(), minlength=MAX_Z + 1) > 0
    elements = [int(z) for z in torch.nonzero(present).flatten() if z > 0]
    shortest = None
    if batch.edge_index.shape[1]:
        shortest = float(edge_vectors(batch).detach().norm(dim=1).min())
    return TrainingCoverage(elements, shortest)


def closest_pair(batch: AtomBatch) -> tuple[float, int, int] | None:
    """The shortest edge of ``batch``: (distance Å, centre atom, neighbour atom), or None without edges."""
    if not batch.edge_index.shape[1]:
        return None
    lengths = edge_vectors(batch).detach().norm(dim=1)
    k = int(torch.argmin(lengths))
    return float(lengths[k]), int(batch.edge_index[1, k]), int(batch.edge_index[0, k])
