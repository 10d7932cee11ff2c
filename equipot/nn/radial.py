"""Radial basis of edge lengths: Bessel functions times a smooth cutoff envelope."""

import math
from typing import List

import torch
from torch import nn


class BesselBasis(nn.Module):
    """sqrt(2/r_max) sin(n π r / r_max) / r for n = 1..num_basis (r in Å).

    Every function vanishes at r_max; the frequencies are trainable, as in DimeNet.
    """

    def __init__(self, r_max: float, num_basis: int = 8, trainable: bool = True):
        super().__init__()
        self.r_max = float(r_max)
        freqs = math.pi / self.r_max * torch.arange(1, num_basis + 1, dtype=torch.get_default_dtype())
        if trainable:
            self.freqs = nn.Parameter(freqs)
        else:
            self.register_buffer("freqs", freqs)
        self.prefactor = math.sqrt(2.0 / self.r_max)

    def forward(self, r: torch.Tensor) -> torch.Tensor:  # (E,) -> (E, num_basis)
        r = r.unsqueeze(-1)
        return self.prefactor * torch.sin(self.freqs * r) / r


class PolynomialEnvelope(nn.Module):
    """Smooth cutoff u(x), x = r / r_max: u(0)=1 and u, u', u'' all vanish at x = 1.

    u(x) = 1 - (p+1)(p+2)/2 x^p + p(p+2) x^(p+1) - p(p+1)/2 x^(p+2), zero beyond r_max.
    Energies and forces are therefore continuous as a neighbour crosses the cutoff.
    """

    def __init__(self, r_max: float, p: int = 6):
        super().__init__()
        self.r_max, self.p = float(r_max), int(p)

    def forward(self, r: torch.Tensor) -> torch.Tensor:
        p = self.p
        x = r / self.r_max
        u = (
            1.0
            - 0.5 * (p + 1) * (p + 2) * x.pow(p)
            + p * (p + 2) * x.pow(p + 1)
            - 0.5 * p * (p + 1) * x.pow(p + 2)
        )
        return u * (x < 1.0)


class RadialEmbedding(nn.Module):
    """Bessel basis times envelope: (E,) edge lengths -> (E, num_basis)."""

    def __init__(self, r_max: float, num_basis: int = 8, envelope_p: int = 6):
        super().__init__()
        self.basis = BesselBasis(r_max, num_basis)
        self.envelope = PolynomialEnvelope(r_max, envelope_p)
        self.num_basis = num_basis

    def forward(self, r: torch.Tensor) -> torch.Tensor:
        return self.basis(r) * self.envelope(r).unsqueeze(-1)


class RadialNetwork(nn.Module):
    """MLP of the radial basis giving each edge its tensor-product weights (no biases).

    The function of e3nn's ``FullyConnectedNet(hs, silu)`` (weights N(0, 1) divided by
    sqrt(fan-in), SiLU scaled to unit second moment), with the scale factors applied to the
    small weight matrices instead of to every edge's activations: per edge only the matmuls
    and the SiLUs remain.
    """

    def __init__(self, sizes: List[int]):
        super().__init__()
        from e3nn.math import normalize2mom

        self.sizes = list(sizes)
        self.weights = nn.ParameterList([nn.Parameter(torch.randn(a, b)) for a, b in zip(sizes, sizes[1:])])
        act_scale = float(normalize2mom(torch.nn.functional.silu).cst)
        self.scales = [(1.0 if k == 0 else act_scale) / math.sqrt(a) for k, a in enumerate(sizes[:-1])]

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # (E, sizes[0]) -> (E, sizes[-1])
        last = len(self.weights) - 1
        for k, (w, scale) in enumerate(zip(self.weights, self.scales)):
            x = x @ (w * scale)
            if k < last:
                x = torch.nn.functional.silu(x)
        return x
