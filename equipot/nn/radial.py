"""Radial basis of edge lengths: Bessel functions times a smooth cutoff envelope."""

import math

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
