"""Typed outputs besides the energy: charges, dipoles, Cartesian tensors, irreps, SE(3) scalars.

:class:`TypedOutputs` reads every declared output from the last layer's node features
(see :mod:`equipot.fields` for the types). Per-structure values are sums of per-atom
contributions. Charges obey Σ_i q_i = Q exactly: the excess of the raw per-atom values is
spread over the atoms of each structure, evenly or in proportion to learnt positive weights
(``charge_weights: learned``). Dipoles are Σ q_i (r_i − r_c) + Σ μ_i with
r_c the centre of mass (the choice matters only for charged structures), or Σ q_i (r_i − r_c)
alone (``atomic_dipoles: false``: point charges), and are NaN for
periodic structures, where a dipole is ill-defined.
"""

from typing import Dict, List, Tuple

import torch
from ase.data import atomic_masses
from e3nn import o3
from torch import nn

from ..fields import Field
from ..nn.heads import IrrepsHead, SE3ScalarHead
from ..o3 import Linear


def output_irreps(fields: List[Field], lmax: int) -> o3.Irreps:
    """The non-0e irreps the last layer must carry for these outputs (0e is always there)."""
    needed = []
    for f in fields:
        for _, ir in o3.Irreps(f.irreps):
            if ir != o3.Irrep("0e") and ir.l <= lmax and ir not in needed:
                needed.append(ir)
    return o3.Irreps([(1, ir) for ir in needed]).sort().irreps.simplify()


def sum_over_graphs(values: torch.Tensor, node_graph: torch.Tensor, n_graphs: int) -> torch.Tensor:
    out = torch.zeros((n_graphs,) + values.shape[1:], dtype=values.dtype, device=values.device)
    return out.index_add(0, node_graph, values)


def spread_excess(
    raw: torch.Tensor, weight: torch.Tensor, total_charge: torch.Tensor, node_graph: torch.Tensor, n_graphs: int
) -> torch.Tensor:
    """Charges q_i = raw_i + w_i (Q − Σ raw) / Σ w over each structure, so that Σ q_i = Q exactly."""
    excess = total_charge.to(raw.dtype) - sum_over_graphs(raw, node_graph, n_graphs)
    share = excess / sum_over_graphs(weight, node_graph, n_graphs).clamp(min=1e-12)
    return raw + weight * share[node_graph]


class TypedOutputs(nn.Module):
    """Heads for the declared outputs; ``forward`` returns {name: tensor} in data units."""

    def __init__(self, fields: Dict[str, Field], irreps_in: o3.Irreps, hidden: int, charge_weights: str = "uniform",
                 gate_odd: bool = False, atomic_dipoles: bool = True):
        super().__init__()
        if charge_weights not in ("uniform", "learned"):
            raise ValueError(f"charge_weights must be 'uniform' or 'learned', got {charge_weights!r}")
        self.learned_weights = charge_weights == "learned"
        self.fields = dict(fields)
        self.irreps_in = o3.Irreps(irreps_in)
        self.heads = nn.ModuleDict()
        needs_charges = any(f.kind in ("charges", "dipole") for f in self.fields.values())
        n_charge = 2 if self.learned_weights else 1  # raw charge (and the weight of the excess it takes)
        self.charges = IrrepsHead(self.irreps_in, o3.Irreps(f"{n_charge}x0e"), hidden) if needs_charges else None
        has_vectors = any(ir == o3.Irrep("1o") for _, ir in self.irreps_in)
        wants_dipole = any(f.kind == "dipole" for f in self.fields.values())
        with_dipoles = wants_dipole and has_vectors and atomic_dipoles
        self.atomic_dipoles = Linear(self.irreps_in, o3.Irreps("1o")) if with_dipoles else None
        for name, f in self.fields.items():
            if f.kind == "se3_scalar":
                self.heads[name] = SE3ScalarHead(self.irreps_in, hidden)
            elif f.kind in ("irreps", "cartesian"):
                self.heads[name] = IrrepsHead(self.irreps_in, o3.Irreps(f.irreps), hidden, gate_odd=gate_odd)
            if f.kind == "cartesian":
                tensor = o3.ReducedTensorProducts(f.symmetry, **{i: "1o" for i in set(f.symmetry) - {"="}})
                # (irreps dim, 3, 3, ...) change of basis; a buffer so it follows dtype and device
                self.register_buffer(f"basis_{name}", tensor.change_of_basis.clone(), persistent=False)
        masses = torch.as_tensor(atomic_masses, dtype=torch.float64)
        self.register_buffer("masses", masses, persistent=False)

    def forward(
        self,
        h: torch.Tensor,  # (N, irreps_in.dim) last-layer node features
        positions: torch.Tensor,  # (N, 3) Å
        numbers: torch.Tensor,  # (N,) atomic numbers
        node_graph: torch.Tensor,
        n_graphs: int,
        total_charge: torch.Tensor,  # (G,) e
        periodic: torch.Tensor,  # (G,) bool
    ) -> Dict[str, torch.Tensor]:
        out = {}
        charges = None
        if self.charges is not None:
            raw, weight = self.charge_parts(h)
            charges = spread_excess(raw, weight, total_charge, node_graph, n_graphs)
        for name, f in self.fields.items():
            if f.kind == "charges":
                value = charges
            elif f.kind == "dipole":
                value = self._dipole(h, charges, positions, numbers, node_graph, n_graphs, periodic)
            elif f.kind == "born_charges":
                continue  # derivatives of the dipole: the potential takes them with the forces
            else:
                value = self.heads[name](h)
                if f.kind == "cartesian":  # irreps -> Cartesian components
                    basis = getattr(self, f"basis_{name}")
                    value = torch.einsum("ni,i...->n...", value, basis.to(value.dtype))
                if f.level == "graph":
                    value = sum_over_graphs(value, node_graph, n_graphs)
                value = value.reshape(value.shape[:1] + f.shape)
            out[name] = value
        return out

    def charge_parts(self, h: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor]:
        """Per-atom raw charges and the positive weights with which they take the excess.

        Both depend on each atom's own features only; :func:`spread_excess` then makes the
        charges of each structure add up to its total charge.
        """
        head = self.charges(h)
        raw = head[:, 0]
        if self.learned_weights:  # positive weights: atoms that hold charge easily take more of the excess
            return raw, torch.nn.functional.softplus(head[:, 1]) + 1e-3
        return raw, torch.ones_like(raw)

    def _dipole(self, h, charges, positions, numbers, node_graph, n_graphs, periodic) -> torch.Tensor:
        mass = self.masses[numbers].to(positions.dtype)
        total_mass = sum_over_graphs(mass, node_graph, n_graphs)
        centre = sum_over_graphs(mass[:, None] * positions, node_graph, n_graphs) / total_mass[:, None]
        local = charges[:, None] * (positions - centre[node_graph])
        if self.atomic_dipoles is not None:
            local = local + self.atomic_dipoles(h)  # e3nn (>= 0.5) orders 1o as x, y, z
        dipole = sum_over_graphs(local, node_graph, n_graphs)
        return torch.where(periodic[:, None], torch.full_like(dipole, float("nan")), dipole)
