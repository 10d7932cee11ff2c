"""Our equivariant linear layer (equipot.o3.Linear) against e3nn's o3.Linear.

    python benchmarks/linear.py --threads 1

For layers of the widths the models use, two figures each: the time of a forward pass, a force
pass (the derivative with respect to the inputs, kept differentiable) and the backward of a loss
on it, at 75 rows (a training batch of five acac structures) and 960 (a box at inference),
float32, median of repeats; and the seconds and graph nodes of tracing that same computation
with make_fx and symbolic sizes, as equipot.model.compiled does for a whole model (without the
fake-tensor cache, as there; the second of two traces, so one-time set-up is not counted). Both compute the same function with the same
weights (tests/test_o3.py). Writes docs/benchmarks/linear.{json,md}.
"""

import argparse
import sys
import time

import torch
from torch._dynamo import config as dynamo_config
from torch.fx.experimental.proxy_tensor import make_fx

from common import DOCS, machine, write_result
from profiling import median_step_time

from e3nn import o3
from equipot.o3 import Linear

WIDTHS = ["16x0e+16x1o", "32x0e+32x1o+32x2e", "64x0e+64x1o+64x2e", "16x0e+16x0o+16x1o+16x1e+16x2e+16x2o"]


def force_pass(module):
    """weights, x -> (energy-like sum, its derivative with respect to x, kept differentiable)."""
    def run(weights, x):
        x = x.requires_grad_(True)
        y = torch.func.functional_call(module, weights, (x,))
        energy = (y * y).sum()
        (grad,) = torch.autograd.grad(energy, x, create_graph=True)
        return energy, grad
    return run


def trace_cost(module, rows: int):
    weights = {k: v.detach() for k, v in module.named_parameters()}
    x = torch.randn(rows, module.irreps_in.dim)
    for _ in range(2):
        start = time.perf_counter()
        # as equipot.model.compiled traces: without the fake-tensor dispatch cache
        with torch.enable_grad(), dynamo_config.patch(fake_tensor_cache_enabled=False):
            traced = make_fx(force_pass(module), tracing_mode="symbolic")(weights, x)
        seconds = time.perf_counter() - start
    return seconds, len(traced.graph.nodes)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--repeats", type=int, default=21)
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    records, rows = [], []
    for irreps in WIDTHS:
        ours = Linear(irreps, irreps)
        theirs = o3.Linear(irreps, irreps)
        theirs.load_state_dict(ours.state_dict())
        result = {}
        for name, module in (("e3nn o3.Linear", theirs), ("equipot.o3.Linear", ours)):
            run, weights = force_pass(module), dict(module.named_parameters())
            for n in (75, 960):
                x = torch.randn(n, module.irreps_in.dim)

                def step():
                    energy, grad = run(weights, x.clone())
                    (energy + grad.square().sum()).backward()
                result[name, n] = median_step_time(step, args.repeats, warmup=2)
            result[name, "trace"] = trace_cost(module, 75)
        for name in ("e3nn o3.Linear", "equipot.o3.Linear"):
            common = {"model": "equipot", "variant": name, "dataset": irreps, "dtype": "float32"}
            for n in (75, 960):
                records.append({**common, "metric": "latency", "value": round(1000 * result[name, n], 3),
                                "unit": "ms", "n_rows": n})
            seconds, nodes = result[name, "trace"]
            records.append({**common, "metric": "trace_s", "value": round(seconds, 3), "unit": "s", "nodes": nodes})
            rows.append((irreps, name, 1000 * result[name, 75], 1000 * result[name, 960], seconds, nodes))
        print(f"{irreps}: " + "; ".join(f"{r[1]} {r[2]:.2f} / {r[3]:.2f} ms, trace {r[4]:.2f} s ({r[5]} nodes)"
                                        for r in rows[-2:]), flush=True)
    path = write_result("linear", args.threads, records)
    md = ["# Equivariant linear layer: ours against e3nn's", "",
          f"Machine: {machine(args.threads)['cpu']}, {args.threads} thread(s), float32. Forward, force pass and the "
          f"backward of a loss on it, median of {args.repeats}; trace: make_fx with symbolic sizes of the same "
          f"computation at 75 rows (the second of two traces). Command: `python benchmarks/linear.py "
          f"{' '.join(sys.argv[1:])}`.", "",
          "| irreps (in = out) | layer | 75 rows (ms) | 960 rows (ms) | trace (s) | trace nodes |",
          "|---|---|---|---|---|---|"]
    md += [f"| {a} | {b} | {c:.2f} | {d:.2f} | {e:.2f} | {f} |" for a, b, c, d, e, f in rows]
    (DOCS / "linear.md").write_text("\n".join(md) + "\n")
    print("\n".join(md))
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
