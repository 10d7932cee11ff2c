"""Neighbour sum of channel-wise products of scalar features with spherical harmonics.

For scalar inputs (0e, 0o) a "uvu" tensor product with the harmonics Y of the edge is just
``w_e[u, path] x_src[u] Y_e[m]`` (times e3nn's normalization constant), and the neighbour sum

    A_i[path, u, m] = Σ_{e: dst(e) = i} (w_e[u, path] x_src(e)[u]) Y_e[m]

is, per atom, a product of a (paths·channels × neighbours) matrix with a (neighbours × m)
one. Laying the edges of each atom out in a padded (atoms, slots) table turns the whole sum
into one batched matmul, so the per-edge tensor never has the width paths·channels·m that
e3nn's TensorProduct followed by ``index_add`` writes and reads back (benchmarks/kernels.py).
``tests/test_o3.py`` checks the result against e3nn.

The model no longer uses this kernel: :class:`~equipot.o3.ChannelConvolution` takes scalar
inputs too and is faster (docs/benchmarks/kernels.md, and the compiled energy + forces of a
model with scalar messages); it stays as the second reference in ``benchmarks/kernels.py``, and
this module keeps the neighbour table both kernels use.
"""

from math import sqrt
from typing import NamedTuple, Optional, Sequence, Tuple

import torch
from e3nn import o3
from torch import nn


class NeighbourTable(NamedTuple):
    """Where each edge sits in the padded (rows, slots) table of ScalarConvolution.

    A row per atom that receives edges (``rows``: their indices, or None when every atom
    does and row = atom); ``edge_row`` and ``edge_slot`` place each edge.
    """

    edge_row: torch.Tensor
    edge_slot: torch.Tensor
    num_slots: int
    rows: Optional[torch.Tensor]


def neighbour_slots(edge_dst: torch.Tensor, num_nodes: int) -> NeighbourTable:
    """For each edge its place among the edges of its destination atom (see NeighbourTable)."""
    if edge_dst.numel() == 0:
        empty = torch.zeros_like(edge_dst)
        return NeighbourTable(empty, empty, 0, None)
    counts = torch.bincount(edge_dst, minlength=num_nodes)
    order = torch.argsort(edge_dst, stable=True)
    first = torch.cumsum(counts, 0) - counts
    slot = torch.empty_like(edge_dst)
    slot[order] = torch.arange(edge_dst.numel(), device=edge_dst.device) - first[edge_dst[order]]
    has_edges = counts > 0
    if bool(has_edges.all()):
        return NeighbourTable(edge_dst, slot, int(counts.max()), None)
    # atoms without edges (ghosts a caller skipped) get no row of the padded table
    row_of_atom = torch.cumsum(has_edges, 0) - 1
    return NeighbourTable(row_of_atom[edge_dst], slot, int(counts.max()), torch.nonzero(has_edges).reshape(-1))


class ScalarConvolution(nn.Module):
    """Σ over the edges into each atom of TensorProduct(x[src], sh, weight), x scalars only.

    The same function as ``index_add`` over edges of ``e3nn.o3.TensorProduct(irreps_in,
    irreps_sh, irreps_out, instructions, shared_weights=False, internal_weights=False)``
    with "uvu" instructions, one per output irrep, and e3nn's weight layout.
    """

    def __init__(self, irreps_in, irreps_sh, irreps_out, instructions: Sequence[Tuple]):
        super().__init__()
        self.irreps_in, self.irreps_sh, self.irreps_out = (o3.Irreps(irreps_in), o3.Irreps(irreps_sh),
                                                           o3.Irreps(irreps_out))
        if any(ir.l != 0 for _, ir in self.irreps_in) or len({mul for mul, _ in self.irreps_in}) != 1:
            raise ValueError(f"ScalarConvolution needs scalar inputs of one multiplicity, got {self.irreps_in}")
        if any(mul != 1 for mul, _ in self.irreps_sh):
            raise ValueError(f"spherical harmonics must have multiplicity 1, got {self.irreps_sh}")
        self.mul = self.irreps_in[0].mul
        outputs = sorted(ins[2] for ins in instructions)
        if outputs != list(range(len(self.irreps_out))):
            raise ValueError("ScalarConvolution needs exactly one instruction per output irrep")
        blocks, self.sources = [], [None] * len(self.irreps_out)
        sh_slices = self.irreps_sh.slices()
        coefficient = []
        for k, (i_in, i_sh, i_out, *mode) in enumerate(instructions):
            if tuple(mode[:2]) != ("uvu", True):
                raise ValueError(f"ScalarConvolution supports weighted 'uvu' paths only, got {mode}")
            ir_in, ir_sh, ir_out = self.irreps_in[i_in].ir, self.irreps_sh[i_sh].ir, self.irreps_out[i_out].ir
            if ir_out != o3.Irrep(ir_sh.l, ir_in.p * ir_sh.p) or self.irreps_out[i_out].mul != self.mul:
                raise ValueError(f"path {ir_in} x {ir_sh} -> {self.irreps_out[i_out]} is not a scalar product")
            # e3nn: sqrt(component normalization / fan-in 1) times the Clebsch–Gordan of 0 x l -> l
            cg = o3.wigner_3j(0, ir_sh.l, ir_sh.l, dtype=torch.float64)[0]
            if not torch.allclose(cg, torch.eye(ir_sh.dim, dtype=torch.float64) * cg[0, 0]):
                raise AssertionError("unexpected Clebsch–Gordan coefficients for 0 x l -> l")
            coefficient.append(float(cg[0, 0]) * sqrt(ir_out.dim))
            blocks.append(i_in)
            self.sources[i_out] = (k, sh_slices[i_sh])
        self.num_paths = len(blocks)
        self.weight_numel = self.num_paths * self.mul
        self.register_buffer("block_of_path", torch.tensor(blocks, dtype=torch.long), persistent=False)
        self.register_buffer("coefficient", torch.tensor(coefficient).view(1, -1, 1), persistent=False)

    def forward(
        self,
        x: torch.Tensor,  # (N, irreps_in.dim) node scalars
        sh: torch.Tensor,  # (E, irreps_sh.dim)
        weight: torch.Tensor,  # (E, weight_numel)
        edge_src: torch.Tensor,
        table: NeighbourTable,  # neighbour_slots(edge_dst, N)
    ) -> torch.Tensor:  # (N, irreps_out.dim)
        n, e, mul, paths = x.shape[0], sh.shape[0], self.mul, self.num_paths
        # the constant goes on the atoms' features, before they are copied to the edges
        xs = x.view(n, -1, mul).index_select(1, self.block_of_path) * self.coefficient.to(x.dtype)  # (N, paths, mul)
        xw = xs[edge_src] * weight.view(e, paths, mul)
        width = paths * mul
        rows = n if table.rows is None else table.rows.shape[0]
        where = (table.edge_row, table.edge_slot)
        padded_x = x.new_zeros(rows, table.num_slots, width).index_put(where, xw.reshape(e, width))
        padded_y = sh.new_zeros(rows, table.num_slots, sh.shape[1]).index_put(where, sh)
        # (rows, m, paths·mul): the long dimension last suits the small matmuls best
        a = torch.bmm(padded_y.transpose(1, 2), padded_x).view(rows, -1, paths, mul)
        out = torch.cat([a[:, s, k, :].transpose(1, 2).reshape(rows, -1) for k, s in self.sources], dim=1)
        if table.rows is not None:
            out = out.new_zeros(n, out.shape[1]).index_copy(0, table.rows, out)
        return out
