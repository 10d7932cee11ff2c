"""Batches of graphs from a list of configurations.

Neighbour lists are built when a batch is made (vesin takes milliseconds), so a
dataset of 10^5 configurations holds only positions and labels in memory. The loader
draws its order from its own seeded generator, whose state goes into checkpoints, and
can shard each global batch over ``world_size`` processes (data-parallel training); a
process whose share of a batch is empty gets ``None`` for that step, so that all processes
take the same number of steps.
"""

from typing import Iterator, List, Optional, Sequence

import torch

from ..graph import AtomicGraph, batch_graphs
from .configuration import Configuration, to_graph


class GraphLoader:
    def __init__(
        self,
        configs: Sequence[Configuration],
        cutoff: float,
        batch_size: int,
        shuffle: bool = False,
        seed: int = 0,
        rank: int = 0,
        world_size: int = 1,
    ):
        if batch_size < 1:
            raise ValueError(f"batch_size must be positive, got {batch_size}")
        self.configs = configs
        self.cutoff = cutoff
        self.batch_size = batch_size
        self.shuffle = shuffle
        self.rank, self.world_size = rank, world_size
        self.generator = torch.Generator().manual_seed(seed)

    def __len__(self) -> int:
        return (len(self.configs) + self.batch_size - 1) // self.batch_size

    def _order(self) -> List[int]:
        if self.shuffle:
            return torch.randperm(len(self.configs), generator=self.generator).tolist()
        return list(range(len(self.configs)))

    def __iter__(self) -> Iterator[AtomicGraph]:
        order = self._order()
        for start in range(0, len(order), self.batch_size):
            chunk = order[start : start + self.batch_size]
            shard = chunk[self.rank :: self.world_size]
            if shard:
                yield _batch([to_graph(self.configs[i], self.cutoff) for i in shard])
            elif self.world_size > 1:  # every process takes the same number of steps
                yield None

    def state_dict(self) -> dict:
        return {"generator": self.generator.get_state()}

    def load_state_dict(self, state: dict) -> None:
        self.generator.set_state(state["generator"])


def _batch(graphs: List[AtomicGraph]) -> AtomicGraph:
    """Batch graphs, keeping only the labels that every structure carries.

    A file may hold molecules without stress next to crystals with stress; a label that
    a loss term needs is required when reading, so every structure has it.
    """
    common = set.intersection(*(set(g.targets) for g in graphs))
    for g in graphs:
        if set(g.targets) != common:
            g.targets = {k: v for k, v in g.targets.items() if k in common}
    return batch_graphs(graphs)


def make_batch(configs: Sequence[Configuration], cutoff: float, dtype: Optional[torch.dtype] = None) -> AtomicGraph:
    g = _batch([to_graph(c, cutoff) for c in configs])
    return g.to(dtype=dtype) if dtype is not None else g
