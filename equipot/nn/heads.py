"""Per-atom heads that read typed outputs from the last layer's node features.

Each head declares ``irreps_in`` and ``irreps_out``; tensors in, tensors out.
"""

import torch
from e3nn import o3
from torch import nn

from ..o3 import Linear


def _channels(irreps: o3.Irreps, ir: o3.Irrep) -> int:
    return sum(mul for mul, x in irreps if x == ir)


class IrrepsHead(nn.Module):
    """Node features -> per-atom values of ``irreps_out``.

    Scalars (0e and 0o) pass through a one-hidden-layer network whose activation keeps
    their parity (SiLU for 0e, the odd tanh for 0o); other irreps are linear in the
    features of the same irrep (equivariance allows nothing else without a gate).

    With ``gate_odd``, each hidden 0o unit is multiplied by a sigmoid of a learnt map of the
    0e features (an invariant in (0, 1) times a pseudoscalar is a pseudoscalar): without it an
    atom's 0o output depends on its 0o features alone, so the head cannot weigh atoms by their
    environment (a stereocentre against a CH3 group, say) and must leave that to the layers below.
    """

    def __init__(self, irreps_in: o3.Irreps, irreps_out: o3.Irreps, hidden: int, gate_odd: bool = False):
        super().__init__()
        self.irreps_in, self.irreps_out = o3.Irreps(irreps_in), o3.Irreps(irreps_out).simplify()
        scalars = [ir for _, ir in self.irreps_out if ir.l == 0]
        hidden_irreps = o3.Irreps([(hidden, ir) for ir in scalars])
        self.hidden = Linear(self.irreps_in, hidden_irreps) if scalars else None
        self.acts = [torch.nn.functional.silu if ir.p == 1 else torch.tanh for ir in scalars]
        self.hidden_irreps = hidden_irreps
        n_odd = sum(mul for mul, ir in hidden_irreps if ir == o3.Irrep("0o"))
        has_even = _channels(self.irreps_in, o3.Irrep("0e")) > 0
        # sigmoid gates of the hidden 0o units, from the 0e features
        self.odd_gate = Linear(self.irreps_in, o3.Irreps(f"{n_odd}x0e")) if (gate_odd and n_odd and has_even) else None
        # the last map: hidden scalars plus the raw non-scalar features -> irreps_out
        rest = o3.Irreps([(mul, ir) for mul, ir in self.irreps_in if ir.l > 0 and ir in self.irreps_out])
        self.rest_slices = [s for (mul, ir), s in zip(self.irreps_in, self.irreps_in.slices()) if ir.l > 0 and ir in self.irreps_out]
        self.out = Linear(hidden_irreps + rest, self.irreps_out)

    def forward(self, h: torch.Tensor) -> torch.Tensor:
        parts = []
        if self.hidden is not None:
            z = self.hidden(h)
            for (mul, ir), s, act in zip(self.hidden_irreps, self.hidden_irreps.slices(), self.acts):
                value = act(z[:, s])
                if ir.p == -1 and self.odd_gate is not None:
                    value = value * torch.sigmoid(self.odd_gate(h))
                parts.append(value)
        parts += [h[:, s] for s in self.rest_slices]
        return self.out(torch.cat(parts, dim=-1))


class SE3ScalarHead(nn.Module):
    """Node features -> one scalar per atom from both 0e and 0o channels.

    The 0e and 0o values are fed together into an ordinary network, so the result is
    invariant under proper rotations only: a reflection flips the 0o inputs and changes
    the output in a learnt, not merely sign-flipping, way.
    """

    def __init__(self, irreps_in: o3.Irreps, hidden: int):
        super().__init__()
        self.irreps_in = o3.Irreps(irreps_in)
        self.slices = [s for (mul, ir), s in zip(self.irreps_in, self.irreps_in.slices()) if ir.l == 0]
        n_in = sum(s.stop - s.start for s in self.slices)
        if _channels(self.irreps_in, o3.Irrep("0o")) == 0:
            raise ValueError("an SE(3) scalar head needs 0o features (model.parity: both)")
        self.mlp = nn.Sequential(nn.Linear(n_in, hidden), nn.SiLU(), nn.Linear(hidden, 1))

    def forward(self, h: torch.Tensor) -> torch.Tensor:
        return self.mlp(torch.cat([h[:, s] for s in self.slices], dim=-1))
