"""Energies and their derivatives for a batch of structures, in one autograd pass."""

from typing import Dict, List, NamedTuple, Optional, Sequence

import torch
from ase.data import chemical_symbols
from torch import nn

from ..fields import Field
from ..geometry import apply_strain, cell_volumes, edge_vectors, symmetric_strain
from ..graph import AtomicGraph
from .energy_model import EdgeLayout, EnergyModel
from ..electrostatics import Electrostatics
from .outputs import TypedOutputs


class UnknownElementError(ValueError):
    pass


class GraphLayout(NamedTuple):
    """What :meth:`Potential.layout` reads off a batch before the arithmetic: species indices
    (after the check for unknown elements) and the energy model's edge layout."""

    species: torch.Tensor
    edges: Optional[EdgeLayout]  # the energy model's edge_layout(...); None for the Cartesian baseline


class Potential(nn.Module):
    """Wraps an :class:`EnergyModel`; returns energy, per-atom energies, forces, virial, stress.

    Output units: energy and energies eV, forces eV/Å, virial eV, stress eV/Å³ (ASE sign;
    zero for open structures, which have no volume). With ``outputs``, every typed output
    (:mod:`equipot.model.outputs`) joins the result under its name; with ``long_range``, the
    electrostatic energy of the charges output is part of the energy (hence of the forces and
    stress) and is reported as ``energy_long_range`` / ``energies_long_range`` too.
    """

    def __init__(
        self,
        energy_model: EnergyModel,
        species: Sequence[int],
        outputs: Optional[TypedOutputs] = None,
        long_range: Optional[Electrostatics] = None,
    ):
        super().__init__()
        self.energy_model = energy_model
        self.outputs = outputs
        self.long_range = long_range
        if long_range is not None:
            names = [n for n, f in (outputs.fields if outputs else {}).items() if f.kind == "charges"]
            if not names:
                raise ValueError("a long-range model needs a charges output")
            self.charges_name = names[0]
        self.species = [int(z) for z in species]
        z_to_index = torch.full((119,), -1, dtype=torch.long)
        z_to_index[torch.tensor(self.species)] = torch.arange(len(self.species))
        self.register_buffer("z_to_index", z_to_index, persistent=False)

    @property
    def dtype(self) -> torch.dtype:
        """The network's floating-point dtype (the energy shift is always float64)."""
        return self.energy_model.atomic_scale.dtype

    @property
    def device(self) -> torch.device:
        return self.energy_model.atomic_scale.device

    def species_index(self, numbers: torch.Tensor) -> torch.Tensor:
        index = self.z_to_index[numbers.clamp(0, 118)]
        if (index < 0).any() or (numbers > 118).any():
            bad = sorted({int(z) for z in numbers[(index < 0) | (numbers > 118)].tolist()})
            names = ", ".join(chemical_symbols[z] if 0 <= z < 119 else str(z) for z in bad)
            known = ", ".join(chemical_symbols[z] for z in self.species)
            raise UnknownElementError(
                f"this model was not trained on element(s) {names}; it knows {known}"
            )
        return index

    def forward(self, graph: AtomicGraph, training: bool = False) -> Dict[str, torch.Tensor]:
        """``training=True`` keeps the graph of the derivatives for a loss on forces/stress."""
        return self.evaluate(graph, self.layout(graph), training)

    def layout(self, graph: AtomicGraph) -> GraphLayout:
        """The checks and index work that read a batch's values back (see :meth:`evaluate`)."""
        species = self.species_index(graph.numbers)
        if hasattr(self.energy_model, "refresh_radial_tables"):
            self.energy_model.refresh_radial_tables()
        # mirrored halves are read off the image shifts, which the vectors follow exactly
        edges = self.energy_model.edge_layout(graph.edge_shift, graph.edge_src, graph.edge_dst, graph.n_atoms)
        return GraphLayout(species, edges)

    def evaluate(self, graph: AtomicGraph, layout: GraphLayout, training: bool = False) -> Dict[str, torch.Tensor]:
        """:meth:`forward` given the batch's :meth:`layout`: arithmetic only, with no value read
        back and sizes taken from tensor shapes, so that it can be traced for any batch size
        (:mod:`equipot.model.compiled`)."""
        positions = graph.positions.detach().requires_grad_(True)
        n_graphs = graph.cell.shape[0]
        displacement, strain = symmetric_strain(n_graphs, positions.dtype, positions.device)
        pos, cell = apply_strain(positions, graph.cell, strain, graph.node_graph)
        vec = edge_vectors(pos, cell, graph.node_graph, graph.edge_src, graph.edge_dst, graph.edge_shift)
        energies, features = self.energy_model(layout.species, vec, graph.edge_src, graph.edge_dst,
                                               layout=layout.edges)
        extra = {}
        if self.outputs is not None:
            extra = self.outputs(
                features, pos, graph.numbers, graph.node_graph, n_graphs, graph.total_charge,
                graph.pbc.any(dim=1),
            )
        if self.long_range is not None:  # electrostatics of the learnt charges, part of the energy
            # the model's own pairs (within r_max) let PME run on a coarser mesh (range split)
            pairs = (graph.edge_src, graph.edge_dst, vec)
            e_long = self.long_range(extra[self.charges_name], pos, cell, graph.pbc, graph.node_graph, n_graphs, pairs)
            e_long = e_long.to(torch.float64)
            energies = energies + e_long
            extra["energies_long_range"] = e_long
            extra["energy_long_range"] = torch.zeros(n_graphs, dtype=e_long.dtype, device=e_long.device).index_add(
                0, graph.node_graph, e_long)
        energy = torch.zeros(n_graphs, dtype=energies.dtype, device=energies.device)
        energy = energy.index_add(0, graph.node_graph, energies)
        extra.update(self._born_charges(extra, positions, graph.node_graph, training))
        grad_pos, grad_strain = torch.autograd.grad(
            energy.sum(), [positions, displacement], create_graph=training
        )
        volume = cell_volumes(graph.cell)
        periodic = graph.pbc.any(dim=1) & (volume > 0)
        safe_volume = torch.where(periodic, volume, torch.ones_like(volume))
        stress = torch.where(periodic[:, None, None], grad_strain / safe_volume[:, None, None], 0.0)
        result = {
            "energy": energy,
            "energies": energies,
            "forces": -grad_pos,
            "virial": -grad_strain,
            "stress": stress,
        }
        result.update(extra)
        return result

    def _born_charges(self, extra, positions, graph_of_atoms, training) -> Dict[str, torch.Tensor]:
        """Z*_i,αβ = ∂μ_α/∂r_iβ for born_charges outputs (one backward pass per component α)."""
        names = [n for n, f in self.output_fields.items() if f.kind == "born_charges"]
        if not names:
            return {}
        dipole = extra[next(n for n, f in self.output_fields.items() if f.kind == "dipole")]
        rows = [
            torch.autograd.grad(dipole[:, a].sum(), positions, create_graph=training, retain_graph=True)[0]
            for a in range(3)
        ]
        born = torch.stack(rows, dim=1)  # (N, α, β)
        periodic = torch.isnan(dipole).any(dim=1)  # no dipole, hence no derivative, for periodic cells
        born = torch.where(periodic[graph_of_atoms][:, None, None], torch.full_like(born, float("nan")), born)
        return {name: born for name in names}

    @property
    def output_fields(self) -> Dict[str, "Field"]:
        """{name: Field} of the typed outputs besides energy, forces, virial and stress."""
        return dict(self.outputs.fields) if self.outputs is not None else {}
