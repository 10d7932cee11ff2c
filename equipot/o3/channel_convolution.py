"""Neighbour sum of channel-wise ("uvu") tensor products of any node features with the
spherical harmonics of the edges.

For a path l1 ⊗ l2 → l3 with per-edge, per-channel weights w, e3nn's product summed over
the edges into atom n is

    A_n[u, k] = c Σ_{e→n} w_e[u] Σ_ij C_ijk x_src(e)[u, i] Y_e[j]
              = c Σ_ij C_ijk M_n[u, i, j],   M_n[u, i, j] = Σ_{e→n} (w_e[u] x_src(e)[u, i]) Y_e[j]

with C the Clebsch–Gordan coefficients and c e3nn's normalisation. The Clebsch–Gordan
contraction is constant, so it moves from the edges to the atoms: per edge only
w·x[src] is formed; M is, per atom, one small matrix product of its (neighbours × u·i) block
with its (neighbours × j) block of harmonics, done for all atoms as a batched matmul over a
padded (atoms, slots) table (:func:`~equipot.o3.neighbour_slots`). The per-edge outer
products and the per-edge messages that e3nn's TensorProduct writes and ``index_add`` reads
back never exist. Paths are grouped by their harmonic l2, one batched matmul per group.

Inside, features are m-major, (i, u) instead of e3nn's (u, i): the atoms' features are turned
once, before the gather onto the edges, and the outputs once, per atom, after the contraction,
so every per-edge operation (and its derivative) runs along the contiguous channel axis. In
e3nn's layout Inductor compiled the per-edge products and their derivatives into loops of
strided gathers with an integer division per element.
``tests/test_o3.py`` checks the result and its first and second derivatives against e3nn;
``benchmarks/kernels.py`` times both.
"""

from math import sqrt
from typing import List, Sequence, Tuple

import torch
from e3nn import o3
from torch import nn

from .scalar_convolution import NeighbourTable


class ChannelConvolution(nn.Module):
    """Σ over the edges into each atom of e3nn's ``TensorProduct(irreps_in, irreps_sh,
    irreps_out, instructions, shared_weights=False, internal_weights=False)``, "uvu" paths
    with one instruction per output irrep (as :func:`equipot.nn.interaction.uvu_instructions`
    makes them), and e3nn's weight layout."""

    def __init__(self, irreps_in, irreps_sh, irreps_out, instructions: Sequence[Tuple]):
        super().__init__()
        self.irreps_in, self.irreps_sh, self.irreps_out = (o3.Irreps(irreps_in), o3.Irreps(irreps_sh),
                                                           o3.Irreps(irreps_out))
        muls = {mul for mul, _ in self.irreps_in}
        if len(muls) != 1:
            raise ValueError(f"ChannelConvolution needs one multiplicity for all input irreps, got {self.irreps_in}")
        if any(mul != 1 for mul, _ in self.irreps_sh):
            raise ValueError(f"spherical harmonics must have multiplicity 1, got {self.irreps_sh}")
        self.mul = muls.pop()
        if sorted(ins[2] for ins in instructions) != list(range(len(self.irreps_out))):
            raise ValueError("ChannelConvolution needs exactly one instruction per output irrep")
        sh_slices = self.irreps_sh.slices()
        self.num_paths = len(instructions)
        self.weight_numel = self.num_paths * self.mul
        # groups of paths sharing a harmonic block: (sh slice, [(path, input slice, d1, output, d3,
        # name of the Clebsch–Gordan buffer, (contraction kind, constant)), ...])
        groups: dict = {}
        for k, (i_in, i_sh, i_out, *mode) in enumerate(instructions):
            if tuple(mode[:2]) != ("uvu", True):
                raise ValueError(f"ChannelConvolution supports weighted 'uvu' paths only, got {mode}")
            ir1, ir2, ir3 = self.irreps_in[i_in].ir, self.irreps_sh[i_sh].ir, self.irreps_out[i_out].ir
            if ir3 not in ir1 * ir2 or self.irreps_out[i_out].mul != self.mul:
                raise ValueError(f"path {ir1} x {ir2} -> {self.irreps_out[i_out]} is not a channel-wise product")
            groups.setdefault(i_sh, []).append((k, i_in, ir1, i_out, ir3))
        self.groups: List[Tuple[slice, list]] = []
        for i_sh, paths in sorted(groups.items()):
            entries = []
            for k, i_in, ir1, i_out, ir3 in paths:
                # e3nn, component normalisation, one path per output: sqrt(d3) · C (wigner_3j)
                cg = o3.wigner_3j(ir1.l, self.irreps_sh[i_sh].ir.l, ir3.l, dtype=torch.float64) * sqrt(ir3.dim)
                name = f"cg_{k}"
                self.register_buffer(name, cg.to(torch.get_default_dtype()), persistent=False)
                # the input's rows in the m-major features (atoms, Σ 2l+1, u)
                start = sum(ir.dim for _, ir in self.irreps_in[:i_in])
                rows = slice(start, start + ir1.dim)
                entries.append((k, rows, ir1.dim, i_out, ir3.dim, name, _structure(cg)))
            self.groups.append((sh_slices[i_sh], entries))
        self.out_slices = self.irreps_out.slices()

    def forward(
        self,
        x: torch.Tensor,  # (N, irreps_in.dim)
        sh: torch.Tensor,  # (E, irreps_sh.dim)
        weight: torch.Tensor,  # (E, weight_numel)
        edge_src: torch.Tensor,
        edge_dst: torch.Tensor,
        table: NeighbourTable,  # neighbour_slots(edge_dst, N)
    ) -> torch.Tensor:  # (N, irreps_out.dim)
        n, e, u = x.shape[0], sh.shape[0], self.mul
        # m-major: (atoms, Σ 2l+1, u), turned per atom, then the only gather onto the edges
        x_m = torch.cat([x[:, s].view(n, u, ir.dim).transpose(1, 2)
                         for s, (_, ir) in zip(self.irreps_in.slices(), self.irreps_in)], dim=1)
        xs = x_m[edge_src]  # (E, Σ 2l+1, u)
        # one view per path: unbind's backward stacks the gradients, where slicing would fill a
        # zero tensor of the weights' size per path
        w = weight.view(e, self.num_paths, u).unbind(1)
        rows = n if table.rows is None else table.rows.shape[0]
        where = (table.edge_row, table.edge_slot)
        outputs: List[torch.Tensor] = [None] * len(self.out_slices)
        for sh_slice, entries in self.groups:
            y = sh[:, sh_slice]
            if y.shape[1] == 1:  # l2 = 0: a plain sum over the edges, no table needed
                # Y_0 goes on the weights (E, u), not on the wider weighted features
                z = torch.cat([((w[k] * y)[:, None, :] * xs[:, r]).reshape(e, d1 * u)
                               for k, r, d1, _, _, _, _ in entries], dim=1)
                m = z.new_zeros(n, z.shape[1]).index_add(0, edge_dst, z).unsqueeze(1)
                if table.rows is not None:
                    m = m[table.rows]
            else:
                # per edge: w_p[u] · x_src[i, u] for every path of this harmonic, side by side
                z = torch.cat([(w[k][:, None, :] * xs[:, r]).reshape(e, d1 * u)
                               for k, r, d1, _, _, _, _ in entries], dim=1)
                padded_z = z.new_zeros(rows, table.num_slots, z.shape[1]).index_put(where, z)
                padded_y = y.new_zeros(rows, table.num_slots, y.shape[1]).index_put(where, y)
                m = torch.bmm(padded_y.transpose(1, 2), padded_z)  # (rows, j, Σ i·u)
            start = 0
            for k, r, d1, i_out, d3, name, (kind, c) in entries:
                block = m[:, :, start:start + d1 * u].reshape(rows, -1, d1, u)  # (rows, j, i, u)
                start += d1 * u
                out = _contract(block, kind, c, getattr(self, name).to(x.dtype))  # (rows, u, k)
                outputs[i_out] = out.reshape(rows, u * d3)
        out = torch.cat(outputs, dim=1)
        if table.rows is not None:
            out = out.new_zeros(n, out.shape[1]).index_copy(0, table.rows, out)
        return out


def _structure(cg: torch.Tensor) -> Tuple[str, float]:
    """Which cheap contraction a (normalised) Clebsch–Gordan block (i, j, k) allows, and its
    constant: a multiple of the identity in (j, k) when l1 = 0, in (i, k) when l2 = 0, in
    (i, j) when l3 = 0; otherwise the general einsum."""
    d1, d2, d3 = cg.shape
    c = float(cg.flatten()[cg.flatten().abs().argmax()])
    if d1 == 1 and torch.allclose(cg[0], c * torch.eye(d2, dtype=cg.dtype)):
        return "identity_left", c
    if d2 == 1 and torch.allclose(cg[:, 0], c * torch.eye(d1, dtype=cg.dtype)):
        return "identity_right", c
    if d3 == 1 and d1 == d2 and torch.allclose(cg[:, :, 0], c * torch.eye(d1, dtype=cg.dtype)):
        return "trace", c
    return "general", 1.0


def _contract(block: torch.Tensor, kind: str, c: float, cg: torch.Tensor) -> torch.Tensor:
    """Σ_ij C[i, j, k] block[r, j, i, u] -> (r, u, k), with the shortcut ``kind`` allows."""
    if kind == "identity_left":  # l1 = 0: C[0, j, k] = c δ_jk
        return block[:, :, 0].transpose(1, 2) * c
    if kind == "identity_right":  # l2 = 0: C[i, 0, k] = c δ_ik
        return block[:, 0].transpose(1, 2) * c
    if kind == "trace":  # l3 = 0, l1 = l2: C[i, j, 0] = c δ_ij
        return torch.diagonal(block, dim1=1, dim2=2).sum(-1, keepdim=True) * c
    return torch.einsum("rjiu,ijk->ruk", block, cg)
