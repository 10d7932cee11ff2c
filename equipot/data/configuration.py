"""A single labelled structure in plain numpy, and its conversion to a graph."""

from dataclasses import dataclass, field
from typing import Dict

import numpy as np
import torch

from ..fields import Field, get_field
from ..graph import AtomicGraph
from .neighbors import CloseAtomsError, neighbor_list


@dataclass
class Configuration:
    numbers: np.ndarray  # (N,) atomic numbers
    positions: np.ndarray  # (N, 3) Å
    cell: np.ndarray  # (3, 3) Å
    pbc: np.ndarray  # (3,) bool
    targets: Dict[str, np.ndarray] = field(default_factory=dict)  # internal units
    source: str = "?"  # "file, frame k", for error messages
    total_charge: float = 0.0  # e
    fields: Dict[str, Field] = field(default_factory=dict)  # typed outputs among the targets
    tags: Dict[str, str] = field(default_factory=dict)  # per-structure keys kept as text (eval --by)

    @property
    def n_atoms(self) -> int:
        return len(self.numbers)


def to_graph(config: Configuration, cutoff: float) -> AtomicGraph:
    """Build the graph of one configuration (float64 tensors; cast later)."""
    try:
        src, dst, shift = neighbor_list(config.positions, config.cell, config.pbc, cutoff)
    except CloseAtomsError as err:
        raise CloseAtomsError(f"{config.source}: {err}") from None
    n = config.n_atoms
    targets = {}
    for name, value in config.targets.items():
        f = get_field(name, config.fields)
        lead = (n,) if f.level == "node" else (1,)
        targets[name] = torch.as_tensor(value, dtype=torch.float64).reshape(lead + f.shape)
    return AtomicGraph(
        positions=torch.as_tensor(config.positions, dtype=torch.float64),
        numbers=torch.as_tensor(config.numbers, dtype=torch.int64),
        cell=torch.as_tensor(config.cell, dtype=torch.float64).reshape(1, 3, 3),
        pbc=torch.as_tensor(config.pbc, dtype=torch.bool).reshape(1, 3),
        node_graph=torch.zeros(n, dtype=torch.int64),
        edge_src=torch.as_tensor(src),
        edge_dst=torch.as_tensor(dst),
        edge_shift=torch.as_tensor(shift),
        n_graphs=1,
        targets=targets,
        total_charge=torch.tensor([float(config.total_charge)], dtype=torch.float64),
    )
