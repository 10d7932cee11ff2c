"""Energy + forces speed through the ASE calculator (neighbour list included).

    python benchmarks/speed.py MODEL --threads 1 --dtype float32 --sizes 15 120 960 7680

Boxes are built as in ../shared/bench/peers.md: randomly rotated acetylacetone copies,
400 Å³ per molecule, molecules at least 3 Å apart, periodic (15 atoms: one open molecule).
Reports the median time per call over repeated calls after warm-up, µs/atom/step and the
peak resident memory of a fresh process per size. Writes docs/benchmarks/speed-<tag>.json/.md.
"""

import argparse
import json
import resource
import subprocess
import sys
import time

import numpy as np

from common import DATA, DOCS, machine, write_result


def acac_box(n_molecules: int, seed: int = 0):
    import ase.io
    from ase import Atoms
    from scipy.spatial.transform import Rotation

    mol = ase.io.read(str(DATA / "acac" / "train_300K.xyz"), index=0)
    if n_molecules == 1:
        return Atoms(mol.numbers, mol.positions - mol.positions.mean(0))
    rng = np.random.default_rng(seed)
    length = (400.0 * n_molecules) ** (1 / 3)
    base = mol.positions - mol.positions.mean(0)
    placed, numbers = [], []
    while len(placed) < n_molecules:
        pos = Rotation.random(random_state=int(rng.integers(1 << 31))).apply(base) + rng.uniform(0, length, 3)
        ok = True
        for other in placed[-400:] if len(placed) > 400 else placed:
            d = pos[:, None, :] - other[None, :, :]
            d -= length * np.round(d / length)
            if np.min(np.linalg.norm(d, axis=-1)) < 3.0:
                ok = False
                break
        if ok:
            placed.append(pos)
            numbers.append(mol.numbers)
    return Atoms(np.concatenate(numbers), np.concatenate(placed) % length, cell=[length] * 3, pbc=True)


def measure(model: str, n_atoms: int, threads: int, dtype: str, repeats: int) -> dict:
    import torch

    from equipot import EquipotCalculator

    torch.set_num_threads(threads)
    atoms = acac_box(max(1, n_atoms // 15))
    atoms.calc = EquipotCalculator(model, dtype=dtype)
    times = []
    for k in range(repeats + 2):
        atoms.positions += 1e-4  # a new geometry each call, as in MD
        t = time.perf_counter()
        atoms.get_forces()
        if k >= 2:
            times.append(time.perf_counter() - t)
    peak_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    median = float(np.median(times))
    return {"n_atoms": len(atoms), "latency_ms": 1000 * median, "us_per_atom": 1e6 * median / len(atoms), "peak_mb": peak_mb}


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("model")
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--dtype", default="float32")
    p.add_argument("--sizes", type=int, nargs="+", default=[15, 120, 960])
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--tag", default="equipot")
    p.add_argument("--one", action="store_true", help=argparse.SUPPRESS)  # child process
    args = p.parse_args()
    if args.one:
        print(json.dumps(measure(args.model, args.sizes[0], args.threads, args.dtype, args.repeats)))
        return
    records, rows = [], []
    for n in args.sizes:
        cmd = [sys.executable, __file__, args.model, "--one", "--threads", str(args.threads), "--dtype", args.dtype,
               "--sizes", str(n), "--repeats", str(args.repeats)]
        r = json.loads(subprocess.check_output(cmd, text=True).strip().splitlines()[-1])
        rows.append(r)
        base = {"model": "equipot", "variant": args.tag, "dataset": "acac-box", "dtype": args.dtype,
                "n_atoms": r["n_atoms"], "threads": args.threads}
        records += [
            {**base, "metric": "latency", "value": round(r["latency_ms"], 3), "unit": "ms"},
            {**base, "metric": "throughput", "value": round(r["us_per_atom"], 2), "unit": "us/atom/step"},
            {**base, "metric": "peak_memory", "value": round(r["peak_mb"], 1), "unit": "MB"},
        ]
        print(f"{r['n_atoms']:7d} atoms  {r['latency_ms']:10.2f} ms  {r['us_per_atom']:9.1f} µs/atom  {r['peak_mb']:8.0f} MB", flush=True)
    name = f"speed-{args.tag}-{args.dtype}-t{args.threads}"
    write_result(name, args.threads, records)
    md = [f"# Speed: {args.tag}, {args.dtype}, {args.threads} thread(s)", "",
          f"Machine: {machine(args.threads)['cpu']}. Energy + forces through the ASE calculator, neighbour list "
          f"included; median of {args.repeats} calls. Command: `python benchmarks/speed.py MODEL --threads {args.threads} --dtype {args.dtype}`", "",
          "| atoms | ms/call | µs/atom/step | peak RSS (MB) |", "|---|---|---|---|"]
    md += [f"| {r['n_atoms']} | {r['latency_ms']:.1f} | {r['us_per_atom']:.1f} | {r['peak_mb']:.0f} |" for r in rows]
    (DOCS / f"{name}.md").write_text("\n".join(md) + "\n")


if __name__ == "__main__":
    main()
