"""Radial networks against their tables (EnergyModel.tabulate_radial): time and deviation.

    python benchmarks/radial_table.py --models 'equipot lmax 1, 32 ch, scalar messages' --compile

For each model of benchmarks/peers.py (untrained, the sizes timed there): energy + forces of the
960-atom acac box of benchmarks/speed.py with the radial networks and with their tables, the two
evaluators called in turn in one process (interleaved, so that both see the same machine load),
median and fastest of ``--repeats`` calls each, model call only (the graph is built once); and
how far the tabulated model's energies, forces and stress are from the networks' in float64
(largest difference over the largest value), with each table's intervals and size.
Writes docs/benchmarks/radial-table[-TAG].json and .md.
"""

import argparse
import sys
import time

import numpy as np
import torch

from common import DOCS, machine, write_result
from peers import EQUIPOT_MODELS, equipot_model


def deviation(path: str, config, tolerance: float) -> dict:
    """Largest float64 difference of the tabulated model from the networks, per output, relative."""
    from equipot.data import to_graph
    from equipot.model import load_model

    exact = load_model(path, dtype=torch.float64).eval()
    tabulated = load_model(path, dtype=torch.float64).eval()
    tabulated.energy_model.tabulate_radial(tolerance)
    graph = to_graph(config, exact.model_config.r_max).to(dtype=torch.float64)
    want, got = exact(graph), tabulated(graph)
    return {key: float((got[key] - want[key]).detach().abs().max() / want[key].detach().abs().max())
            for key in ("energies", "forces", "stress")}


def timing(path: str, config, compile: bool, repeats: int) -> dict:
    from equipot.data import to_graph
    from equipot.model import load_model
    from equipot.model.compiled import CompiledPotential

    networks = load_model(path, dtype=torch.float32).eval()
    tabulated = load_model(path, dtype=torch.float32).eval()
    start = time.perf_counter()
    tabulated.energy_model.tabulate_radial()
    build_s = time.perf_counter() - start
    tables = [layer.radial_table for layer in tabulated.energy_model.layers]
    graph = to_graph(config, networks.model_config.r_max).to(dtype=torch.float32)
    evaluators = [networks, tabulated]
    if compile:
        evaluators = [CompiledPotential(m, inference=True) for m in evaluators]
    for evaluate in evaluators:  # the first call compiles
        evaluate(graph)
    times = [[], []]
    for _ in range(repeats):
        for k, evaluate in enumerate(evaluators):
            start = time.perf_counter()
            evaluate(graph)
            times[k].append(time.perf_counter() - start)
    return {"networks_ms": 1000 * float(np.median(times[0])), "tables_ms": 1000 * float(np.median(times[1])),
            "networks_min_ms": 1000 * float(np.min(times[0])), "tables_min_ms": 1000 * float(np.min(times[1])),
            "build_s": build_s, "intervals": [t.intervals for t in tables],
            "table_mb": sum(t.coeffs.numel() * t.coeffs.element_size() for t in tables) / 2**20}


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--models", nargs="+", default=["equipot lmax 1, 32 ch, scalar messages",
                                                   "equipot lmax 1, 16 ch, mixed products"])
    p.add_argument("--atoms", type=int, default=960)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--repeats", type=int, default=31)
    p.add_argument("--compile", action="store_true", help="through CompiledPotential(inference=True)")
    p.add_argument("--tag", default=None)
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    from equipot.data import Configuration
    from speed import acac_box

    atoms = acac_box(max(1, args.atoms // 15))
    config = Configuration(numbers=atoms.numbers, positions=atoms.positions, cell=np.array(atoms.cell),
                           pbc=atoms.pbc)
    mode = "compiled" if args.compile else "eager"
    records, rows = [], []
    for label in args.models:
        path = equipot_model(label, EQUIPOT_MODELS[label])
        t = timing(path, config, args.compile, args.repeats)
        d64 = deviation(path, config, 1e-7)
        print(label, t, d64, flush=True)
        base = {"model": "equipot", "variant": f"{label}, {mode}", "dataset": "acac-box", "dtype": "float32",
                "n_atoms": len(atoms), "threads": args.threads}
        records += [
            {**base, "metric": "latency_networks", "value": round(t["networks_ms"], 2), "unit": "ms"},
            {**base, "metric": "latency_tables", "value": round(t["tables_ms"], 2), "unit": "ms",
             "intervals": t["intervals"], "table_mb": round(t["table_mb"], 2)},
            *[{**base, "dtype": "float64", "metric": f"relative_deviation_{key}", "value": float(f"{v:.3g}"),
               "unit": "fraction", "note": "tolerance 1e-7; largest difference over the largest value"}
              for key, v in d64.items()],
        ]
        rows.append(f"| {label} | {t['networks_ms']:.1f} ({t['networks_min_ms']:.1f}) | {t['tables_ms']:.1f} "
                    f"({t['tables_min_ms']:.1f}) | {t['networks_ms'] / t['tables_ms']:.2f}× | "
                    f"{' / '.join(str(k) for k in t['intervals'])} · {t['table_mb']:.1f} MiB · {t['build_s']:.2f} s | "
                    f"{d64['energies']:.1g} / {d64['forces']:.1g} / {d64['stress']:.1g} |")
    name = "radial-table" + (f"-{args.tag}" if args.tag else "")
    write_result(name, args.threads, records)
    md = [f"# Radial networks against their tables ({mode}, float32, {args.threads} thread(s))", "",
          f"Machine: {machine(args.threads)['cpu']}. Energy + forces of {len(atoms)} atoms (acac box), model call only, "
          f"the two evaluators called in turn in one process; median (fastest) of {args.repeats} calls. Deviation: "
          "float64, tabulated against the networks at the default tolerance (1e-7), largest difference over the "
          f"largest value. Command: `python benchmarks/radial_table.py {' '.join(sys.argv[1:])}`", "",
          "| model | networks, ms | tables, ms | speed-up | intervals per layer · size · build | deviation E_i / F / stress |",
          "|---|---|---|---|---|---|", *rows]
    (DOCS / f"{name}.md").write_text("\n".join(md) + "\n")
    print("\n".join(md))


if __name__ == "__main__":
    main()
