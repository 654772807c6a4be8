"""Pack consecutive structures into batches under an atom budget (and edge and structure budgets)."""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator
from typing import TypeVar

T = TypeVar("T")


def pack_by_atoms(
    items: Iterable[T],
    max_atoms: int,
    *,
    natoms: Callable[[T], int],
    max_structures: int | None = None,
    num_edges: Callable[[T], int] | None = None,
    max_edges: int | None = None,
) -> Iterator[list[T]]:
    """Greedy, order-keeping packing: items join the open batch until the next one would break a budget.

    A batch never holds more than ``max_atoms`` atoms, ``max_edges`` edges (when given, with ``num_edges``)
    or ``max_structures`` items, except that an item over a budget on its own gets a batch of its own
    (the caller decides whether to keep or drop it). Every item is in exactly one batch, in input order.
    """
    if max_atoms < 1:
        raise ValueError(f"max_atoms must be >= 1, got {max_atoms}")
    if max_structures is not None and max_structures < 1:
        raise ValueError(f"max_structures must be >= 1, got {max_structures}")
    if max_edges is not None and (num_edges is None or max_edges < 1):
        raise ValueError("max_edges needs a num_edges function and a budget >= 1")
    batch: list[T] = []
    atoms = edges = 0
    for item in items:
        n = natoms(item)
        e = num_edges(item) if max_edges is not None else 0
        full = (
            atoms + n > max_atoms
            or (max_edges is not None and edges + e > max_edges)
            or (max_structures is not None and len(batch) >= max_structures)
        )
        if batch and full:
            yield batch
            batch, atoms, edges = [], 0, 0
        batch.append(item)
        atoms += n
        edges += e
    if batch:
        yield batch
