"""Neighbour lists with vesin (open, periodic, mixed and small triclinic cells)."""

from typing import Tuple

import numpy as np
import vesin

MIN_DISTANCE = 0.1  # Å; closer atoms are treated as a data error


class CloseAtomsError(ValueError):
    pass


def has_valid_cell(cell: np.ndarray, pbc: np.ndarray) -> bool:
    """Whether the lattice vectors of the periodic directions are present and independent."""
    rows = np.asarray(cell, dtype=np.float64)[np.asarray(pbc, dtype=bool)]
    return len(rows) == 0 or np.linalg.det(rows @ rows.T) >= 1e-12


def neighbor_list(
    positions: np.ndarray, cell: np.ndarray, pbc: np.ndarray, cutoff: float
) -> Tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Full neighbour list within ``cutoff`` (Å).

    Returns ``(edge_src, edge_dst, edge_shift)`` in the convention of
    :mod:`equipot.graph`: the vector of an edge is
    ``positions[src] - positions[dst] + shift @ cell``. Periodic directions may hold
    several images of the same atom when the cell is smaller than twice the cutoff.
    Raises :class:`CloseAtomsError` if two atoms (or images) are closer than 0.1 Å.
    """
    positions = np.ascontiguousarray(positions, dtype=np.float64)
    pbc = np.asarray(pbc, dtype=bool)
    box = np.asarray(cell, dtype=np.float64) if pbc.any() else np.zeros((3, 3))
    if not has_valid_cell(box, pbc):
        raise ValueError("periodic structure without a cell, or with a degenerate cell")
    # a half list, then its mirror image: edge H + e reverses edge e (see equipot.graph)
    calc = vesin.NeighborList(cutoff=float(cutoff), full_list=False)
    i, j, shifts, d = calc.compute(positions, box, [bool(p) for p in pbc], quantities="ijSd")
    i, j, shifts, d = np.concatenate([i, j]), np.concatenate([j, i]), np.concatenate([shifts, -shifts]), np.concatenate([d, d])
    if len(d) and d.min() < MIN_DISTANCE:
        k = int(np.argmin(d))
        raise CloseAtomsError(
            f"atoms {int(i[k])} and {int(j[k])} are {d[k]:.4f} Å apart (less than {MIN_DISTANCE} Å)"
        )
    # vesin's vector is positions[j] - positions[i] + S @ box: j is the neighbour (src)
    return j.astype(np.int64), i.astype(np.int64), shifts.astype(np.float64)
