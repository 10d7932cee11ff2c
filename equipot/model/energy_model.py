"""The equivariant network: species and edge vectors in, per-atom energies out."""

import copy
from typing import List, NamedTuple, Optional, Sequence, Tuple

import torch
from e3nn import o3
from torch import nn

from ..graph import mirrored_half
from ..nn import Interaction, LinearReadout, MLPReadout, RadialEmbedding, RadialTable
from ..o3 import Linear, NeighbourTable, neighbour_slots


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


class EdgeLayout(NamedTuple):
    """What the network reads off the edge list before any arithmetic (data-dependent work,
    kept apart so that the arithmetic can be traced with symbolic sizes: equipot.model.compiled).

    ``mirrored``: the second half of the edges reverses the first (:func:`mirrored_half`);
    ``table``: each edge's place in the padded per-atom neighbour table.
    """

    mirrored: bool
    table: NeighbourTable


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
        sh_lmax: Optional[int] = None,
    ):
        super().__init__()
        self.num_species = num_species
        # the edges' harmonics, up to sh_lmax (default lmax)
        sh_lmax = lmax if sh_lmax is None else sh_lmax
        self.irreps_sh = o3.Irreps.spherical_harmonics(sh_lmax)
        self.sh = o3.SphericalHarmonics(self.irreps_sh, normalize=True, normalization="component")
        sign = torch.cat([torch.full((ir.dim,), float(ir.p)) for _, ir in self.irreps_sh])  # (-1)^l
        self.register_buffer("sh_parity", sign, persistent=False)
        self.radial = RadialEmbedding(r_max, num_basis)
        irreps_embed = o3.Irreps(f"{channels}x0e")
        self.embedding = Linear(o3.Irreps(f"{num_species}x0e"), irreps_embed)
        # inside a layer, the atomic basis A (the neighbour sum) and its products keep every
        # irrep up to max(lmax, sh_lmax), as MACE's do up to max_ell; the products then land in
        # the irreps up to lmax that the layer passes on (its gate's)
        hidden = hidden_irreps(channels, max(lmax, sh_lmax), parity)
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
        self._radial_source = None  # what the radial tables were built from (tabulate_radial)

    def tabulate_radial(self, tolerance: float = 1e-7, max_bytes: int = 64 * 2**20) -> None:
        """Evaluate each layer's radial network from a table of cubic pieces of the edge length
        (:class:`~equipot.nn.RadialTable`, within ``tolerance`` of the network relative to its
        largest value and slope) when the model is in eval mode; training mode ignores the
        tables. For float32 inference the default tolerance is below float32's rounding;
        compiled energy + forces of lmax 1 models took 1.3-2× less time (the radial networks'
        matmuls and their backward pass were that share of a step), of lmax 2 / 32 channels and
        of eager evaluation none less (benchmarks/radial_table.py). The tables follow the weights: changed
        weights (an optimiser step, load_state_dict, a change of dtype) rebuild them at the
        next call. :meth:`untabulate_radial` goes back to the networks. Raises ValueError (and
        keeps the networks) if the tables would take more than ``max_bytes`` together."""
        dtype, device = self.atomic_scale.dtype, self.atomic_scale.device
        basis = copy.deepcopy(self.radial).to(device="cpu", dtype=torch.float64)
        tables = []
        for layer in self.layers:
            net = copy.deepcopy(layer.radial).to(device="cpu", dtype=torch.float64)
            tables.append(RadialTable(lambda r, net=net: net(basis(r)), self.radial.basis.r_max, dtype, tolerance,
                                      device=device, max_bytes=max_bytes // len(self.layers)))
        for layer, table in zip(self.layers, tables):
            layer.radial_table = table
        self._radial_source = (tolerance, max_bytes, self._radial_fingerprint())

    def untabulate_radial(self) -> None:
        for layer in self.layers:
            layer.radial_table = None
        self._radial_source = None

    @property
    def radial_tabulated(self) -> bool:
        """Whether forward evaluates the radial networks from tables (built, and eval mode)."""
        return self._radial_source is not None and not self.training

    def refresh_radial_tables(self) -> None:
        """Rebuild the radial tables if the weights they were built from changed (eager only)."""
        if self._radial_source is not None and self._radial_source[2] != self._radial_fingerprint():
            self.tabulate_radial(*self._radial_source[:2])

    def _radial_fingerprint(self) -> tuple:
        params = list(self.radial.parameters()) + [p for layer in self.layers for p in layer.radial.parameters()]
        return tuple((p.data_ptr(), p._version, p.dtype, p.device) for p in params) + (
            tuple((layer.radial_table.coeffs.dtype, layer.radial_table.coeffs.device) for layer in self.layers
                  if layer.radial_table is not None),)

    def forward(
        self,
        species: torch.Tensor,
        edge_vec: torch.Tensor,
        edge_src: torch.Tensor,
        edge_dst: torch.Tensor,
        layer_edges: Optional[List[torch.Tensor]] = None,
        layout: Optional[EdgeLayout] = None,
    ) -> Tuple[torch.Tensor, torch.Tensor]:
        """Per-atom energies (N,) float64 eV, and the last layer's features (N, irreps_features.dim).

        ``layout`` (default: worked out here, :meth:`edge_layout`) is for callers that trace the
        network; it must be the layout of these edges.

        ``layer_edges`` (one index tensor per layer, default: all edges in every layer) lets a
        caller that needs the energies of some atoms only skip the edges into atoms whose
        features no later layer reads (LAMMPS: local atoms among ghosts); the energies and
        features of the atoms it cares about are unchanged, the others' are not meaningful.
        """
        dtype = edge_vec.dtype
        if layout is None:  # an eager call (traced callers pass the layout)
            self.refresh_radial_tables()
            if layer_edges is None:
                layout = self.edge_layout(edge_vec, edge_src, edge_dst, species.shape[0])
        # a comparison, not one_hot, which reads the largest index back (a graph break when traced)
        onehot = (species[:, None] == torch.arange(self.num_species, device=species.device)).to(dtype)
        # with mirrored edge halves the functions of the length (radial basis and the layers'
        # radial networks) are computed for one edge of each pair, and Y(-r) = (-1)^l Y(r)
        mirrored = layer_edges is None and layout.mirrored
        vec = edge_vec[: edge_vec.shape[0] // 2] if mirrored else edge_vec
        edge_sh = self.sh(vec)
        lengths = torch.linalg.norm(vec, dim=-1)
        # tabulated, the layers take the lengths and look their radial weights up
        edge_radial = lengths if self.radial_tabulated else self.radial(lengths)
        if mirrored:
            edge_sh = torch.cat([edge_sh, edge_sh * self.sh_parity.to(edge_sh.dtype)])
        table = layout.table if layer_edges is None else None
        h = self.embedding(onehot)
        out = torch.zeros(species.shape[0], dtype=dtype, device=edge_vec.device)
        for t, (layer, readout) in enumerate(zip(self.layers, self.readouts)):
            if layer_edges is None:
                h = layer(h, onehot, species, edge_sh, edge_radial, edge_src, edge_dst, table, mirrored=mirrored)
            else:
                idx = layer_edges[t]
                dst = edge_dst[idx]
                h = layer(h, onehot, species, edge_sh[idx], edge_radial[idx], edge_src[idx], dst,
                          neighbour_slots(dst, species.shape[0]))
            out = out + readout(h)
        return self._energies(species, out), h

    @staticmethod
    def edge_layout(values: torch.Tensor, edge_src: torch.Tensor, edge_dst: torch.Tensor,
                    num_nodes: int) -> EdgeLayout:
        """The :class:`EdgeLayout` of these edges (reads the edge list back: not traceable).

        ``values``: per-edge values that the reversed edge negates exactly, the edge vectors or
        the integer image shifts (the vector of an edge reversed with its shift negated is
        exactly the negated vector: a - b and b - a, and sums of negated products, round alike).
        """
        with torch.no_grad():
            mirrored = mirrored_half(values, edge_src, edge_dst) is not None
        return EdgeLayout(mirrored, neighbour_slots(edge_dst, num_nodes))
