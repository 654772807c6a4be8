"""pack_by_atoms: budgets hold, order and membership are kept, an oversize structure travels alone."""

from __future__ import annotations

import pytest
from stream_corpus import crystals, molecules, protein_frames

from data_pipeline.graph import structure_to_graph
from data_pipeline.packing import pack_by_atoms


def _natoms(item):
    return item.num_nodes


def _edges(item):
    return item.edge_index.shape[1]


@pytest.fixture(scope="module")
def graphs():
    structures = molecules(30) + crystals(12) + protein_frames(2) + protein_frames(1, name="adk_open.pdb")
    return [structure_to_graph(s, 5.0) for s in structures]


@pytest.mark.parametrize("max_atoms", [40, 200, 1000])
def test_no_batch_exceeds_max_atoms_and_every_item_is_kept_in_order(graphs, max_atoms):
    batches = list(pack_by_atoms(graphs, max_atoms, natoms=_natoms))
    assert [g.key for b in batches for g in b] == [g.key for g in graphs]
    for batch in batches:
        atoms = sum(g.num_nodes for g in batch)
        assert atoms <= max_atoms or (len(batch) == 1 and atoms > max_atoms)
    oversize = [b[0].key for b in batches if sum(g.num_nodes for g in b) > max_atoms]
    assert oversize == [g.key for g in graphs if g.num_nodes > max_atoms]


def test_batches_are_filled_greedily(graphs):
    batches = list(pack_by_atoms(graphs, 200, natoms=_natoms))
    for batch, following in zip(batches, batches[1:], strict=False):
        assert sum(g.num_nodes for g in batch) + following[0].num_nodes > 200, (
            "the next structure would have fitted"
        )


def test_edge_and_structure_budgets(graphs):
    small = [g for g in graphs if g.num_nodes <= 200]
    batches = list(
        pack_by_atoms(small, 500, natoms=_natoms, num_edges=_edges, max_edges=3000, max_structures=5)
    )
    assert [g.key for b in batches for g in b] == [g.key for g in small]
    for batch in batches:
        assert len(batch) <= 5
        assert sum(_edges(g) for g in batch) <= 3000 or len(batch) == 1
    assert any(sum(_edges(g) for g in b) > 2500 for b in batches), "the edge budget should have been binding"


def test_bad_budgets_are_refused(graphs):
    with pytest.raises(ValueError, match="max_atoms"):
        list(pack_by_atoms(graphs, 0, natoms=_natoms))
    with pytest.raises(ValueError, match="num_edges"):
        list(pack_by_atoms(graphs, 100, natoms=_natoms, max_edges=10))
