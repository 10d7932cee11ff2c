"""Readouts from the even scalars (0e) of node features."""

import torch
from e3nn import o3
from torch import nn

from ..o3 import Linear


class LinearReadout(nn.Module):
    """A linear map from the 0e channels to one 0e value per atom (other irreps ignored)."""

    def __init__(self, irreps_in: o3.Irreps):
        super().__init__()
        self.linear = Linear(irreps_in, o3.Irreps("0e"))

    def forward(self, h: torch.Tensor) -> torch.Tensor:
        return self.linear(h).squeeze(-1)


class MLPReadout(nn.Module):
    """0e channels -> hidden 0e (SiLU) -> one 0e value per atom."""

    def __init__(self, irreps_in: o3.Irreps, hidden: int):
        super().__init__()
        self.linear1 = Linear(irreps_in, o3.Irreps(f"{hidden}x0e"))
        self.linear2 = Linear(o3.Irreps(f"{hidden}x0e"), o3.Irreps("0e"))

    def forward(self, h: torch.Tensor) -> torch.Tensor:
        return self.linear2(torch.nn.functional.silu(self.linear1(h))).squeeze(-1)
