"""Memory of a large data set: 10^5 configurations read into equipot.

    python benchmarks/data_memory.py --n 100000
    python benchmarks/data_memory.py --n 100000 --store    # also through the HDF5 store

Writes a synthetic extxyz file of N acetylacetone structures (training structures with
small random displacements, energies and forces copied) to a temporary folder, reads it
with equipot's reader, builds the training statistics and one epoch of batches' neighbour
lists on a sample, and reports peak resident memory and time. With --store it also converts
the file to an HDF5 store (streaming) and reads 5000 structures from it in random order, each
step in a fresh process, so every peak is that step's own. Writes
docs/benchmarks/data_memory.json/.md.
"""

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time

import numpy as np

from common import DATA, DOCS, machine, write_result


def store_step(step: str, xyz: str, h5: str) -> dict:
    """One step in this process: 'convert' the file to a store, or 'read' 5000 structures from it."""
    from equipot.data import GraphLoader, iread_configurations
    from equipot.data.store import ConfigurationStore, write_store

    t = time.time()
    if step == "convert":
        configs = iread_configurations(xyz, keys={"energy": "energy", "forces": "forces"}, required=["energy", "forces"])
        n = write_store(configs, h5)
    else:
        store = ConfigurationStore(h5)
        n = 0
        for graph in GraphLoader(store, 5.0, 50, shuffle=True, seed=0):
            n += int(graph.n_graphs)
            if n >= 5000:
                break
    return {"seconds": time.time() - t, "peak_mb": peak_of_this_program_mb(), "n": n}


def peak_of_this_program_mb() -> float:
    """VmHWM: the peak resident memory since this program started (ru_maxrss would include the
    parent's memory at the fork that started it)."""
    for line in open("/proc/self/status"):
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--n", type=int, default=100000)
    p.add_argument("--store", action="store_true")
    p.add_argument("--step", nargs=3, help=argparse.SUPPRESS)  # child process: STEP XYZ H5
    args = p.parse_args()
    if args.step:
        print(json.dumps(store_step(*args.step)))
        return
    import ase.io

    from equipot.data import GraphLoader, read_configurations

    base = ase.io.read(str(DATA / "acac" / "train_300K.xyz"), ":")
    rng = np.random.default_rng(0)
    with tempfile.TemporaryDirectory() as tmp:
        path = os.path.join(tmp, "big.xyz")
        t = time.time()
        with open(path, "w") as f:
            for k in range(args.n):
                a = base[k % len(base)]
                pos = a.positions + rng.normal(scale=0.01, size=a.positions.shape)
                f.write(f"{len(a)}\nProperties=species:S:1:pos:R:3:forces:R:3 energy={a.get_potential_energy():.8f} pbc=\"F F F\"\n")
                forces = a.get_forces()
                for s, x, fo in zip(a.get_chemical_symbols(), pos, forces):
                    f.write(f"{s} {x[0]:.8f} {x[1]:.8f} {x[2]:.8f} {fo[0]:.8f} {fo[1]:.8f} {fo[2]:.8f}\n")
        write_s = time.time() - t
        size_mb = os.path.getsize(path) / 2**20
        rss0 = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
        t = time.time()
        configs = read_configurations(path, keys={"energy": "energy", "forces": "forces"}, required=["energy", "forces"])
        read_s = time.time() - t
        t = time.time()
        n_batches = 0
        for graph in GraphLoader(configs[:5000], 5.0, 50):
            n_batches += 1
        batch_s = time.time() - t
        peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
        steps = {}
        if args.store:
            h5 = os.path.join(tmp, "big.h5")
            for step in ("convert", "read"):
                out = subprocess.check_output([sys.executable, __file__, "--step", step, path, h5], text=True)
                steps[step] = json.loads(out.strip().splitlines()[-1])
            steps["store_mb"] = os.path.getsize(h5) / 2**20
    records = [
        {"model": "equipot", "variant": "reader", "dataset": "acac-synthetic", "metric": "peak_memory",
         "value": round(peak, 1), "unit": "MB", "n_configs": args.n, "file_mb": round(size_mb, 1),
         "read_s": round(read_s, 1), "rss_before_read_mb": round(rss0, 1)},
    ]
    for step in ("convert", "read"):
        if step in steps:
            records.append({"model": "equipot", "variant": f"store-{step}", "dataset": "acac-synthetic",
                            "metric": "peak_memory", "value": round(steps[step]["peak_mb"], 1), "unit": "MB",
                            "n_configs": args.n, "seconds": round(steps[step]["seconds"], 1)})
    write_result("data_memory", 1, records)
    md = ["# Reading a large data set", "", f"Machine: {machine(1)['cpu']}. Command: `python benchmarks/data_memory.py --n {args.n}`", "",
          "| configurations | file (MB) | read time (s) | peak RSS (MB) | neighbour lists + batching, 5000 configs (s) |",
          "|---|---|---|---|---|",
          f"| {args.n} | {size_mb:.0f} | {read_s:.0f} | {peak:.0f} | {batch_s:.1f} |"]
    if steps:
        md += ["", f"HDF5 store ({steps['store_mb']:.0f} MB), each step in a fresh process:", "",
               "| step | time (s) | peak RSS (MB) |", "|---|---|---|",
               f"| `equipot convert` (streaming, {args.n} structures) | {steps['convert']['seconds']:.0f} | {steps['convert']['peak_mb']:.0f} |",
               f"| training loader: 5000 structures in random order, neighbour lists, batches of 50 | {steps['read']['seconds']:.1f} | {steps['read']['peak_mb']:.0f} |"]
    (DOCS / "data_memory.md").write_text("\n".join(md) + "\n")
    print("\n".join(md))


if __name__ == "__main__":
    main()
