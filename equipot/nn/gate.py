"""Gated nonlinearity for mixed-parity irreps."""

import torch
from e3nn import nn as enn
from e3nn import o3


def make_gate(irreps_out: o3.Irreps) -> enn.Gate:
    """Gate whose output is ``irreps_out``.

    Even scalars pass through SiLU, odd scalars through tanh (an odd function, so the
    parity is kept); every non-scalar irrep is multiplied by its own sigmoid gate, an
    extra even scalar computed from the input.
    """
    irreps_out = o3.Irreps(irreps_out)
    scalars = o3.Irreps([(m, ir) for m, ir in irreps_out if ir.l == 0])
    gated = o3.Irreps([(m, ir) for m, ir in irreps_out if ir.l > 0])
    acts = [torch.nn.functional.silu if ir.p == 1 else torch.tanh for _, ir in scalars]
    gates = o3.Irreps([(m, "0e") for m, _ in gated])
    gate = enn.Gate(scalars, acts, gates, [torch.sigmoid] * len(gates), gated)
    if gate.irreps_out != irreps_out:
        raise ValueError(f"irreps {irreps_out} must list all scalars before the other irreps")
    return gate
