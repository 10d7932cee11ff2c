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


class RadialTable(nn.Module):
    """A smooth function of the edge length, f: (E,) -> (E, C), as a table of cubic pieces.

    Built once from ``fn`` (evaluated in float64) on K equal intervals of [0, r_max]: each piece
    is the cubic Hermite interpolant of f and f' at its two ends, so the table and its derivative
    are continuous, and forces taken from it by autograd are exactly the derivative of the
    tabulated energy (MD with it conserves energy). K grows from 64, by powers of two, until at
    points between the knots both the values and the derivatives differ from ``fn``'s by at most
    ``tolerance`` times their largest magnitude (the error of a cubic Hermite piece falls as K⁻⁴,
    of its derivative as K⁻³, which sets each step, at most 8×). Beyond r_max the table is zero,
    as are the radial networks there (their basis carries the cutoff envelope).

    For inference: one lookup and a cubic per edge replace the radial basis and an MLP per
    layer, their matmuls and activations and, for forces, the backward pass through them.
    ``fn`` must be smooth on [0, r_max] (sin(k r)/r is, at r = 0 too).
    """

    def __init__(self, fn, r_max: float, dtype: torch.dtype, tolerance: float = 1e-7, device=None,
                 max_bytes: int = 64 * 2**20):
        super().__init__()
        self.r_max, self.tolerance = float(r_max), float(tolerance)
        intervals, itemsize = 64, torch.empty((), dtype=dtype).element_size()
        while True:
            coeffs, error = self._build(fn, intervals)
            if error <= self.tolerance:
                break
            # the error falls as K⁻³ (the slopes'): towards the K that should meet the tolerance,
            # at most 8× at a time (coarse tables are not yet on that law)
            factor = min(8, max(2, 2 ** math.ceil(math.log2(1.1 * (error / self.tolerance) ** (1 / 3)))))
            if factor * coeffs.numel() * itemsize > max_bytes:
                raise ValueError(f"a radial table within relative error {tolerance:g} needs more than "
                                 f"{max_bytes / 2**20:.0f} MiB ({error:.2g} with {intervals} intervals)")
            intervals *= factor
        self.intervals, self.error = intervals, error
        self.register_buffer("coeffs", coeffs.to(dtype=dtype, device=device), persistent=False)

    def _build(self, fn, intervals: int):
        """Power-form coefficients (K, 4, C) of the pieces, f = c0 + c1 s + c2 s² + c3 s³ with s
        in [0, 1] along the piece, and the largest relative error of values and derivatives."""
        h = self.r_max / intervals
        knots = torch.linspace(0.0, self.r_max, intervals + 1, dtype=torch.float64)
        # the Bessel basis is 0/0 at r = 0 (with a finite limit): value and slope there are
        # extrapolated from r = ε and 2ε (errors O(ε³) and O(ε²))
        eps = 1e-2 * h
        knots[0] = eps
        knots = torch.cat([torch.tensor([2 * eps], dtype=torch.float64), knots])
        with torch.no_grad():
            f, df = torch.func.jvp(fn, (knots,), (torch.ones_like(knots),))
        f = torch.cat([((4 * f[1] - f[0]) / 3)[None], f[2:]])
        df = torch.cat([(2 * df[1] - df[0])[None], df[2:]])
        f0, f1, m0, m1 = f[:-1], f[1:], h * df[:-1], h * df[1:]
        coeffs = torch.stack([f0, m0, 3 * (f1 - f0) - 2 * m0 - m1, 2 * (f0 - f1) + m0 + m1], dim=1)
        # checked between the knots, where a piece is furthest from them
        s = torch.tensor([0.25, 0.5, 0.75], dtype=torch.float64)
        r = (h * torch.arange(intervals, dtype=torch.float64)[:, None] + h * s).flatten()
        with torch.no_grad():
            exact, exact_d = torch.func.jvp(fn, (r,), (torch.ones_like(r),))
        c = coeffs.repeat_interleave(len(s), dim=0)
        t = s.repeat(intervals)[:, None]
        value = _cubic(c, t)
        slope = ((3 * c[:, 3] * t + 2 * c[:, 2]) * t + c[:, 1]) / h
        error = max(float((value - exact).abs().max() / f.abs().max().clamp_min(1e-300)),
                    float((slope - exact_d).abs().max() / df.abs().max().clamp_min(1e-300)))
        return coeffs, error

    def forward(self, r: torch.Tensor) -> torch.Tensor:  # (E,) -> (E, C)
        t = r * (self.intervals / self.r_max)
        # (a NaN length, of two atoms on one spot, stays NaN in the value, not a bad index)
        piece = t.floor().clamp(0, self.intervals - 1).nan_to_num(0.0).long()
        s = (t - piece)[:, None]
        return _cubic(self.coeffs[piece], s) * (r < self.r_max)[:, None]


def _cubic(c: torch.Tensor, s: torch.Tensor) -> torch.Tensor:
    """c0 + c1 s + c2 s² + c3 s³ (Horner) for coefficients c (E, 4, C) and positions s (E, 1)."""
    return ((c[:, 3] * s + c[:, 2]) * s + c[:, 1]) * s + c[:, 0]
