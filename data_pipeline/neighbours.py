"""Neighbour lists with periodic images (vesin), in the edge convention of ``docs/batch.md``.

vesin's cell list holds at most 1e5 cells: it shrinks a larger grid keeping its aspect ratio, and a grid far
longer in one direction than in another (one atom 10⁶ Å from the rest, a sparse sheet 2000 Å wide) shrinks to
zero cells in a direction, a division by zero that kills the process (SIGFPE, no message); its time also grows
with the extent. So the empty space of a non-periodic structure is squeezed out first (:func:`close_gaps`:
the same pairs, a compact box), and a grid that would still collapse is a ``ValueError``, never a crash.
"""

from __future__ import annotations

import numpy as np
import torch
import vesin

MAX_CELLS = 5e4  # half of vesin's cap (1e5): grids below it are never shrunk


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
    points = _as_numpy(positions).astype(np.float64).reshape(-1, 3)
    periodic = _as_numpy(pbc).astype(bool).reshape(3)
    if periodic.any():
        if cell is None:
            raise ValueError("a periodic structure needs a cell")
        box = _as_numpy(cell).astype(np.float64).reshape(3, 3)
    else:
        box = np.zeros((3, 3))
    if len(points) == 0:
        empty = torch.zeros((2, 0), dtype=torch.int64, device=device)
        return empty, torch.zeros((0, 3), dtype=torch.int64, device=device)
    if not periodic.any():
        points = close_gaps(points, float(cutoff))
    check_cell_grid(points, box, periodic, float(cutoff))
    centre, neighbour, shifts = vesin.NeighborList(cutoff=float(cutoff), full_list=True).compute(
        points, box, periodic.tolist(), quantities="ijS"
    )
    centre, neighbour, shifts = centre.astype(np.int64), neighbour.astype(np.int64), shifts.astype(np.int64)
    order = np.lexsort((shifts[:, 2], shifts[:, 1], shifts[:, 0], neighbour, centre))
    edge_index = torch.from_numpy(np.stack([neighbour[order], centre[order]]))
    return edge_index.to(device), torch.from_numpy(shifts[order]).to(device)


def close_gaps(points: np.ndarray, cutoff: float) -> np.ndarray:
    """``points`` of a non-periodic structure with every empty slab wider than 2 × ``cutoff`` (along x, y or z)
    narrowed to 2 × ``cutoff``: pairs across such a slab stay beyond the cutoff, all others keep their
    vectors, so the pairs within the cutoff are exactly the same."""
    out = np.array(points, dtype=np.float64)
    for k in range(3):
        order = np.argsort(out[:, k], kind="stable")
        coords = out[order, k]
        gaps = np.diff(coords)
        if gaps.size and gaps.max() > 2 * cutoff:
            out[order, k] = coords[0] + np.concatenate([[0.0], np.cumsum(np.minimum(gaps, 2 * cutoff))])
    return out


def check_cell_grid(points: np.ndarray, box: np.ndarray, periodic: np.ndarray, cutoff: float) -> None:
    """Raise ``ValueError`` when vesin's cell grid (cells of ``cutoff`` across the distances between a periodic
    cell's faces, or the points' extent) would collapse under its cell cap."""
    widths = points.max(axis=0) - points.min(axis=0)
    if periodic.any():
        volume = abs(float(np.linalg.det(box)))
        for k in np.flatnonzero(periodic):
            face = float(np.linalg.norm(np.cross(box[(k + 1) % 3], box[(k + 2) % 3])))
            widths[k] = volume / face if face > 0 else 0.0
    if not np.isfinite(widths).all():
        raise ValueError(f"the structure spans {widths.tolist()} Å: not finite")
    cells = np.maximum(np.floor(widths / cutoff), 1.0)
    total = float(np.prod(cells))
    if total > MAX_CELLS and cells.min() * (MAX_CELLS / total) ** (1 / 3) < 2:
        raise ValueError(
            f"the structure spans {np.round(widths, 1).tolist()} Å ({cells.astype(int).tolist()} cells of the "
            f"{cutoff:g} Å cutoff): too large and too flat for the cell-list neighbour search; is a length in "
            "the wrong unit?"
        )


def _as_numpy(x: np.ndarray | torch.Tensor | tuple) -> np.ndarray:
    if isinstance(x, torch.Tensor):
        return (
            x.detach().cpu().numpy().astype(np.float64) if x.is_floating_point() else x.detach().cpu().numpy()
        )
    arr = np.asarray(x)
    return arr.astype(np.float64) if np.issubdtype(arr.dtype, np.floating) else arr
