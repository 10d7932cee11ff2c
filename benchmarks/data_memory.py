"""Memory of a large data set: 10^5 configurations read into equipot.

    python benchmarks/data_memory.py --n 100000

Writes a synthetic extxyz file of N acetylacetone structures (training structures with
small random displacements, energies and forces copied) to a temporary folder, reads it
with equipot's reader, builds the training statistics and one epoch of batches' neighbour
lists on a sample, and reports peak resident memory and time. Writes
docs/benchmarks/data_memory.json/.md.
"""

import argparse
import os
import resource
import tempfile
import time

import numpy as np

from common import DATA, DOCS, machine, write_result


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--n", type=int, default=100000)
    args = p.parse_args()
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
    records = [
        {"model": "equipot", "variant": "reader", "dataset": "acac-synthetic", "metric": "peak_memory",
         "value": round(peak, 1), "unit": "MB", "n_configs": args.n, "file_mb": round(size_mb, 1),
         "read_s": round(read_s, 1), "rss_before_read_mb": round(rss0, 1)},
    ]
    write_result("data_memory", 1, records)
    md = ["# Reading a large data set", "", f"Machine: {machine(1)['cpu']}. Command: `python benchmarks/data_memory.py --n {args.n}`", "",
          "| configurations | file (MB) | read time (s) | peak RSS (MB) | neighbour lists + batching, 5000 configs (s) |",
          "|---|---|---|---|---|",
          f"| {args.n} | {size_mb:.0f} | {read_s:.0f} | {peak:.0f} | {batch_s:.1f} |"]
    (DOCS / "data_memory.md").write_text("\n".join(md) + "\n")
    print("\n".join(md))


if __name__ == "__main__":
    main()
