"""The equivariant network: species and edge vectors in, per-atom energies out."""

from typing import List, Optional, Sequence, Tuple

import torch
from e3nn import o3
from torch import nn

from ..graph import mirrored_half
from ..o3 import neighbour_slots
from ..nn import Interaction, LinearReadout, MLPReadout, RadialEmbedding


def hidden_irreps(channels: int, lmax: int, parity: str) -> o3.Irreps:
    """``channels`` copies of every irrep up to ``lmax``; scalars first.

    parity "both": 0e, 0o, 1o, 1e, 2e, 2o, ...; "natural": 0e, 1o, 2e, ... only.
    """
    if parity not in ("both", "natural"):
        raise ValueError(f"parity must be 'both' or 'natural', got {parity!r}")
    irreps = []
    for l in range(lmax + 1):
        natural = 1 if l % 2 == 0 else -1
        irreps.append((channels, (l, natural)))
        if parity == "both":
            irreps.append((channels, (l, -natural)))
    scalars = [x for x in irreps if x[1][0] == 0]
    return o3.Irreps(scalars + [x for x in irreps if x[1][0] > 0])


class ShiftedEnergies(nn.Module):
    """Holds a network's per-species energy shift (a float64 parameter) and scale.

    The shift is trained, so that a constant energy offset is learnt in a few steps instead
    of through the readouts, and it is kept, and added, in float64 whatever the network's
    dtype: the shift is large (E0 ~ -10^3 eV) and float32 training must not lose meV to
    rounding.
    """

    def _init_shift(self, atomic_shift: torch.Tensor, atomic_scale: torch.Tensor) -> None:
        self.atomic_shift = nn.Parameter(atomic_shift.clone().to(torch.float64))
        self.register_buffer("atomic_scale", atomic_scale.clone())

    def _energies(self, species: torch.Tensor, out: torch.Tensor) -> torch.Tensor:
        """scale[s_i] * out_i + shift[s_i] in eV, float64."""
        return (self.atomic_scale[species] * out).to(torch.float64) + self.atomic_shift[species]

    def _apply(self, fn, recurse=True):
        shift = self._parameters.pop("atomic_shift")
        try:
            super()._apply(fn, recurse)
        finally:
            device = self.atomic_scale.device
            if shift.device != device:
                shift.data = shift.data.to(device)
                if shift.grad is not None:
                    shift.grad = shift.grad.to(device)
            self._parameters["atomic_shift"] = shift
        return self


class EnergyModel(ShiftedEnergies):
    """Per-atom energies E_i = scale[s_i] * Σ_layers readout(h_i) + shift[s_i] (eV, float64).

    Inputs are tensors: species indices (N,), edge vectors r_ij (E, 3) in Å in the
    convention of :mod:`equipot.graph`, and the edge index tensors.
    """

    def __init__(
        self,
        num_species: int,
        r_max: float,
        num_layers: int,
        channels: int,
        lmax: int,
        parity: str,
        correlation: int,
        num_basis: int,
        radial_hidden: Sequence[int],
        readout_hidden: int,
        avg_num_neighbors: float,
        atomic_shift: torch.Tensor,
        atomic_scale: torch.Tensor,
        extra_irreps: o3.Irreps = o3.Irreps(""),
        message_lmax: Optional[int] = None,
        product_mixing: bool = False,
    ):
        super().__init__()
        self.num_species = num_species
        self.irreps_sh = o3.Irreps.spherical_harmonics(lmax)
        self.sh = o3.SphericalHarmonics(self.irreps_sh, normalize=True, normalization="component")
        sign = torch.cat([torch.full((ir.dim,), float(ir.p)) for _, ir in self.irreps_sh])  # (-1)^l
        self.register_buffer("sh_parity", sign, persistent=False)
        self.radial = RadialEmbedding(r_max, num_basis)
        irreps_embed = o3.Irreps(f"{channels}x0e")
        self.embedding = o3.Linear(o3.Irreps(f"{num_species}x0e"), irreps_embed)
        hidden = hidden_irreps(channels, lmax, parity)
        # features passed from layer to layer (and so along the edges of the next layer); with
        # message_lmax < lmax the higher irreps live only inside a layer (A and its products),
        # which cuts the per-edge work, as MACE's scalar-only hidden features do
        message_lmax = lmax if message_lmax is None else message_lmax
        if not 0 <= message_lmax <= lmax:
            raise ValueError(f"message_lmax must be between 0 and lmax = {lmax}, got {message_lmax}")
        passed = hidden_irreps(channels, message_lmax, parity)
        self.layers = nn.ModuleList()
        self.readouts = nn.ModuleList()
        # the last layer carries the 0e channels of the energy and, for typed outputs, the
        # other irreps their heads read (``extra_irreps``, ``channels`` copies of each)
        irreps_last = (irreps_embed + o3.Irreps([(channels, ir) for _, ir in o3.Irreps(extra_irreps)])).sort().irreps.simplify()
        self.irreps_features = irreps_last
        irreps_in = irreps_embed
        for t in range(num_layers):
            last = t == num_layers - 1
            irreps_out = irreps_last if last else passed
            self.layers.append(
                Interaction(
                    irreps_in, irreps_out, self.irreps_sh, hidden, num_species, num_basis,
                    list(radial_hidden), avg_num_neighbors, correlation,
                    self_connection=t > 0, product_mixing=product_mixing,
                )
            )
            self.readouts.append(MLPReadout(irreps_out, readout_hidden) if last else LinearReadout(irreps_out))
            irreps_in = irreps_out
        self._init_shift(atomic_shift, atomic_scale)

    def forward(
        self,
        species: torch.Tensor,
        edge_vec: torch.Tensor,
        edge_src: torch.Tensor,
        edge_dst: torch.Tensor,
        layer_edges: Optional[List[torch.Tensor]] = None,
    ) -> Tuple[torch.Tensor, torch.Tensor]:
        """Per-atom energies (N,) float64 eV, and the last layer's features (N, irreps_features.dim).

        ``layer_edges`` (one index tensor per layer, default: all edges in every layer) lets a
        caller that needs the energies of some atoms only skip the edges into atoms whose
        features no later layer reads (LAMMPS: local atoms among ghosts); the energies and
        features of the atoms it cares about are unchanged, the others' are not meaningful.
        """
        dtype = edge_vec.dtype
        onehot = torch.nn.functional.one_hot(species, self.num_species).to(dtype)
        # with mirrored edge halves the functions of the length (radial basis and the layers'
        # radial networks) are computed for one edge of each pair, and Y(-r) = (-1)^l Y(r)
        half = mirrored_half(edge_vec, edge_src, edge_dst) if layer_edges is None else None
        vec = edge_vec if half is None else edge_vec[:half]
        edge_sh = self.sh(vec)
        edge_radial = self.radial(torch.linalg.norm(vec, dim=-1))
        if half is not None:
            edge_sh = torch.cat([edge_sh, edge_sh * self.sh_parity.to(edge_sh.dtype)])
        table = neighbour_slots(edge_dst, species.shape[0]) if layer_edges is None else None
        h = self.embedding(onehot)
        out = torch.zeros(species.shape[0], dtype=dtype, device=edge_vec.device)
        for t, (layer, readout) in enumerate(zip(self.layers, self.readouts)):
            if layer_edges is None:
                h = layer(h, onehot, species, edge_sh, edge_radial, edge_src, edge_dst, table,
                          mirrored=half is not None)
            else:
                idx = layer_edges[t]
                dst = edge_dst[idx]
                h = layer(h, onehot, species, edge_sh[idx], edge_radial[idx], edge_src[idx], dst,
                          neighbour_slots(dst, species.shape[0]))
            out = out + readout(h)
        return self._energies(species, out), h
