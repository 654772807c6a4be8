"""radius_graph_pbc against a brute-force loop over periodic images."""

from __future__ import annotations

import itertools

import numpy as np
import pytest
import torch
from ase.build import bulk, fcc111, molecule

from data_pipeline.neighbours import radius_graph_pbc


def brute_force_pairs(positions: np.ndarray, cell: np.ndarray, pbc: np.ndarray, cutoff: float) -> set:
    """{(neighbour j, centre i, S)} with |pos[j] - pos[i] + S @ cell| < cutoff, by explicit image loops."""
    plane_spacing = 1.0 / np.linalg.norm(np.linalg.inv(cell).T, axis=1)
    reach = [int(np.ceil(cutoff / plane_spacing[k])) + 1 if pbc[k] else 0 for k in range(3)]
    pairs = set()
    for shift in itertools.product(*(range(-r, r + 1) for r in reach)):
        offset = np.array(shift, dtype=np.float64) @ cell
        for i, j in itertools.product(range(len(positions)), repeat=2):
            if i == j and not any(shift):
                continue
            if np.linalg.norm(positions[j] - positions[i] + offset) < cutoff:
                pairs.add((j, i, shift))
    return pairs


def vesin_pairs(positions, cell, pbc, cutoff) -> set:
    edge_index, shifts = radius_graph_pbc(positions, cell, pbc, cutoff)
    assert edge_index.dtype == torch.int64 and shifts.dtype == torch.int64
    pairs = {(j, i, tuple(s)) for (j, i), s in zip(edge_index.T.tolist(), shifts.tolist(), strict=True)}
    assert len(pairs) == edge_index.shape[1], "an edge is listed twice"
    return pairs


def test_skewed_triclinic_cell_matches_brute_force():
    cell = np.array([[4.1, 0.0, 0.0], [2.6, 3.7, 0.0], [1.3, -1.1, 4.4]])
    rng = np.random.default_rng(7)
    positions = rng.random((5, 3)) @ cell
    positions[0] += cell[0] - 2.0 * cell[2]  # an atom outside the cell: images must still be found
    pbc = np.array([True, True, True])
    reference = brute_force_pairs(positions, cell, pbc, 4.5)
    assert any(any(s) for _, _, s in reference)
    assert vesin_pairs(positions, cell, pbc, 4.5) == reference


def test_cell_smaller_than_cutoff_lists_every_image():
    silicon = bulk("Si", "diamond", a=5.43)  # primitive cell, 3.84 Å lattice vectors
    cutoff = 6.5
    reference = brute_force_pairs(silicon.positions, silicon.cell.array, silicon.pbc, cutoff)
    self_images = [p for p in reference if p[0] == p[1]]
    assert self_images, "an atom must see its own periodic images"
    assert vesin_pairs(silicon.positions, silicon.cell.array, silicon.pbc, cutoff) == reference


def test_slab_is_periodic_in_plane_only():
    slab = fcc111("Cu", size=(2, 2, 3), vacuum=4.0)
    reference = brute_force_pairs(slab.positions, slab.cell.array, slab.pbc, 5.0)
    assert {s[2] for _, _, s in reference} == {0}
    assert vesin_pairs(slab.positions, slab.cell.array, slab.pbc, 5.0) == reference


def test_molecule_needs_no_cell():
    water = molecule("H2O")
    edge_index, shifts = radius_graph_pbc(water.positions, None, [False, False, False], 1.2)
    assert not shifts.any()
    distances = np.linalg.norm(water.positions[edge_index[0]] - water.positions[edge_index[1]], axis=1)
    assert sorted(zip(edge_index[1].tolist(), edge_index[0].tolist(), strict=True)) == [
        (0, 1),
        (0, 2),
        (1, 0),
        (2, 0),
    ]
    assert (distances < 1.2).all()


def test_edges_are_sorted_by_centre_and_follow_the_batch_convention():
    copper = bulk("Cu", "fcc", a=3.6).repeat((2, 1, 1))
    copper.rattle(0.05, seed=1)
    cell = torch.tensor(copper.cell.array, dtype=torch.float64)
    pos = torch.tensor(copper.positions, dtype=torch.float64)
    edge_index, shifts = radius_graph_pbc(pos, cell, torch.tensor([True, True, True]), 4.0)
    assert (edge_index[1].diff() >= 0).all()
    j, i = edge_index
    vectors = pos[j] - pos[i] + shifts.to(torch.float64) @ cell
    assert (vectors.norm(dim=1) < 4.0).all()
    reverse = {
        (a, b, tuple(-x for x in s)) for (a, b), s in zip(edge_index.T.tolist(), shifts.tolist(), strict=True)
    }
    forward = {(b, a, tuple(s)) for (a, b), s in zip(edge_index.T.tolist(), shifts.tolist(), strict=True)}
    assert reverse == forward, "every edge must come with its reverse"


def test_periodic_structure_without_cell_is_an_error():
    with pytest.raises(ValueError, match="cell"):
        radius_graph_pbc(np.zeros((2, 3)), None, [True, True, True], 3.0)
