"""Geometry as pure functions: strain, edge vectors, volumes.

Stress convention (ASE's, written once): with a symmetric strain ε applied as
r -> r (1 + ε) and cell -> cell (1 + ε),

    forces  F = -∂E/∂r,   virial W = -∂E/∂ε,   stress σ = (1/V) ∂E/∂ε = -W / V   (eV/Å³)
"""

from typing import Tuple

import torch


def symmetric_strain(n_graphs: int, dtype: torch.dtype, device=None) -> Tuple[torch.Tensor, torch.Tensor]:
    """A zero displacement gradient (requires grad) and its symmetric part ε."""
    displacement = torch.zeros(n_graphs, 3, 3, dtype=dtype, device=device, requires_grad=True)
    return displacement, 0.5 * (displacement + displacement.transpose(1, 2))


def apply_strain(
    positions: torch.Tensor, cell: torch.Tensor, strain: torch.Tensor, node_graph: torch.Tensor
) -> Tuple[torch.Tensor, torch.Tensor]:
    """Positions (N, 3) and cells (G, 3, 3; rows are lattice vectors) under strain (G, 3, 3)."""
    positions = positions + torch.einsum("ni,nij->nj", positions, strain[node_graph])
    cell = cell + torch.bmm(cell, strain)
    return positions, cell


def edge_vectors(
    positions: torch.Tensor,
    cell: torch.Tensor,
    node_graph: torch.Tensor,
    edge_src: torch.Tensor,
    edge_dst: torch.Tensor,
    edge_shift: torch.Tensor,
) -> torch.Tensor:
    """r_ij = positions[src] - positions[dst] + shift @ cell (Å), see :mod:`equipot.graph`."""
    offsets = torch.einsum("ei,eij->ej", edge_shift, cell[node_graph[edge_dst]])
    return positions[edge_src] - positions[edge_dst] + offsets


def cell_volumes(cell: torch.Tensor) -> torch.Tensor:
    """|det(cell)| per structure (Å³); zero for open systems with a zero cell."""
    return torch.linalg.det(cell).abs()
