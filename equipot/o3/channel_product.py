"""Channel-wise ("uuu") tensor products of two node features in a few dense operations.

The node products of :class:`equipot.nn.interaction.ProductBasis` are, per atom n and
channel u, a weighted sum over paths p = (l1, l2 → l3):

    out[n, u, k] = Σ_p c_p w[n, p, u] Σ_ij C_p[i, j, k] a[n, u, i] b[n, u, j]

with C_p the Clebsch–Gordan coefficients and c_p e3nn's path normalisation. e3nn's
TensorProduct runs every path as its own handful of small operations, and again in the
first and second backward passes (forces, then the force loss): a layer at lmax 2 makes
hundreds of kernel calls for it. Here all paths are done at once:

* ``outer``: the per-channel outer product a ⊗ b (all D1·D2 pairs of components) times one
  constant matrix holding every path's coefficients, then the weights, then a constant 0/1
  matrix that sums the paths of each output irrep;
* ``trace`` (every path ends in a scalar, as in a last layer that passes on scalars only):
  C_p is a multiple of the identity, so only elementwise products of matching blocks are
  formed, and summed by one constant matrix.

``tests/test_o3.py`` checks values and first and second derivatives against e3nn's
TensorProduct with the same instructions and weight layout; ``benchmarks/kernels.py
products`` times both.
"""

from typing import List, Sequence

import torch
from e3nn import o3
from torch import nn


class ChannelProduct(nn.Module):
    """e3nn's ``TensorProduct(irreps1, irreps2, irreps_out, instructions, shared_weights=False,
    internal_weights=False)`` for weighted "uuu" instructions and one multiplicity throughout."""

    def __init__(self, irreps1, irreps2, irreps_out, instructions: Sequence[tuple]):
        super().__init__()
        self.irreps_in1, self.irreps_in2, self.irreps_out = o3.Irreps(irreps1), o3.Irreps(irreps2), o3.Irreps(irreps_out)
        self.shared_weights = self.internal_weights = False  # as e3nn's: the weights are an input
        muls = {mul for irreps in (self.irreps_in1, self.irreps_in2, self.irreps_out) for mul, _ in irreps}
        if len(muls) != 1:
            raise ValueError(f"ChannelProduct needs one multiplicity throughout, got {self.irreps_in1}, "
                             f"{self.irreps_in2} -> {self.irreps_out}")
        if not instructions:
            raise ValueError("ChannelProduct needs at least one path")
        for ins in instructions:
            if tuple(ins[3:5]) != ("uuu", True):
                raise ValueError(f"ChannelProduct supports weighted 'uuu' paths only, got {ins}")
        # e3nn's own bookkeeping gives each path's normalisation (path_weight), so both agree
        reference = o3.TensorProduct(self.irreps_in1, self.irreps_in2, self.irreps_out, instructions,
                                     shared_weights=False, internal_weights=False)
        self.mul = muls.pop()
        self.num_paths = len(reference.instructions)
        self.weight_numel = self.num_paths * self.mul
        self.dims1 = [ir.dim for _, ir in self.irreps_in1]
        self.dims2 = [ir.dim for _, ir in self.irreps_in2]
        self.dims_out = [ir.dim for _, ir in self.irreps_out]
        start1, start2, start_out = _starts(self.dims1), _starts(self.dims2), _starts(self.dims_out)
        d2_total = sum(self.dims2)
        paths = []
        for ins in reference.instructions:
            ir1, ir2, ir3 = self.irreps_in1[ins.i_in1].ir, self.irreps_in2[ins.i_in2].ir, self.irreps_out[ins.i_out].ir
            cg = o3.wigner_3j(ir1.l, ir2.l, ir3.l, dtype=torch.float64) * ins.path_weight
            paths.append((ins.i_in1, ins.i_in2, ins.i_out, cg))
        # trace: every path l x l -> 0 with C = c·identity (dot products of matching blocks)
        self.trace = all(cg.shape[2] == 1 and cg.shape[0] == cg.shape[1]
                         and torch.allclose(cg[:, :, 0], cg[0, 0, 0] * torch.eye(cg.shape[0], dtype=torch.float64))
                         for _, _, _, cg in paths)
        columns = sum(cg.shape[2] for *_, cg in paths)
        path_of_column: List[int] = []
        rows = sum(cg.shape[0] for *_, cg in paths) if self.trace else sum(self.dims1) * d2_total
        coupling = torch.zeros(rows, columns if not self.trace else self.num_paths, dtype=torch.float64)
        summing = torch.zeros(columns, sum(self.dims_out), dtype=torch.float64)
        row, column = 0, 0
        self.blocks = []  # trace: (block of a, block of b) per path
        for p, (i1, i2, i_out, cg) in enumerate(paths):
            d1, d2, d3 = cg.shape
            if self.trace:
                self.blocks.append((i1, i2))
                coupling[row:row + d1, p] = cg[0, 0, 0]
                row += d1
            else:
                for i in range(d1):
                    r = (start1[i1] + i) * d2_total + start2[i2]
                    coupling[r:r + d2, column:column + d3] = cg[i]
            for k in range(d3):
                summing[column + k, start_out[i_out] + k] = 1.0
                path_of_column.append(p)
            column += d3
        dtype = torch.get_default_dtype()
        self.register_buffer("coupling", coupling.to(dtype), persistent=False)
        self.register_buffer("summing", summing.to(dtype), persistent=False)
        self.register_buffer("path_of_column", torch.tensor(path_of_column, dtype=torch.long), persistent=False)
        self.same_blocks = self.trace and self.irreps_in1 == self.irreps_in2 and [i for i, _ in self.blocks] == [
            j for _, j in self.blocks] == list(range(len(self.irreps_in1)))

    def forward(self, x1: torch.Tensor, x2: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
        n, u = x1.shape[0], self.mul
        a, b = _channels_first(x1, self.dims1, u), _channels_first(x2, self.dims2, u)  # (n, u, D)
        w = weight.reshape(n, self.num_paths, u).transpose(1, 2)  # (n, u, paths)
        if self.trace:
            if self.same_blocks:  # the blocks are a's and b's own, in order: one product
                products = a * b
            else:
                sa, sb = _starts(self.dims1), _starts(self.dims2)
                products = torch.cat([a[:, :, sa[i]:sa[i] + self.dims1[i]] * b[:, :, sb[j]:sb[j] + self.dims2[j]]
                                      for i, j in self.blocks], dim=2)
            out = (products @ self.coupling.to(x1.dtype)) * w  # (n, u, paths): one column per path
        else:
            outer = (a.unsqueeze(3) * b.unsqueeze(2)).reshape(n, u, -1)  # (n, u, D1·D2)
            out = (outer @ self.coupling.to(x1.dtype)) * w.index_select(2, self.path_of_column)
        out = out @ self.summing.to(x1.dtype)  # (n, u, D_out)
        if len(self.dims_out) == 1:
            return out.reshape(n, u * self.dims_out[0])
        return torch.cat([part.reshape(n, u * d) for part, d in zip(out.split(self.dims_out, dim=2), self.dims_out)],
                         dim=1)


def _starts(dims: Sequence[int]) -> List[int]:
    out, s = [], 0
    for d in dims:
        out.append(s)
        s += d
    return out


def _channels_first(x: torch.Tensor, dims: Sequence[int], mul: int) -> torch.Tensor:
    """e3nn's layout (each irrep's block as (mul, dim)) -> (n, mul, Σ dim)."""
    n = x.shape[0]
    if len(dims) == 1:
        return x.reshape(n, mul, dims[0])
    return torch.cat([part.reshape(n, mul, d) for part, d in zip(x.split([mul * d for d in dims], dim=1), dims)],
                     dim=2)
