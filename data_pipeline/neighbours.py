"""Neighbour lists with periodic images (vesin), in the edge convention of ``docs/batch.md``."""

from __future__ import annotations

import numpy as np
import torch
import vesin


def radius_graph_pbc(
    positions: np.ndarray | torch.Tensor,
    cell: np.ndarray | torch.Tensor | None,
    pbc: np.ndarray | torch.Tensor | tuple[bool, bool, bool],
    cutoff: float,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Every pair (i, j, S) with ``|pos[j] - pos[i] + S @ cell| < cutoff``, except an atom with itself (S = 0).

    positions: [N, 3] Å; cell: [3, 3] Å, lattice vectors as rows (ignored, and may be None, when no direction
    is periodic); pbc: [3] bool; cutoff: Å. A cell smaller than the cutoff gives several images of one pair.

    Returns ``edge_index`` int64 [2, E] (row 0 = neighbour j, row 1 = centre i; both directions of each pair)
    sorted by centre, then neighbour, then shift, and ``cell_offsets`` int64 [E, 3] (the integer shifts S), on
    the device of ``positions``.
    """
    if cutoff <= 0:
        raise ValueError(f"cutoff must be positive, got {cutoff} Å")
    device = positions.device if isinstance(positions, torch.Tensor) else torch.device("cpu")
    points = _as_numpy(positions).reshape(-1, 3)
    periodic = _as_numpy(pbc).astype(bool).reshape(3)
    if periodic.any():
        if cell is None:
            raise ValueError("a periodic structure needs a cell")
        box = _as_numpy(cell).reshape(3, 3)
    else:
        box = np.zeros((3, 3))
    if len(points) == 0:
        empty = torch.zeros((2, 0), dtype=torch.int64, device=device)
        return empty, torch.zeros((0, 3), dtype=torch.int64, device=device)
    centre, neighbour, shifts = vesin.NeighborList(cutoff=float(cutoff), full_list=True).compute(
        points, box, periodic.tolist(), quantities="ijS"
    )
    centre, neighbour, shifts = centre.astype(np.int64), neighbour.astype(np.int64), shifts.astype(np.int64)
    order = np.lexsort((shifts[:, 2], shifts[:, 1], shifts[:, 0], neighbour, centre))
    edge_index = torch.from_numpy(np.stack([neighbour[order], centre[order]]))
    return edge_index.to(device), torch.from_numpy(shifts[order]).to(device)


def _as_numpy(x: np.ndarray | torch.Tensor | tuple) -> np.ndarray:
    if isinstance(x, torch.Tensor):
        return (
            x.detach().cpu().numpy().astype(np.float64) if x.is_floating_point() else x.detach().cpu().numpy()
        )
    arr = np.asarray(x)
    return arr.astype(np.float64) if np.issubdtype(arr.dtype, np.floating) else arr
