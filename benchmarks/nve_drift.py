"""NVE energy conservation: velocity Verlet with a trained model, float64.

    python benchmarks/nve_drift.py runs/ethanol-.../model.safetensors --ps 10 --timestep-fs 0.5

Starts from the first structure of the training file at 300 K; writes
docs/benchmarks/nve_drift.json/.md and a plot of total energy against time.
"""

import argparse
import os
import time

import numpy as np
import torch

from common import DATA, DOCS, machine, write_result

from equipot.md import run_md


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("model")
    p.add_argument("--structure", default=str(DATA / "ethanol" / "train.xyz"))
    p.add_argument("--ps", type=float, default=10.0)
    p.add_argument("--timestep-fs", type=float, default=0.5)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--out", default="runs/nve")
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    steps = int(round(args.ps * 1000 / args.timestep_fs))
    start = time.time()
    result = run_md(args.model, args.structure, args.out, ensemble="nve", timestep_fs=args.timestep_fs,
                    temperature_K=300.0, steps=steps, interval=20, dtype="float64", progress=False)
    wall = time.time() - start
    log = np.loadtxt(result.log)
    t_ps, etot = log[:, 0], log[:, 3]
    import ase.io

    n_atoms = len(ase.io.read(args.structure, index=0))
    slope = np.polyfit(t_ps, etot, 1)[0] * 1000 / n_atoms  # meV/atom/ps
    records = [
        {"model": "equipot", "variant": "float64", "dataset": os.path.basename(os.path.dirname(args.structure)), "metric": "energy_drift",
         "value": round(result.energy_drift_meV_per_atom, 5), "unit": "meV/atom", "ps": args.ps,
         "timestep_fs": args.timestep_fs, "max_deviation_meV_per_atom": round(result.max_energy_deviation_meV_per_atom, 5),
         "linear_drift_meV_per_atom_per_ps": round(float(slope), 6), "wall_s": round(wall, 1)},
    ]
    write_result("nve_drift", args.threads, records)
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 3.2))
    ax.plot(t_ps, 1000 * (etot - etot[0]) / n_atoms)
    ax.set_xlabel("time (ps)")
    ax.set_ylabel("E_total − E_total(0) (meV/atom)")
    ax.set_title(f"NVE, {args.timestep_fs} fs, float64: drift {result.energy_drift_meV_per_atom:.4f} meV/atom")
    fig.tight_layout()
    fig.savefig(DOCS / "nve_drift.png", dpi=110)
    md = ["# NVE energy drift", "", f"Machine: {machine(args.threads)['cpu']}, {args.threads} thread(s). "
          f"Command: `python benchmarks/nve_drift.py MODEL --ps {args.ps:g} --timestep-fs {args.timestep_fs:g}`", "",
          "| system | time step | length | |ΔE| end − start (meV/atom) | max |ΔE| (meV/atom) | linear drift (meV/atom/ps) |",
          "|---|---|---|---|---|---|",
          f"| {os.path.basename(args.structure)} ({n_atoms} atoms) | {args.timestep_fs} fs | {args.ps:g} ps | {result.energy_drift_meV_per_atom:.4f} | "
          f"{result.max_energy_deviation_meV_per_atom:.4f} | {slope:.5f} |", "", "![NVE](nve_drift.png)"]
    (DOCS / "nve_drift.md").write_text("\n".join(md) + "\n")
    print("\n".join(md))


if __name__ == "__main__":
    main()
