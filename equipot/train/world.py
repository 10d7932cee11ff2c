"""The processes a training run is spread over.

A single process is a world of size one whose reductions do nothing. Multi-process
(torchrun / DDP) training sets rank and size from the environment and reduces with
torch.distributed; the training loop only talks to this interface.
"""

import os

import torch


class World:
    def __init__(self):
        self.size = int(os.environ.get("WORLD_SIZE", "1"))
        self.rank = int(os.environ.get("RANK", "0"))
        self.distributed = self.size > 1
        if self.distributed and not torch.distributed.is_initialized():
            torch.distributed.init_process_group(backend="gloo")

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    def sum(self, tensor: torch.Tensor) -> torch.Tensor:
        """Sum of ``tensor`` over processes (in place where distributed)."""
        if self.distributed:
            torch.distributed.all_reduce(tensor)
        return tensor

    def sum_gradients(self, model: torch.nn.Module) -> None:
        if self.distributed:
            for p in model.parameters():
                if p.grad is not None:
                    torch.distributed.all_reduce(p.grad)

    def barrier(self) -> None:
        if self.distributed:
            torch.distributed.barrier()
