"""Share of the machine's dense matmul peak that a model's energy + forces step reaches.

    python benchmarks/flops.py MODEL [MODEL ...] --atoms 960 --threads 1

Counts the floating-point operations of one energy + forces evaluation with
torch.utils.flop_counter's formulas (matmuls, batched matmuls and convolutions: the operations it
knows; elementwise work is not counted, so the share is a lower bound of the arithmetic
done) and times the same call (median of 9 after warm-up). The peak is measured here too:
a 1024 × 1024 float32 matmul. Writes docs/benchmarks/flops.{json,md}.
"""

import argparse
import time

import numpy as np
import torch

from common import DOCS, machine, write_result


def matmul_peak_gflops(dtype: torch.dtype = torch.float32) -> float:
    """GFLOP/s of a 1024 × 1024 matmul, the best of 20, on torch's current thread count."""
    a, b = torch.randn(1024, 1024, dtype=dtype), torch.randn(1024, 1024, dtype=dtype)
    for _ in range(3):
        a @ b
    times = []
    for _ in range(20):
        t = time.perf_counter()
        a @ b
        times.append(time.perf_counter() - t)
    return 2 * 1024**3 / min(times) / 1e9


def measure(path: str, n_atoms: int) -> dict:
    from equipot.data import Configuration, to_graph
    from equipot.model import load_model
    from speed import acac_box

    model = load_model(path, dtype=torch.float32).eval()
    atoms = acac_box(max(1, n_atoms // 15))
    config = Configuration(numbers=atoms.numbers, positions=atoms.positions, cell=np.array(atoms.cell),
                           pbc=atoms.pbc)
    graph = to_graph(config, model.model_config.r_max).to(dtype=torch.float32)
    from peer_worker import count_flops  # the count benchmarks/peers.py uses for every code

    flops = count_flops(lambda: model(graph))
    for _ in range(2):
        model(graph)
    times = []
    for _ in range(9):
        t = time.perf_counter()
        model(graph)
        times.append(time.perf_counter() - t)
    seconds = float(np.median(times))
    return {"n_atoms": len(atoms), "gflop": flops / 1e9, "seconds": seconds, "gflops": flops / seconds / 1e9}


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("models", nargs="+", help="MODEL or MODEL=LABEL")
    p.add_argument("--atoms", type=int, default=960)
    p.add_argument("--threads", type=int, default=1)
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    peak = matmul_peak_gflops()
    records, rows = [], []
    for item in args.models:
        path, _, label = item.partition("=")
        r = measure(path, args.atoms)
        share = r["gflops"] / peak
        rows.append((label or path, r, share))
        base = {"model": "equipot", "variant": label or path, "dataset": "acac-box", "dtype": "float32",
                "n_atoms": r["n_atoms"]}
        records += [{**base, "metric": "gflop_per_step", "value": round(r["gflop"], 3), "unit": "GFLOP"},
                    {**base, "metric": "achieved_gflops", "value": round(r["gflops"], 2), "unit": "GFLOP/s"},
                    {**base, "metric": "share_of_matmul_peak", "value": round(share, 4), "unit": "fraction"}]
    records.append({"model": "machine", "variant": "matmul 1024", "dataset": "-", "dtype": "float32",
                    "metric": "matmul_peak", "value": round(peak, 1), "unit": "GFLOP/s"})
    write_result("flops", args.threads, records)
    md = ["# Share of the matmul peak", "",
          f"Machine: {machine(args.threads)['cpu']}, {args.threads} thread(s), float32; energy + forces of one "
          f"{rows[0][1]['n_atoms']}-atom acac box (model call only, no neighbour list); FLOPs of matmuls, batched "
          f"matmuls and convolutions counted with torch.utils.flop_counter's formulas (elementwise work not counted: a lower bound). "
          f"Matmul peak measured now: {peak:.0f} GFLOP/s. Command: `python benchmarks/flops.py ...`", "",
          "| model | GFLOP per step | ms per step | GFLOP/s | share of peak |", "|---|---|---|---|---|"]
    md += [f"| {label} | {r['gflop']:.3f} | {1000 * r['seconds']:.1f} | {r['gflops']:.1f} | {100 * share:.1f} % |"
           for label, r, share in rows]
    (DOCS / "flops.md").write_text("\n".join(md) + "\n")
    print("\n".join(md))


if __name__ == "__main__":
    main()
