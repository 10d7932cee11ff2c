"""The processes a training run is spread over.

A single process is a world of size one whose reductions do nothing. Under torchrun
(``torchrun --nproc_per_node N -m equipot train CONFIG.yaml``) rank and size come from the
environment and reductions go through torch.distributed: gloo on CPU, NCCL on GPU. The
training loop only talks to this interface, and every process calls the same reductions in
the same order (a process without data in a step still takes part, with zeros).
"""

import os
from typing import List, Sequence

import torch


class World:
    def __init__(self, device: str = "cpu"):
        self.size = int(os.environ.get("WORLD_SIZE", "1"))
        self.rank = int(os.environ.get("RANK", "0"))
        self.local_rank = int(os.environ.get("LOCAL_RANK", "0"))
        self.distributed = self.size > 1
        self.device = torch.device(device)
        if self.device.type == "cuda" and self.device.index is None:
            self.device = torch.device("cuda", self.local_rank if self.distributed else 0)
        if self.distributed and not torch.distributed.is_initialized():
            backend = "nccl" if self.device.type == "cuda" else "gloo"
            torch.distributed.init_process_group(backend=backend)

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    def sum(self, tensor: torch.Tensor) -> torch.Tensor:
        """Sum of ``tensor`` over processes (in place where distributed)."""
        if self.distributed:
            moved = tensor.to(self.device)
            torch.distributed.all_reduce(moved)
            if moved is not tensor:
                tensor.copy_(moved)
        return tensor

    def sum_gradients(self, parameters: Sequence[torch.nn.Parameter], extra: float = 0.0) -> float:
        """Sum the gradients over processes in one message (a missing gradient counts as zero);
        ``extra`` (e.g. this process's part of the loss) rides along and its sum is returned."""
        if not self.distributed:
            return extra
        parameters = list(parameters)
        flat = torch.cat([
            (p.grad if p.grad is not None else torch.zeros_like(p)).reshape(-1).to(torch.float64)
            for p in parameters
        ] + [torch.tensor([extra], dtype=torch.float64, device=parameters[0].device if parameters else None)])
        self.sum(flat)
        start = 0
        for p in parameters:
            n = p.numel()
            p.grad = flat[start:start + n].view_as(p).to(p.dtype)
            start += n
        return float(flat[-1])

    def union(self, names: List[str]) -> List[str]:
        """Sorted union of ``names`` over processes."""
        if not self.distributed:
            return sorted(set(names))
        gathered = [None] * self.size
        torch.distributed.all_gather_object(gathered, sorted(set(names)))
        return sorted(set().union(*gathered))

    def barrier(self) -> None:
        if self.distributed:
            torch.distributed.barrier()

    def close(self) -> None:
        """Tear the process group down before the interpreter exits: left to exit-time
        destructors, gloo's threads can abort a process that has finished its work."""
        if self.distributed and torch.distributed.is_initialized():
            torch.distributed.destroy_process_group()
