"""Our kernels against e3nn: neighbour sums (edges) and node products.

    python benchmarks/kernels.py --threads 1
    python benchmarks/kernels.py products --threads 1

The edge operation of a layer (channel-wise product of neighbour features with the edge
harmonics, summed over each atom's edges) on a random graph of the size of a 960-atom
acetylacetone box (17 864 edges, at most 33 per atom), forward + backward to the features,
the harmonics and the weights (what a force evaluation does), float32, median of repeats.
Writes docs/benchmarks/kernels.{json,md}. The results of both are equal (tests/test_o3.py).

products: the channel-wise node products of ProductBasis (A ⊗ A' per channel, species
weights), e3nn's TensorProduct against ChannelProduct, on a training batch (75 atoms) and a
960-atom box, with what a training step asks of them: values, their gradient with the graph
kept (forces), and the backward pass of a loss on both (the force loss). Writes
docs/benchmarks/kernels-products.{json,md}.
"""

import argparse
import sys

import numpy as np
import torch
from e3nn import o3

from common import DOCS, machine, write_result
from profiling import median_step_time

from equipot.nn.interaction import uuu_instructions, uvu_instructions
from equipot.o3 import ChannelConvolution, ChannelProduct, ScalarConvolution, neighbour_slots

CASES = [  # (label, node irreps, lmax of the harmonics and of the features)
    ("first layer, lmax 1, 32 ch", "32x0e", 1),
    ("l = 1 messages, lmax 1, 32 ch", "32x0e+32x1o", 1),
    ("l = 1 messages, lmax 1, 16 ch", "16x0e+16x1o", 1),
    ("l = 2 messages, lmax 2, 32 ch", "32x0e+32x1o+32x2e", 2),
    ("l = 3 messages, lmax 3, 16 ch", "16x0e+16x1o+16x2e+16x3o", 3),
]


def graph(n: int = 960, per_atom: int = 19, max_per_atom: int = 33, seed: int = 0):
    g = np.random.default_rng(seed)
    counts = np.clip(g.poisson(per_atom, n), 1, max_per_atom)
    dst = np.repeat(np.arange(n), counts)
    src = g.integers(0, n, len(dst))
    return torch.as_tensor(src), torch.as_tensor(dst)


PRODUCT_CASES = [  # (node irreps, irreps out of the product, atoms)
    ("16x0e+16x1o", "16x0e+16x1o", 75), ("16x0e+16x1o", "16x0e", 75),
    ("16x0e+16x1o", "16x0e+16x1o", 960), ("16x0e+16x1o", "16x0e", 960),
    ("32x0e+32x1o+32x2e", "32x0e+32x1o+32x2e", 75), ("32x0e+32x1o+32x2e", "32x0e", 75),
    ("64x0e+64x1o+64x2e", "64x0e+64x1o+64x2e", 75), ("64x0e+64x1o+64x2e", "64x0e", 75),
    ("32x0e+32x1o+32x2e", "32x0e+32x1o+32x2e", 960),
]


def products(args) -> None:
    records, rows = [], []
    for irreps, target, n in PRODUCT_CASES:
        irreps, target = o3.Irreps(irreps), o3.Irreps(target)
        instructions = uuu_instructions(irreps, irreps, target)
        kernels = {"e3nn TensorProduct": o3.TensorProduct(irreps, irreps, target, instructions, shared_weights=False,
                                                          internal_weights=False),
                   "ChannelProduct": ChannelProduct(irreps, irreps, target, instructions)}
        x1 = torch.randn(n, irreps.dim, requires_grad=True)
        x2 = torch.randn(n, irreps.dim, requires_grad=True)
        w = torch.randn(n, kernels["ChannelProduct"].weight_numel, requires_grad=True)
        times = {}
        for name, kernel in kernels.items():
            def step():
                out = kernel(x1, x2, w)
                grads = torch.autograd.grad(out.square().sum(), (x1, x2, w), create_graph=True)
                (grads[0].square().sum() + out.sum()).backward()
            times[name] = median_step_time(step, args.repeats, warmup=2)
        label = f"{irreps} -> {target}, {n} atoms ({len(instructions)} paths)"
        add_times(records, rows, label, times, "e3nn TensorProduct", digits=2, n_atoms=n)
    write_tables("kernels-products", "Node products: ours against e3nn",
                 "Channel-wise (uuu) product of node features with per-atom weights: values, gradient with the graph "
                 f"kept, backward of a loss on both; median of {args.repeats}.", "product", records, rows, args.threads, 2)


def add_times(records: list, rows: list, label: str, times: dict, base_name: str, digits: int, **extra) -> None:
    """One record and one table row per kernel, with its speed-up over ``base_name``."""
    base = times[base_name]
    for name, t in times.items():
        records.append({"model": "equipot", "variant": name, "dataset": label, "metric": "latency",
                        "value": round(1000 * t, 3), "unit": "ms", **extra,
                        "speedup_over_e3nn": round(base / t, 3), "dtype": "float32"})
        rows.append((label, name, 1000 * t, base / t))
    print(f"{label}: " + ", ".join(f"{k} {1000 * v:.{digits}f} ms" for k, v in times.items()), flush=True)


def write_tables(name: str, title: str, what: str, first_column: str, records: list, rows: list, threads: int,
                 digits: int) -> None:
    """docs/benchmarks/NAME.json (records) and NAME.md (the table)."""
    path = write_result(name, threads, records)
    md = [f"# {title}", "", f"Machine: {machine(threads)['cpu']}, {threads} thread(s), float32. {what} "
          f"Command: `python benchmarks/kernels.py {' '.join(sys.argv[1:])}`.", "",
          f"| {first_column} | kernel | ms | speed-up over e3nn |", "|---|---|---|---|"]
    md += [f"| {a} | {b} | {c:.{digits}f} | {d:.2f}× |" for a, b, c, d in rows]
    (DOCS / f"{name}.md").write_text("\n".join(md) + "\n")
    print("\n".join(md))
    print(f"wrote {path}")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("kind", nargs="?", default="edges", choices=["edges", "products"])
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--repeats", type=int, default=7)
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    if args.kind == "products":
        return products(args)
    src, dst = graph()
    n, e = int(dst.max()) + 1, len(dst)
    table = neighbour_slots(dst, n)
    records, rows = [], []
    for label, irreps, lmax in CASES:
        irreps_in, irreps_sh = o3.Irreps(irreps), o3.Irreps.spherical_harmonics(lmax)
        allowed = [ir for ir in o3.Irreps.spherical_harmonics(lmax)]  # natural parity up to lmax
        allowed = [ir for _, ir in allowed]
        mid, instructions = uvu_instructions(irreps_in, irreps_sh, allowed)
        reference = o3.TensorProduct(irreps_in, irreps_sh, mid, instructions, shared_weights=False,
                                     internal_weights=False)
        kernels = {"e3nn TensorProduct + index_add": None,
                   "ChannelConvolution": ChannelConvolution(irreps_in, irreps_sh, mid, instructions)}
        if all(ir.l == 0 for _, ir in irreps_in):
            kernels["ScalarConvolution"] = ScalarConvolution(irreps_in, irreps_sh, mid, instructions)
        x = torch.randn(n, irreps_in.dim, requires_grad=True)
        vec = torch.randn(e, 3, requires_grad=True)
        w = torch.randn(e, reference.weight_numel, requires_grad=True)
        sh = o3.spherical_harmonics(irreps_sh, vec, True, normalization="component").detach().requires_grad_(True)
        probe = torch.randn(n, mid.dim)
        times = {}
        for name, kernel in kernels.items():
            def step():
                if kernel is None:
                    out = torch.zeros(n, mid.dim).index_add(0, dst, reference(x[src], sh, w))
                elif isinstance(kernel, ChannelConvolution):
                    out = kernel(x, sh, w, src, dst, table)
                else:
                    out = kernel(x, sh, w, src, table)
                torch.autograd.grad((out * probe).sum(), (x, sh, w))
            times[name] = median_step_time(step, args.repeats, warmup=2)
        add_times(records, rows, label, times, "e3nn TensorProduct + index_add", digits=1, n_atoms=n, n_edges=e)
    write_tables("kernels", "Edge kernels: ours against e3nn",
                 "Channel-wise product of node features with edge harmonics summed over each atom's edges, forward + "
                 f"backward (to features, harmonics, weights), {n} atoms, {e} edges (Poisson, mean 19, at most 33 per "
                 f"atom), median of {args.repeats}.", "edge operation", records, rows, args.threads, 1)

if __name__ == "__main__":
    main()
