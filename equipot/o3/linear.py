"""e3nn's equivariant linear layer with a forward pass of fewer operations.

``o3.Linear`` mixes the channels of each irrep: output irrep k gets
α_k Σ_{inputs i of the same irrep} W_ik^T x_i, with x_i of shape (atoms, mul_i, 2l+1), W_ik of
shape (mul_i, mul_k) and α_k = (Σ_i mul_i)^(-1/2). e3nn generates code for it that goes through
einsum. Traced with symbolic sizes (``make_fx`` in :mod:`equipot.model.compiled`, where every
layer is traced through a force pass and that pass's own derivative), such a layer took 0.4–1.3 s
of the trace and 82–218 graph nodes, against 0.2–0.4 s and 59–165 for the form here, per output
irrep one matrix product x W over the channel axis (for l > 0 with the rows of all atoms and m
together: a transpose each side of the product, because a product per atom with the weights
broadcast over atoms is a batched matmul of tiny matrices, 3–7x slower on the AMD machine and in
the compiled energy + forces of the lmax 1 / 16-channel model at 960 atoms 72 against 62 ms),
then one concatenation; evaluated eagerly it takes 0.85–1.15x e3nn's time
(``benchmarks/linear.py``, docs/benchmarks/linear.md). The weights,
their layout and normalisation are e3nn's (the module *is* an ``o3.Linear``, so model files are
unchanged); ``tests/test_o3.py`` checks values and first and second derivatives against e3nn.
"""

from typing import List, Tuple

import torch
from e3nn import o3


class Linear(o3.Linear):
    """``o3.Linear(irreps_in, irreps_out)`` with internal, shared weights and no biases (the
    only form equipot uses), evaluated by :meth:`forward` below instead of e3nn's generated
    code. Inputs of shape (..., irreps_in.dim).

    e3nn marks its Linear for TorchScript; this forward is not scriptable (equipot never
    scripts: compiled evaluation traces with make_fx, see equipot.model.compiled)."""

    def __init__(self, irreps_in, irreps_out):
        super().__init__(irreps_in, irreps_out)
        slices_in, slices_out = self.irreps_in.slices(), self.irreps_out.slices()
        offsets, offset = [], 0
        for ins in self.instructions:
            offsets.append(offset)
            offset += ins.path_shape[0] * ins.path_shape[1]
        # per output irrep: its width, its l's dimension, and the (input slice, weight slice,
        # shape, α) of every instruction that feeds it
        self._plan: List[Tuple[int, int, List[Tuple[slice, int, Tuple[int, int], float]]]] = []
        for k, (mul, ir) in enumerate(self.irreps_out):
            if mul == 0:
                continue
            terms = [(slices_in[ins.i_in], off, ins.path_shape, ins.path_weight)
                     for ins, off in zip(self.instructions, offsets)
                     if ins.i_out == k and ins.path_shape[0] > 0]
            self._plan.append((slices_out[k].stop - slices_out[k].start, ir.dim, terms))

    def forward(self, features: torch.Tensor, weight=None, bias=None) -> torch.Tensor:
        if weight is not None or bias is not None:
            return super().forward(features, weight, bias)
        shape = features.shape[:-1]
        if self.irreps_in.dim == 0:  # nothing to mix: zeros, as e3nn gives
            return features.new_zeros(*shape, self.irreps_out.dim)
        x = features.reshape(-1, self.irreps_in.dim)
        n = x.shape[0]
        outs = []
        for width, d, terms in self._plan:
            if not terms:
                outs.append(x.new_zeros(n, width))
                continue
            # inputs of the same irrep side by side along the channels, their weights stacked
            xs = [x[:, s] for s, _, _, _ in terms]
            ws = [self.weight[off:off + a * b].view(a, b) * alpha for _, off, (a, b), alpha in terms]
            xi = xs[0] if len(xs) == 1 else torch.cat(xs, dim=1)
            w = ws[0] if len(ws) == 1 else torch.cat(ws, dim=0)
            if d == 1:
                outs.append(xi @ w)
            else:  # (mul_out, mul_in) @ (n, mul_in, d): the result is in e3nn's channel-major layout
                # one matrix product over all atoms and m (a transpose each side), not a
                # product per atom with the weights broadcast: that is a batched matmul of
                # n tiny matrices, 3-7x slower on AMD CPUs
                rows = xi.reshape(n, w.shape[0], d).transpose(1, 2).reshape(n * d, w.shape[0])
                outs.append((rows @ w).view(n, d, w.shape[1]).transpose(1, 2).reshape(n, width))
        if not outs:
            return x.new_zeros(*shape, self.irreps_out.dim)
        out = outs[0] if len(outs) == 1 else torch.cat(outs, dim=1)
        return out.reshape(*shape, self.irreps_out.dim)
