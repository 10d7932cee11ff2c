"""Parallel speed-up on this machine's cores: data-parallel training and LAMMPS MD.

    python benchmarks/parallel.py train              # torchrun 2 processes vs 1, acac, configs/s
    python benchmarks/parallel.py train --batch-size 40
    python benchmarks/parallel.py train --batch-size 100 --data 3bpa   # 27-atom molecules
    python benchmarks/parallel.py lammps             # mpirun -np 2 vs 1, acac boxes, 10^3 .. 10^4 atoms
    python benchmarks/parallel.py lammps --sizes 960 9600 96000

One torch thread per process throughout; run on a quiet machine. parallel_speedup is the
time of 1 process over the time of 2 for the same work. The models are untrained (speed
does not depend on the weights): the fast configuration (lmax 1, 32 channels, scalar
messages, r_max 5 Å, 2 layers), float32. Writes docs/benchmarks/parallel-train-b<batch>.{json,md} and parallel-lammps.{json,md}.
"""

import argparse
import csv
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import yaml

from common import DATA, DOCS, REPO, machine, write_result

BIN = Path(sys.executable).parent
MODEL = {"r_max": 5.0, "num_layers": 2, "channels": 32, "lmax": 1, "message_lmax": 0, "correlation": 3}


def env() -> dict:
    e = {**os.environ, "OMP_NUM_THREADS": "1"}
    e["LD_LIBRARY_PATH"] = str(BIN.parent / "lib") + (":" + e["LD_LIBRARY_PATH"] if e.get("LD_LIBRARY_PATH") else "")
    return e


def training_data(name: str) -> dict:
    """The data section of the timed runs: acac (15 atoms) or 3BPA (27 atoms), 450 / 360 structures."""
    if name == "3bpa":
        from common import bpa_files

        return {"train": str(bpa_files()["train"]), "valid_fraction": 0.1, "e0s": str(DATA / "3bpa" / "iso_atoms.xyz"),
                "keys": {"energy": "energy", "forces": "forces"}}
    return {"train": str(DATA / "acac" / "train_300K.xyz"), "valid_fraction": 0.1, "max_train": 450,
            "e0s": str(DATA / "acac" / "isolated_atoms.xyz"), "keys": {"energy": "energy", "forces": "forces"}}


N_TRAIN = {"acac": 450, "3bpa": 360}


def train_epoch_seconds(processes: int, work: Path, batch_size: int, epochs: int, data: str = "acac") -> float:
    out = work / f"train-np{processes}"
    config = {
        "output_dir": str(out), "seed": 1234,
        "data": training_data(data),
        "model": MODEL,
        "training": {"dtype": "float32", "threads": 1, "batch_size": batch_size, "max_epochs": epochs, "lr": 0.01},
    }
    path = work / f"train-np{processes}.yaml"
    path.write_text(yaml.safe_dump(config))
    if processes == 1:
        cmd = [sys.executable, "-m", "equipot", "train", str(path), "--quiet", "--overwrite"]
    else:
        cmd = [str(BIN / "torchrun"), "--standalone", f"--nproc_per_node={processes}", "-m", "equipot", "train",
               str(path), "--quiet", "--overwrite"]
    subprocess.run(cmd, check=True, env=env(), capture_output=True)
    rows = list(csv.DictReader(open(out / "metrics.csv")))
    walls = [float(r["wall_s"]) for r in rows]
    steady = [b - a for a, b in zip(walls, walls[1:])]  # epochs after the first (start-up excluded)
    return sum(steady) / len(steady)


def bench_train(args) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        times = {p: train_epoch_seconds(p, Path(tmp), args.batch_size, args.epochs, args.data) for p in (1, 2)}
    n_train = N_TRAIN[args.data]
    speedup = times[1] / times[2]
    base = {"model": "equipot", "variant": "lmax1-c32-m0", "dataset": args.data, "dtype": "float32",
            "batch_size": args.batch_size}
    name = f"parallel-train-b{args.batch_size}" + ("" if args.data == "acac" else f"-{args.data}")
    records = [{**base, "metric": "training_throughput", "processes": p, "value": round(n_train / t, 2),
                "unit": "configs/s"} for p, t in times.items()]
    records.append({**base, "metric": "parallel_speedup", "value": round(speedup, 3), "unit": "x"})
    write_result(name, 1, records)
    md = [f"# Data-parallel training: torchrun, 2 processes vs 1, {args.data}, global batch {args.batch_size}", "",
          f"Machine: {machine(1)['cpu']}, one thread per process; {args.data}, {n_train} training structures "
          f"(+ {50 if args.data == 'acac' else 40} validation, in the epoch time), global batch {args.batch_size}, float32, model {MODEL}. Epoch time averaged over "
          f"epochs 2..{args.epochs}. Command: `python benchmarks/parallel.py {' '.join(sys.argv[1:])}`", "",
          "| processes | s/epoch | configs/s |", "|---|---|---|"]
    md += [f"| {p} | {t:.2f} | {n_train / t:.1f} |" for p, t in times.items()]
    md += ["", f"parallel_speedup: **{speedup:.2f}×**"]
    (DOCS / f"{name}.md").write_text("\n".join(md) + "\n")
    print("\n".join(md))


def bench_lammps(args) -> None:
    sys.path.insert(0, str(REPO / "benchmarks"))
    import torch

    from speed import acac_box

    from equipot.config import ModelConfig, _from_dict
    from equipot.data import Statistics
    from equipot.model import build_model, save_model

    records, rows = [], []
    with tempfile.TemporaryDirectory() as tmp:
        model = Path(tmp) / "model.safetensors"
        config = _from_dict(ModelConfig, MODEL, "model", "parallel.py")
        stats = Statistics(species=[1, 6, 8], e0={1: 0.0, 6: 0.0, 8: 0.0}, energy_shift=0.0, energy_scale=1.0,
                           avg_num_neighbors=19.0)
        torch.manual_seed(0)
        save_model(str(model), build_model(config, stats), config, stats)
        unit = acac_box(64)  # 960 atoms
        for n in args.sizes:
            copies = max(1, round(n / len(unit)))
            reps = [1, 1, 1]
            while reps[0] * reps[1] * reps[2] < copies:  # grow the shortest side first
                reps[reps.index(min(reps))] += 1
            atoms = unit.repeat(reps)
            structure = Path(tmp) / f"box{len(atoms)}.xyz"
            atoms.write(str(structure))
            steps = max(1, int(args.atom_steps // len(atoms)))
            result = {}
            for ranks in (1, 2):
                out = Path(tmp) / f"np{ranks}-{len(atoms)}.json"
                cmd = [str(BIN / "mpirun"), "-np", str(ranks), sys.executable, str(REPO / "benchmarks" / "lammps_md.py"),
                       str(model), str(structure), str(out), str(steps)]
                subprocess.run(cmd, check=True, env=env(), capture_output=True, timeout=3600)
                result[ranks] = json.loads(out.read_text())
            speedup = result[1]["s_per_step"] / result[2]["s_per_step"]
            rows.append((len(atoms), steps, result, speedup))
            base = {"model": "equipot", "variant": "lmax1-c32-m0", "dataset": "acac-box", "dtype": "float32",
                    "n_atoms": len(atoms)}
            for ranks, r in result.items():
                records.append({**base, "processes": ranks, "metric": "latency", "value": round(1000 * r["s_per_step"], 2), "unit": "ms"})
                records.append({**base, "processes": ranks, "metric": "peak_memory_per_rank", "value": round(max(r["peak_mb"]), 1), "unit": "MB"})
            records.append({**base, "metric": "parallel_speedup", "value": round(speedup, 3), "unit": "x"})
            print(f"{len(atoms)} atoms: {result[1]['s_per_step']:.3f} s/step on 1 rank, {result[2]['s_per_step']:.3f} on 2 "
                  f"-> {speedup:.2f}x", flush=True)
    write_result("parallel-lammps", 1, records)
    md = ["# LAMMPS MD (fix external), mpirun -np 2 vs 1", "",
          f"Machine: {machine(1)['cpu']}, one torch thread per rank; boxes of acetylacetone (copies of speed.py's "
          f"960-atom box), NVE, float32, model {MODEL}. Ghost shell: one receptive field (2 × 5 Å) + 1 Å skin. "
          f"Command: `python benchmarks/parallel.py {' '.join(sys.argv[1:])}`", "",
          "| atoms | steps timed | s/step, 1 rank | s/step, 2 ranks | speed-up | peak MB per rank (1 / 2 ranks) | ghosts per local atom (2 ranks) |",
          "|---|---|---|---|---|---|---|"]
    for n, steps, r, s in rows:
        md.append(f"| {n} | {steps} | {r[1]['s_per_step']:.3f} | {r[2]['s_per_step']:.3f} | {s:.2f}× | "
                  f"{max(r[1]['peak_mb']):.0f} / {max(r[2]['peak_mb']):.0f} | {r[2]['ghosts_per_local']:.2f} |")
    (DOCS / "parallel-lammps.md").write_text("\n".join(md) + "\n")
    print("\n".join(md))


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("kind", choices=["train", "lammps"])
    p.add_argument("--batch-size", type=int, default=10)
    p.add_argument("--data", default="acac", choices=sorted(N_TRAIN), help="training data of the timed runs")
    p.add_argument("--epochs", type=int, default=3)
    p.add_argument("--sizes", type=int, nargs="+", default=[960, 9600])
    p.add_argument("--atom-steps", type=float, default=20000, help="atoms × steps timed per size")
    args = p.parse_args()
    bench_train(args) if args.kind == "train" else bench_lammps(args)


if __name__ == "__main__":
    main()
