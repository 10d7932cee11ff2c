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

In a compiled inference graph (:mod:`equipot.model.compiled`) the outer form is instead traced
as a straight sum of its nonzero terms (:class:`sparse_products`), on features laid out
(atoms, components, channels): the coupling matrix is nearly all zeros at higher l (353 nonzeros
of 256 × 99 for A up to l = 3 into l <= 3), and Inductor turns each output component into one
loop of vector multiply-adds over contiguous channels. With edge harmonics to l = 3
(``model.sh_lmax: 3``, lmax 1, 32 channels) the 960-atom energy + forces step took 118 against
296 ms (compiled, radial tables, interleaved in one process on the EPYC machine with both cores
busy; the products' kernels 17 ms of it, against 137 ms of dense matrix products), for a longer
cold compile (about 4.5 minutes against 1-1.5). A training graph traced so was slower (50
against 43 ms a step of 5 acac structures) and took 10 minutes to compile, and a custom
operator running each contraction as its own small compiled kernel was slower still (85 against
52 ms: dozens of calls a step), so training keeps the dense form.

``tests/test_o3.py`` checks values and first and second derivatives (of both forms) against e3nn's
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
        if not self.trace:
            self._build_terms(coupling, summing, path_of_column, columns)
        self.same_blocks = self.trace and self.irreps_in1 == self.irreps_in2 and [i for i, _ in self.blocks] == [
            j for _, j in self.blocks] == list(range(len(self.irreps_in1)))

    def forward(self, x1: torch.Tensor, x2: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
        n, u = x1.shape[0], self.mul
        if _SPARSE[0] and not self.trace:
            # m-major (atoms, components, channels): each term reads rows of contiguous channels
            # (the layout the Linear layers' products come out in before their turn to e3nn's)
            a, b = _channels_first(x1, self.dims1, u), _channels_first(x2, self.dims2, u)
            out = _Contract.apply(self, 0, a.transpose(1, 2), b.transpose(1, 2),
                                  weight.reshape(n, self.num_paths, u))  # (n, D_out, u)
            return torch.cat([part.transpose(1, 2).reshape(n, u * d)
                              for part, d in zip(out.split(self.dims_out, dim=1), self.dims_out)], dim=1)
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

    def _build_terms(self, coupling, summing, path_of_column: List[int], columns: int) -> None:
        """The nonzero coupling entries as terms (output k, i of a, j of b, path p, value): the
        product is the 4-linear form F(g, a, b, w) = Σ value·g[k]·a[i]·b[j]·w[p], the output its
        derivative in g, and each gradient its derivative in another slot: the same terms, listed
        per index of that slot with the other three indices (``term_lists[slot][index]``)."""
        d2 = sum(self.dims2)
        out_of_column = summing[:columns].argmax(1).tolist()
        terms = [(out_of_column[c], r // d2, r % d2, path_of_column[c], float(coupling[r, c]))
                 for r, c in torch.nonzero(coupling[:, :columns]).tolist()]
        sizes = (sum(self.dims_out), sum(self.dims1), d2, self.num_paths)
        self.term_lists: List[List[List[tuple]]] = []
        for slot, size in enumerate(sizes):
            lists: List[List[tuple]] = [[] for _ in range(size)]
            for term in terms:
                lists[term[slot]].append(tuple(term[t] for t in range(4) if t != slot) + (term[4],))
            self.term_lists.append(lists)
        self.num_terms = len(terms)


# the outer form as a sum of its nonzero terms: on while equipot.model.compiled traces an inference
# graph, where Inductor makes each output row one loop of vector multiply-adds and the dense
# coupling matrix (at l <= 3, 353 nonzeros of 25 344) is not multiplied; off in eager mode, where
# every term would be its own tensor operation, and for training graphs (see CompiledPotential)
_SPARSE = [False]


class sparse_products:
    """Within this context, ChannelProduct's outer form sums its nonzero terms (see _build_terms)."""

    def __enter__(self):
        self._before, _SPARSE[0] = _SPARSE[0], True

    def __exit__(self, *exc):
        _SPARSE[0] = self._before


class _Contract(torch.autograd.Function):
    """Derivative of the 4-linear form of a ChannelProduct in one slot (0: output, 1: a, 2: b,
    3: weights), given the three others in slot order, each (atoms, its indices, channels). Its
    gradients are the same contraction in other slots, so derivatives of any order are gathers."""

    @staticmethod
    def forward(ctx, product, slot: int, x, y, z):
        ctx.product, ctx.slot = product, slot
        ctx.save_for_backward(x, y, z)
        return _contract(product, slot, x, y, z)

    @staticmethod
    def backward(ctx, grad):
        product, slot = ctx.product, ctx.slot
        values = dict(zip([t for t in range(4) if t != slot], ctx.saved_tensors))
        values[slot] = grad
        grads = []
        for q, t in enumerate(t for t in range(4) if t != slot):
            if ctx.needs_input_grad[2 + q]:
                grads.append(_Contract.apply(product, t, *[values[r] for r in range(4) if r != t]))
            else:
                grads.append(None)
        return (None, None, *grads)


def _contract(product: ChannelProduct, slot: int, x, y, z):
    """Each output row a straight sum of its terms, with the indices and values as constants: a
    compiler turns it into one loop over the rows with every term a vector multiply-add."""
    terms = product.term_lists[slot]
    xs, ys, zs = x.unbind(1), y.unbind(1), z.unbind(1)
    rows = []
    for row in terms:
        total = None
        for i, j, p, value in row:
            term = xs[i] * ys[j] * zs[p] * value
            total = term if total is None else total + term
        rows.append(total if total is not None else torch.zeros_like(xs[0]))
    return torch.stack(rows, dim=1)


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
