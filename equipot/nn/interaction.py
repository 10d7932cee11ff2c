"""One equivariant message-passing layer (tensors in, tensors out).

Per edge (the only per-edge work): a channel-wise ("uvu") Clebsch–Gordan tensor product
of the neighbour's features with the spherical harmonics of the edge direction, weighted
by a radial network of the edge length. Per node: the messages are summed into atomic
features A_i, which are raised to higher body order by channel-wise products
A, A⊗A, A⊗A⊗A with species-dependent weights (as MACE does on nodes), mixed, passed
through a gated nonlinearity, and added to a species-dependent self-connection.

The first layer has no self-connection: its input is the species embedding, so a
self-connection would only add a learnt per-species constant, and an isolated atom
(no edges) would no longer have exactly the energy of its shift (E0 + mean residual).
Without it every layer maps "no neighbours" to zero features.
"""

from typing import List, Tuple

import torch
from e3nn import nn as enn
from e3nn import o3
from torch import nn

from ..o3 import ChannelConvolution, ChannelProduct, Linear, NeighbourTable
from .gate import make_gate
from .radial import RadialNetwork


def uvu_instructions(
    irreps_in: o3.Irreps, irreps_sh: o3.Irreps, allowed: List[o3.Irrep]
) -> Tuple[o3.Irreps, list]:
    """Channel-wise tensor product paths whose outputs are in ``allowed``; outputs sorted."""
    mid, instructions = [], []
    for i, (mul, ir_in) in enumerate(irreps_in):
        for j, (_, ir_sh) in enumerate(irreps_sh):
            for ir_out in ir_in * ir_sh:
                if ir_out in allowed:
                    instructions.append((i, j, len(mid), "uvu", True))
                    mid.append((mul, ir_out))
    mid = o3.Irreps(mid)
    mid_sorted, perm, _ = mid.sort()
    instructions = [(i, j, perm[k], mode, train) for i, j, k, mode, train in instructions]
    return mid_sorted, instructions


def uuu_instructions(irreps1: o3.Irreps, irreps2: o3.Irreps, irreps_out: o3.Irreps) -> list:
    """Channel-wise product paths from (irreps1, irreps2) into each irrep of irreps_out."""
    out = []
    for i, (mul1, ir1) in enumerate(irreps1):
        for j, (mul2, ir2) in enumerate(irreps2):
            for k, (mul3, ir3) in enumerate(irreps_out):
                if ir3 in ir1 * ir2 and mul1 == mul2 == mul3:
                    out.append((i, j, k, "uuu", True))
    return out


def channel_product(irreps1: o3.Irreps, irreps2: o3.Irreps, irreps_out: o3.Irreps, instructions: list) -> nn.Module:
    """The "uuu" product of the node features: our :class:`~equipot.o3.ChannelProduct` where it
    is faster than e3nn's TensorProduct (products into scalars only, and products of many
    paths; benchmarks/kernels.py products), e3nn's otherwise (few paths on many atoms)."""
    one_mul = len({mul for irreps in (irreps1, irreps2, irreps_out) for mul, _ in irreps}) == 1
    # decided from the paths, so that no product is built twice: a product into scalars is
    # ChannelProduct's dot-product (trace) form, l x l -> 0 having Clebsch–Gordan ∝ identity
    into_scalars = all(o3.Irreps(irreps_out)[ins[2]].ir.l == 0 for ins in instructions)
    if one_mul and instructions and (into_scalars or len(instructions) >= FUSED_MIN_PATHS):
        return ChannelProduct(irreps1, irreps2, irreps_out, instructions)
    return o3.TensorProduct(irreps1, irreps2, irreps_out, instructions, shared_weights=False, internal_weights=False)


FUSED_MIN_PATHS = 6


class ProductBasis(nn.Module):
    """Body order on nodes: sum of A, A⊗A, ... up to ``correlation`` factors of A.

    The weights of each product path depend on the species of the atom. Only the irreps of
    ``irreps_out`` (a subset of ``irreps``, default all) are returned: the last product
    computes just those, so a layer that passes on scalars only pays for scalars there.

    The products are channel-wise, so with ``mixing`` off a product of two copies of the same
    channel loses every coupling that is odd under exchange of its factors (1o ⊗ 1o → 1e is
    the cross product of a vector with itself, zero); a layer then cannot form a triple
    product of neighbour directions. With ``mixing`` on, each product's new factor is a learnt
    linear mix of A's channels (per irrep), A^(c+1) = A^(c) ⊗ (W_c A), and those couplings survive.
    """

    def __init__(self, irreps: o3.Irreps, num_species: int, correlation: int, irreps_out: o3.Irreps = None,
                 mixing: bool = False):
        super().__init__()
        irreps = o3.Irreps(irreps)
        self.irreps_out = irreps if irreps_out is None else o3.Irreps(irreps_out)
        slices = irreps.slices()
        wanted = {ir for _, ir in self.irreps_out}
        chosen = [i for i, (_, ir) in enumerate(irreps) if ir in wanted]
        if o3.Irreps([irreps[i] for i in chosen]) != self.irreps_out:
            raise ValueError(f"irreps_out {self.irreps_out} must be a sub-list of {irreps}")
        keep = torch.cat([torch.arange(slices[i].start, slices[i].stop) for i in chosen]) if chosen else torch.zeros(0, dtype=torch.long)
        self.register_buffer("keep", keep, persistent=False)
        self.select = self.irreps_out != irreps
        self.products = nn.ModuleList()
        self.weights = nn.ParameterList()
        self.mix = nn.ModuleList([Linear(irreps, irreps) for _ in range(correlation - 1)]) if mixing else None
        for c in range(correlation - 1):
            target = self.irreps_out if c == correlation - 2 else irreps
            tp = channel_product(irreps, irreps, target, uuu_instructions(irreps, irreps, target))
            self.products.append(tp)
            self.weights.append(nn.Parameter(torch.randn(num_species, tp.weight_numel)))

    def forward(self, a: torch.Tensor, species: torch.Tensor) -> torch.Tensor:
        total, power = self.project(a), a
        last = len(self.products) - 1
        for c, (tp, w) in enumerate(zip(self.products, self.weights)):
            power = tp(power, a if self.mix is None else self.mix[c](a), w[species])
            total = total + (power if c == last else self.project(power))
        return total

    def project(self, x: torch.Tensor) -> torch.Tensor:
        """The irreps_out part of features in ``irreps``."""
        return x.index_select(1, self.keep) if self.select else x


class Interaction(nn.Module):
    """h (irreps_in) on atoms -> h' (irreps_out); see the module docstring."""

    def __init__(
        self,
        irreps_in: o3.Irreps,
        irreps_out: o3.Irreps,
        irreps_sh: o3.Irreps,
        irreps_hidden: o3.Irreps,
        num_species: int,
        num_basis: int,
        radial_hidden: List[int],
        avg_num_neighbors: float,
        correlation: int,
        self_connection: bool = True,
        product_mixing: bool = False,
    ):
        super().__init__()
        self.irreps_in, self.irreps_out = o3.Irreps(irreps_in), o3.Irreps(irreps_out)
        # a buffer, not a constant: a compiled step takes it as an input, so models of one
        # architecture share one compiled graph whatever data set set its value
        self.register_buffer("avg_num_neighbors", torch.tensor(float(avg_num_neighbors)), persistent=False)
        self.linear_up = Linear(self.irreps_in, self.irreps_in)
        allowed = [ir for _, ir in irreps_hidden]
        irreps_mid, instructions = uvu_instructions(self.irreps_in, irreps_sh, allowed)
        # inputs of one multiplicity take the kernel that contracts Clebsch–Gordan on atoms
        # (1.2–1.8× faster than e3nn's product + index_add at l = 0–3: benchmarks/kernels.py;
        # for scalar inputs, the first layer and every layer with message_lmax 0, it is also
        # faster than ScalarConvolution on the AMD machine: compiled energy + forces of the
        # scalar-message model 55 against 65 ms at 960 atoms); inputs of mixed multiplicities
        # (hidden_irreps never makes them) e3nn's product followed by a sum over edges
        self.channel_messages = len({m for m, _ in self.irreps_in}) == 1
        if self.channel_messages:
            self.conv = ChannelConvolution(self.irreps_in, irreps_sh, irreps_mid, instructions)
        else:
            self.conv = o3.TensorProduct(self.irreps_in, irreps_sh, irreps_mid, instructions,
                                         shared_weights=False, internal_weights=False)
        self.radial = RadialNetwork([num_basis] + list(radial_hidden) + [self.conv.weight_numel])
        # for inference, a table of the radial network as a function of the edge length
        # (EnergyModel.tabulate_radial); derived from the weights, never saved
        self.radial_table = None
        self.linear_msg = Linear(irreps_mid, irreps_hidden)
        self.gate = make_gate(self.irreps_out)
        # only the irreps the gate reads are formed by the products
        wanted = {ir for _, ir in self.gate.irreps_in}
        irreps_products = o3.Irreps([(mul, ir) for mul, ir in o3.Irreps(irreps_hidden) if ir in wanted])
        self.product = ProductBasis(o3.Irreps(irreps_hidden), num_species, correlation, irreps_products,
                                    mixing=product_mixing)
        self.linear_out = Linear(irreps_products, self.gate.irreps_in)
        self.skip = (
            o3.FullyConnectedTensorProduct(self.irreps_in, o3.Irreps(f"{num_species}x0e"), self.irreps_out)
            if self_connection
            else None
        )

    def forward(
        self,
        h: torch.Tensor,  # (N, irreps_in.dim)
        species_onehot: torch.Tensor,  # (N, num_species)
        species: torch.Tensor,  # (N,) species index
        edge_sh: torch.Tensor,  # (E, irreps_sh.dim)
        edge_radial: torch.Tensor,  # (E, num_basis), already enveloped; with radial_table, (E,) lengths
        edge_src: torch.Tensor,
        edge_dst: torch.Tensor,
        table: NeighbourTable,  # neighbour_slots(edge_dst, N): each edge's place among its atom's
        mirrored: bool = False,  # edge_radial holds the first of two mirrored halves of the edges
    ) -> torch.Tensor:
        up = self.linear_up(h)
        if edge_radial.dim() == 1:  # edge lengths: the tabulated radial network
            weights = self.radial_table(edge_radial)
        else:
            weights = self.radial(edge_radial)
        if mirrored:
            weights = torch.cat([weights, weights])
        if self.channel_messages:
            a = self.conv(up, edge_sh, weights, edge_src, edge_dst, table)
        else:
            messages = self.conv(up[edge_src], edge_sh, weights)
            a = torch.zeros(h.shape[0], messages.shape[1], dtype=messages.dtype, device=messages.device)
            a = a.index_add(0, edge_dst, messages)
        a = a / self.avg_num_neighbors
        a = self.linear_msg(a)
        b = self.product(a, species)
        out = self.gate(self.linear_out(b))
        if self.skip is not None:
            out = out + self.skip(h, species_onehot)
        return out
