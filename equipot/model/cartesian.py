"""A non-equivariant baseline: message passing on the raw Cartesian components of r_ij.

This network exists to measure what built-in symmetry buys (issue 5's learning curves): it
sees the same neighbours, radial basis and smooth cutoff as :class:`EnergyModel`, but its
edge filters are MLPs of the raw vector components (x, y, z) of r_ij as well as of the
distance, so nothing makes its energy invariant under rotations. It is translation- and
permutation-invariant (relative positions, sums over neighbours), conservative (forces are
−∇E), and must learn rotational invariance from data, which ``training.augment_rotations``
provides by rotating every training structure at random in every epoch.

Select it with ``model.architecture: cartesian``; it predicts energies (and so forces and
stress) only.
"""

from typing import List, Optional, Sequence, Tuple

import torch
from torch import nn

from ..nn import RadialEmbedding
from .energy_model import ShiftedEnergies


def _linear(a: int, b: int, bias: bool = True) -> nn.Linear:
    """A linear layer initialised to keep activations of order one through SiLU (He normal),
    as the equivariant network's normalised layers do, so both start from similar outputs."""
    layer = nn.Linear(a, b, bias=bias)
    nn.init.normal_(layer.weight, std=(2.0 / a) ** 0.5)
    if bias:
        nn.init.zeros_(layer.bias)
    return layer


def _mlp(sizes: Sequence[int], bias: bool = True) -> nn.Sequential:
    layers: List[nn.Module] = []
    for k, (a, b) in enumerate(zip(sizes, sizes[1:])):
        layers.append(_linear(a, b, bias))
        if k < len(sizes) - 2:
            layers.append(nn.SiLU())
    return nn.Sequential(*layers)


class CartesianLayer(nn.Module):
    """m_i = Σ_j f(r_ij) ⊙ W h_j / n_avg with f an MLP of (basis(|r|), r / r_max), then
    h_i ← h_i + U([m_i, h_i ⊙ m_i]) (the first layer starts from zero instead of h_i).

    U has no biases, so an atom without neighbours keeps zero features and its energy is its
    shift, E0, exactly as in the equivariant network.
    """

    def __init__(self, channels: int, num_basis: int, radial_hidden: Sequence[int], avg_num_neighbors: float,
                 residual: bool):
        super().__init__()
        self.filter = _mlp([num_basis + 3, *radial_hidden, channels])
        self.source = _linear(channels, channels, bias=False)
        self.update = _mlp([2 * channels, channels, channels], bias=False)
        # a buffer for the reason given in equipot.nn.interaction
        self.register_buffer("inv_neighbors", torch.tensor(1.0 / avg_num_neighbors), persistent=False)
        self.residual = residual

    def forward(self, h, edge_input, envelope, edge_src, edge_dst):
        # the envelope takes the whole filter to zero at r_max (the raw components alone do not vanish)
        messages = self.filter(edge_input) * envelope.unsqueeze(-1) * self.source(h)[edge_src]
        pooled = torch.zeros_like(h).index_add(0, edge_dst, messages) * self.inv_neighbors
        update = self.update(torch.cat([pooled, h * pooled], dim=-1))
        return h + update if self.residual else update


class CartesianEnergyModel(ShiftedEnergies):
    """Per-atom energies from a non-equivariant message-passing network (see the module doc).

    Same interface as :class:`~equipot.model.EnergyModel`: (species, r_ij, src, dst) in,
    (per-atom energies float64 eV, last features) out.
    """

    def __init__(
        self,
        num_species: int,
        r_max: float,
        num_layers: int,
        channels: int,
        num_basis: int,
        radial_hidden: Sequence[int],
        readout_hidden: int,
        avg_num_neighbors: float,
        atomic_shift: torch.Tensor,
        atomic_scale: torch.Tensor,
    ):
        super().__init__()
        self.num_species, self.r_max = num_species, float(r_max)
        self.radial = RadialEmbedding(r_max, num_basis)
        self.embedding = _linear(num_species, channels, bias=False)
        self.layers = nn.ModuleList(
            CartesianLayer(channels, num_basis, radial_hidden, avg_num_neighbors, residual=t > 0) for t in range(num_layers)
        )
        self.readouts = nn.ModuleList(
            _mlp([channels, readout_hidden, 1], bias=False) if t == num_layers - 1 else _linear(channels, 1, bias=False)
            for t in range(num_layers)
        )
        self._init_shift(atomic_shift, atomic_scale)

    @staticmethod
    def edge_layout(values: torch.Tensor, edge_src: torch.Tensor, edge_dst: torch.Tensor, num_nodes: int) -> None:
        return None

    def forward(
        self,
        species: torch.Tensor,
        edge_vec: torch.Tensor,
        edge_src: torch.Tensor,
        edge_dst: torch.Tensor,
        layer_edges: Optional[List[torch.Tensor]] = None,
        layout: None = None,  # unused: this network reads no edge layout
    ) -> Tuple[torch.Tensor, torch.Tensor]:
        length = torch.linalg.norm(edge_vec, dim=-1)
        envelope = self.radial.envelope(length)  # computed once: it also ends the filters at r_max
        edge_input = torch.cat([self.radial.basis(length) * envelope.unsqueeze(-1), edge_vec / self.r_max], dim=-1)
        onehot = species[:, None] == torch.arange(self.num_species, device=species.device)
        h = self.embedding(onehot.to(edge_vec.dtype))
        out = torch.zeros(species.shape[0], dtype=edge_vec.dtype, device=edge_vec.device)
        for t, (layer, readout) in enumerate(zip(self.layers, self.readouts)):
            idx = None if layer_edges is None else layer_edges[t]
            if idx is None:
                h = layer(h, edge_input, envelope, edge_src, edge_dst)
            else:
                h = layer(h, edge_input[idx], envelope[idx], edge_src[idx], edge_dst[idx])
            out = out + readout(h).squeeze(-1)
        return self._energies(species, out), h
