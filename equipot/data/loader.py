"""Batches of graphs from a list of configurations.

Neighbour lists are built when a batch is made (vesin takes milliseconds), so a
dataset of 10^5 configurations holds only positions and labels in memory. The loader
draws its order from its own seeded generator, whose state goes into checkpoints, and
can shard each global batch over ``world_size`` processes (data-parallel training); a
process whose share of a batch is empty gets ``None`` for that step, so that all processes
take the same number of steps.
"""

from typing import Iterator, List, Mapping, Optional, Sequence

import torch

from ..fields import Field, get_field
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
        labels: Sequence[str] = (),
    ):
        if batch_size < 1:
            raise ValueError(f"batch_size must be positive, got {batch_size}")
        self.configs = configs
        self.cutoff = cutoff
        self.batch_size = batch_size
        self.shuffle = shuffle
        self.rank, self.world_size = rank, world_size
        self.labels = tuple(labels)  # in every batch, NaN where missing (a batch may have none of them)
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
                configs = [self.configs[i] for i in shard]
                yield _batch([to_graph(c, self.cutoff) for c in configs], configs[0].fields, self.labels)
            elif self.world_size > 1:  # every process takes the same number of steps
                yield None

    def state_dict(self) -> dict:
        return {"generator": self.generator.get_state()}

    def load_state_dict(self, state: dict) -> None:
        self.generator.set_state(state["generator"])


def _batch(graphs: List[AtomicGraph], fields: Optional[Mapping[str, Field]] = None,
           labels: Sequence[str] = ()) -> AtomicGraph:
    """Batch graphs; a label that some structures lack (or one of ``labels`` that all lack) is
    NaN on those (missing).

    A file may hold crystals with stress next to molecules without, or isolated atoms with an
    energy and no forces: the loss and the metrics leave out the NaN entries
    (:mod:`equipot.train.loss`), so each label counts where it is known.
    """
    names = set().union(labels, *(g.targets for g in graphs))
    for g in graphs:
        missing = names - set(g.targets)
        if missing:
            g.targets = dict(g.targets)
            for name in missing:
                f = get_field(name, fields)
                lead = g.n_atoms if f.level == "node" else 1
                g.targets[name] = torch.full((lead,) + f.shape, float("nan"), dtype=torch.float64)
    return batch_graphs(graphs)


def make_batch(configs: Sequence[Configuration], cutoff: float, dtype: Optional[torch.dtype] = None) -> AtomicGraph:
    g = _batch([to_graph(c, cutoff) for c in configs], configs[0].fields if len(configs) else None)
    return g.to(dtype=dtype) if dtype is not None else g
