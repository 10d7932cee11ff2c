"""One container for a batch of atomic structures as a single disconnected graph.

Edge convention (stated once, used everywhere): edge ``e`` carries a message from
atom ``edge_src[e]`` (the neighbour j) to atom ``edge_dst[e]`` (the centre i), and its
vector points from the centre to the neighbour's periodic image::

    r_ij = positions[edge_src] - positions[edge_dst] + edge_shift @ cell[graph]

``edge_shift`` holds the integer lattice translation of the neighbour's image. The list
is full: both (i, j) and (j, i) are present. Lists built by equipot come in two mirrored
halves: with H = E / 2, edge ``H + e`` is edge ``e`` reversed (source and destination
swapped, shift negated), and batching keeps that order over the whole batch (all first
halves, then all second halves), so that per-edge functions of the length are computed once
per pair (:func:`mirrored_half`).
"""

from dataclasses import dataclass, field, replace
from typing import Dict, List, Optional

import numpy as np
import torch

from .fields import get_field


@dataclass
class AtomicGraph:
    positions: torch.Tensor  # (N, 3) Å
    numbers: torch.Tensor  # (N,) atomic numbers, int64
    cell: torch.Tensor  # (G, 3, 3) Å, rows are lattice vectors; zeros for open systems
    pbc: torch.Tensor  # (G, 3) bool
    node_graph: torch.Tensor  # (N,) index of the structure each atom belongs to
    edge_src: torch.Tensor  # (E,) neighbour j
    edge_dst: torch.Tensor  # (E,) centre i
    edge_shift: torch.Tensor  # (E, 3) integer image shifts, stored as float
    n_graphs: int
    targets: Dict[str, torch.Tensor] = field(default_factory=dict)
    total_charge: Optional[torch.Tensor] = None  # (G,) e, float64; None means neutral

    def __post_init__(self):
        if self.total_charge is None:
            self.total_charge = torch.zeros(self.n_graphs, dtype=torch.float64, device=self.positions.device)

    @property
    def n_atoms(self) -> int:
        return self.positions.shape[0]

    def atoms_per_graph(self) -> torch.Tensor:
        return torch.bincount(self.node_graph, minlength=self.n_graphs)

    def to(self, device=None, dtype: Optional[torch.dtype] = None) -> "AtomicGraph":
        """Move to ``device``; floating inputs (not the labels) are cast to ``dtype`` if given."""

        def move(t: torch.Tensor) -> torch.Tensor:
            if dtype is not None and t.is_floating_point():
                return t.to(device=device, dtype=dtype)
            return t.to(device=device)

        return replace(
            self,
            positions=move(self.positions),
            numbers=move(self.numbers),
            cell=move(self.cell),
            pbc=move(self.pbc),
            node_graph=move(self.node_graph),
            edge_src=move(self.edge_src),
            edge_dst=move(self.edge_dst),
            edge_shift=move(self.edge_shift),
            # labels keep their float64: energies of 10^3-10^5 eV must not be rounded to float32
            targets={k: v.to(device=device) for k, v in self.targets.items()},
            total_charge=self.total_charge.to(device=device),
        )


def _reversed_half(edge_src: torch.Tensor, edge_dst: torch.Tensor, values: torch.Tensor) -> Optional[int]:
    """H if edge H + e swaps the source and destination of edge e and negates its ``values``."""
    e = edge_src.shape[0]
    if e == 0 or e % 2:
        return None
    h = e // 2
    if torch.equal(edge_src[h:], edge_dst[:h]) and torch.equal(edge_dst[h:], edge_src[:h]) \
            and torch.equal(values[h:], -values[:h]):
        return h
    return None


def is_mirrored(edge_src: torch.Tensor, edge_dst: torch.Tensor, edge_shift: torch.Tensor) -> bool:
    """Whether the second half of the edges reverses the first, edge by edge."""
    return _reversed_half(edge_src, edge_dst, edge_shift) is not None


def mirrored_half(edge_vec: torch.Tensor, edge_src: torch.Tensor, edge_dst: torch.Tensor) -> Optional[int]:
    """H if edge H + e is edge e reversed (vectors exactly opposite) for all e < H, else None."""
    return _reversed_half(edge_src, edge_dst, edge_vec)


def batch_graphs(graphs: List[AtomicGraph]) -> AtomicGraph:
    """Concatenate graphs into one; node and edge indices are offset per graph.

    If every graph's edges are in mirrored halves, the batch's are too: the first halves of
    all graphs, then their second halves.
    """
    offsets = np.cumsum([0] + [g.n_atoms for g in graphs[:-1]])
    graph_offsets = np.cumsum([0] + [g.n_graphs for g in graphs[:-1]])
    names = set(graphs[0].targets)
    for g in graphs:
        if set(g.targets) != names:
            raise ValueError(
                f"cannot batch structures with different labels: {sorted(names)} vs {sorted(g.targets)}"
            )
    targets = {}
    for name in sorted(names):
        targets[name] = torch.cat([g.targets[name] for g in graphs])
    return AtomicGraph(
        positions=torch.cat([g.positions for g in graphs]),
        numbers=torch.cat([g.numbers for g in graphs]),
        cell=torch.cat([g.cell for g in graphs]),
        pbc=torch.cat([g.pbc for g in graphs]),
        node_graph=torch.cat([g.node_graph + int(o) for g, o in zip(graphs, graph_offsets)]),
        **_batched_edges(graphs, offsets),
        n_graphs=sum(g.n_graphs for g in graphs),
        targets=targets,
        total_charge=torch.cat([g.total_charge for g in graphs]),
    )


def _batched_edges(graphs: List[AtomicGraph], offsets) -> Dict[str, torch.Tensor]:
    src = [g.edge_src + int(o) for g, o in zip(graphs, offsets)]
    dst = [g.edge_dst + int(o) for g, o in zip(graphs, offsets)]
    shift = [g.edge_shift for g in graphs]
    if len(graphs) > 1 and all(is_mirrored(g.edge_src, g.edge_dst, g.edge_shift) for g in graphs):
        halves = [g.edge_src.shape[0] // 2 for g in graphs]

        def order(parts):
            return [p[:h] for p, h in zip(parts, halves)] + [p[h:] for p, h in zip(parts, halves)]

        src, dst, shift = order(src), order(dst), order(shift)
    return {"edge_src": torch.cat(src), "edge_dst": torch.cat(dst), "edge_shift": torch.cat(shift)}


def check_target_shape(name: str, value: torch.Tensor, n_atoms: int, fields=None) -> None:
    """Raise if ``value`` does not have the shape the field table declares."""
    f = get_field(name, fields)
    lead = (n_atoms,) if f.level == "node" else (1,)
    if tuple(value.shape) != lead + f.shape:
        raise ValueError(f"{name}: expected shape {lead + f.shape}, got {tuple(value.shape)}")
