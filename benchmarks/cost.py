"""What the extra physics costs: typed-output heads and long-range electrostatics.

    python benchmarks/cost.py heads --threads 1        # energy-only vs + dipole/charges vs + pseudoscalar
    python benchmarks/cost.py long-range --threads 1   # local vs long-range model, periodic boxes to 10^4 atoms
    python benchmarks/cost.py pme --threads 1          # torch-pme time vs N up to 10^5 charges
    python benchmarks/cost.py train-step --threads 1   # training steps on small periodic ionic cells

Untrained models of the same size (timing does not depend on the weights), energy + forces
(+ the outputs) through the ASE calculator on the acac boxes of speed.py. Run on a quiet machine.
Writes docs/benchmarks/cost-<kind>.{json,md,png}.
"""

import argparse
import json
import subprocess
import sys
import time

import numpy as np

from common import DATA, DOCS, REPO, machine, untrained_model, write_result

VARIANTS = {
    "heads": {
        "energy only": {},
        "+ dipole, charges": {"outputs": {"dipole": "dipole", "charges": "charges"}},
        "both parities, energy only": {"parity": "both"},
        "both parities + pseudoscalar": {"parity": "both", "outputs": {"chirality": "0o"}},
    },
    "long-range": {
        "local": {},
        "long range": {"long_range": {"smearing": 1.0}},
        "long range, accuracy 1e-3": {"long_range": {"smearing": 1.0, "accuracy": 1e-3}},
    },
}


def model_file(name: str, extra: dict) -> str:
    return untrained_model("cost", name, {"channels": 32, "lmax": 1, **extra})


def time_models(kind: str, threads: int, sizes, repeats: int):
    rows, records = [], []
    for name, extra in VARIANTS[kind].items():
        path = model_file(name, extra)
        for n in sizes:
            cmd = [sys.executable, str(REPO / "benchmarks" / "speed.py"), path, "--one", "--threads", str(threads),
                   "--dtype", "float32", "--sizes", str(n), "--repeats", str(repeats)]
            r = json.loads(subprocess.check_output(cmd, text=True).strip().splitlines()[-1])
            rows.append((name, r))
            records.append({"model": "equipot", "variant": name, "dataset": "acac-box", "dtype": "float32",
                            "n_atoms": r["n_atoms"], "metric": "throughput", "value": round(r["us_per_atom"], 2),
                            "unit": "us/atom/step"})
            print(f"{name:32s} {r['n_atoms']:6d} atoms {r['us_per_atom']:9.1f} µs/atom", flush=True)
    write_result(f"cost-{kind}", threads, records)
    base = {r["n_atoms"]: r["us_per_atom"] for name, r in rows if name == next(iter(VARIANTS[kind]))}
    md = [f"# Cost of {kind}", "", f"Machine: {machine(threads)['cpu']}, {threads} thread(s), float32; energy + forces "
          f"(+ outputs) through the ASE calculator; lmax 1, 32 channels, untrained; median of {repeats} calls. "
          f"Command: `python benchmarks/cost.py {' '.join(sys.argv[1:])}`",
          "", "| model | atoms | µs/atom/step | relative to the first row |", "|---|---|---|---|"]
    md += [f"| {name} | {r['n_atoms']} | {r['us_per_atom']:.1f} | {r['us_per_atom'] / base[r['n_atoms']]:.2f}× |" for name, r in rows]
    (DOCS / f"cost-{kind}.md").write_text("\n".join(md) + "\n")
    print("\n".join(md))


def time_pme(threads: int, sizes, repeats: int):
    import torch

    from equipot.electrostatics import Electrostatics

    torch.set_num_threads(threads)
    rows, records = [], []
    from vesin import NeighborList

    for method in ("pme", "pme, range split", "ewald"):
        split = method == "pme, range split"  # as inside a model: the pairs within r_max = 5 Å given
        solver = Electrostatics(1.0, "pme" if split else method, accuracy=1e-4, pair_cutoff=5.0 if split else None)
        for n in sizes:
            if method == "ewald" and n > 1000:  # its k-space sum grows as N²
                continue
            rng = np.random.default_rng(0)
            length = (n / 0.1) ** (1 / 3)  # 0.1 atoms per Å³, like water
            pos = torch.tensor(rng.uniform(0, length, (n, 3)), dtype=torch.float32, requires_grad=True)
            q = torch.tensor(rng.normal(size=n), dtype=torch.float32)
            q = q - q.mean()
            cell = torch.eye(3)[None] * length
            args = (q, cell, torch.ones(1, 3, dtype=torch.bool), torch.zeros(n, dtype=torch.long), 1)
            if split:  # the model's neighbour list exists anyway: not timed
                # vesin directly: uniformly random charges may come closer than equipot's 0.1 Å guard
                i, j, shift = NeighborList(cutoff=5.0, full_list=True).compute(
                    points=pos.detach().numpy().astype(np.float64), box=cell[0].numpy().astype(np.float64),
                    periodic=True, quantities="ijS")
                src, dst, shift = torch.as_tensor(j.astype(np.int64)), torch.as_tensor(i.astype(np.int64)), torch.as_tensor(shift)
                offsets = shift.to(torch.float32) @ cell[0]
            times = []
            for k in range(repeats + 1):
                t = time.perf_counter()
                pairs = (src, dst, pos[src] - pos[dst] + offsets) if split else None
                e = solver(q, pos, *args[1:], pairs).sum()
                torch.autograd.grad(e, pos)
                if k:
                    times.append(time.perf_counter() - t)
            ms = 1000 * float(np.median(times))
            rows.append((method, n, ms))
            records.append({"model": f"torch-pme {method}", "variant": "smearing 1 A, accuracy 1e-4", "dataset": "random charges",
                            "dtype": "float32", "n_atoms": n, "metric": "latency", "value": round(ms, 2), "unit": "ms"})
            print(f"{method} {n:7d} {ms:10.1f} ms", flush=True)
    write_result("cost-pme", threads, records)
    pme_docs(rows, threads)


def growth_exponent(rows, method: str):
    """Least-squares a in t ∝ N^a over the sizes from 10^3 on (below, the mesh's fixed costs), and the same for N log N's own values (what a
    solver growing exactly as N log N would show over the same sizes)."""
    xs = np.array([n for m, n, _ in rows if m == method and n >= 1000], dtype=float)
    ys = np.array([t for m, n, t in rows if m == method and n >= 1000])
    if len(xs) < 2:
        return None, None
    return float(np.polyfit(np.log(xs), np.log(ys), 1)[0]), float(np.polyfit(np.log(xs), np.log(xs * np.log(xs)), 1)[0])


def pme_docs(rows, threads: int) -> None:
    """Plot and table of the PME timings (rows: solver, charges, ms)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(5, 3.6))
    for method, marker in (("pme", "o"), ("pme, range split", "^"), ("ewald", "s")):
        xs = np.array([n for m, n, _ in rows if m == method])
        ys = np.array([t for m, _, t in rows if m == method])
        ax.loglog(xs, ys, marker=marker, label=method)
    xs = np.array([n for m, n, _ in rows if m == "pme"], dtype=float)
    ref = xs * np.log(xs)
    ys_pme = np.array([t for m, _, t in rows if m == "pme"])
    ax.loglog(xs, ref * ys_pme[-1] / ref[-1], "k--", lw=1, label="N log N")
    ax.set_xlabel("charges")
    ax.set_ylabel("energy + forces (ms)")
    ax.legend()
    fig.tight_layout()
    fig.savefig(DOCS / "cost-pme.png", dpi=110)
    plt.close(fig)
    md = ["# torch-pme time against system size", "", f"Machine: {machine(threads)['cpu']}, {threads} thread(s), float32; "
          "random neutral charges at 0.1 per Å³, smearing 1 Å, accuracy 1e-4 (equipot's defaults); energy + forces; "
          "'range split': PME of σ_k with the pairs within 5 Å given, as a model passes its neighbour list. "
          f"Command: `python benchmarks/cost.py pme --threads {threads}`", "", "| solver | charges | ms | µs per charge |",
          "|---|---|---|---|"]
    md += [f"| {m} | {n} | {t:.1f} | {1000 * t / n:.1f} |" for m, n, t in rows]
    md += [""]
    for method in ("pme", "pme, range split"):
        a, a_ref = growth_exponent(rows, method)
        if a is not None:
            md.append(f"- {method}: time grows as N^{a:.2f} from 10^3 charges on (least squares on log–log); an exactly "
                      f"N log N cost would give N^{a_ref:.2f} over the same sizes.")
    md += ["", "![PME scaling](cost-pme.png)"]
    (DOCS / "cost-pme.md").write_text("\n".join(md) + "\n")
    print("\n".join(md))


def pme_report() -> None:
    """The table and plot again from docs/benchmarks/cost-pme.json (no timing)."""
    result = json.loads((DOCS / "cost-pme.json").read_text())
    rows = [(r["model"].removeprefix("torch-pme "), r["n_atoms"], r["value"]) for r in result["records"]]
    pme_docs(rows, result["machine"]["threads"])


def time_train_step(threads: int, repeats: int) -> None:
    """A training step (energy, forces and stress in the loss, backward) on batches of ten
    30–32-atom ionic_pbc cells: the local model, the long-range model (Ewald below 150 atoms),
    and the electrostatics alone (forward, forces, a force loss backward) with equipot's batched
    Ewald sum and with torch-pme's EwaldCalculator vmapped over the cells (the former code)."""
    import warnings

    import torch

    from equipot.config import LongRangeConfig, ModelConfig
    from equipot.data import Statistics, make_batch, read_configurations
    from equipot.electrostatics import Electrostatics
    from equipot.geometry import edge_vectors
    from equipot.model import build_model

    torch.set_num_threads(threads)
    warnings.filterwarnings("ignore")
    path = DATA / "xtb/ionic_pbc/train.xyz"
    configs = read_configurations(str(path), keys={"energy": "energy", "forces": "forces", "stress": "stress"})[:40]
    batches = [make_batch(configs[i : i + 10], 5.0).to("cpu", torch.float32) for i in range(0, 40, 10)]
    species = sorted({int(z) for c in configs for z in c.numbers})
    stats = Statistics(species=species, e0={z: 0.0 for z in species}, energy_shift=0.0, energy_scale=1.0,
                       avg_num_neighbors=30.0)

    def median_ms(step):
        for g in batches[:2]:
            step(g)
        times = []
        for _ in range(repeats):
            for g in batches:
                t = time.perf_counter()
                step(g)
                times.append(time.perf_counter() - t)
        return 1000 * float(np.median(times))

    rows = []
    for name, long_range in (("local model", None), ("long-range model", LongRangeConfig(smearing=1.0))):
        torch.manual_seed(0)
        config = ModelConfig(r_max=5.0, channels=32, lmax=1, parity="natural", correlation=3, num_layers=2,
                             long_range=long_range)
        model = build_model(config, stats).float()

        def step(g, model=model):
            out = model(g, training=True)
            loss = (out["energy"] ** 2).mean() + (out["forces"] ** 2).mean() + (out["stress"] ** 2).mean()
            loss.backward()

        rows.append((name, median_ms(step)))

    solver = Electrostatics(1.0, pair_cutoff=5.0).float()

    def electrostatics(g, torchpme=False, split=True):
        pos = g.positions.clone().requires_grad_(True)
        q = torch.tanh(pos.sum(1))
        if torchpme:  # the former code: torch-pme's calculator vmapped over the padded cells
            from torchpme.lib.kvectors import compute_batched_kvectors

            counts = torch.bincount(g.node_graph, minlength=g.n_graphs)
            graphs = list(range(g.n_graphs))
            index, mask = solver._padded_index(counts, graphs)
            qp, pp = q[index] * mask, pos[index] * mask[..., None]
            kvectors = compute_batched_kvectors(solver.wavelength, g.cell)
            empty_idx = torch.zeros((g.n_graphs, 0, 2), dtype=torch.long)
            empty_dist = torch.zeros((g.n_graphs, 0))
            phi = torch.vmap(lambda q_, c, p, i, d, m, k: solver.ewald(q_[:, None], c, p, i, d, node_mask=m, kvectors=k))(
                qp, g.cell, pp, empty_idx, empty_dist, mask, kvectors)[..., 0]
            e = (qp * phi).sum()
        else:
            pairs = (g.edge_src, g.edge_dst, edge_vectors(pos, g.cell, g.node_graph, g.edge_src, g.edge_dst, g.edge_shift))
            pairs = pairs if split else None
            e = solver(q, pos, g.cell, g.pbc, g.node_graph, g.n_graphs, pairs).sum()
        (forces,) = torch.autograd.grad(e, pos, create_graph=True)
        (forces**2).sum().backward()

    rows.append(("electrostatics alone, equipot's batched Ewald (range split)", median_ms(electrostatics)))
    rows.append(("electrostatics alone, equipot's batched Ewald (no split)", median_ms(lambda g: electrostatics(g, split=False))))
    rows.append(("electrostatics alone, torch-pme's EwaldCalculator vmapped", median_ms(lambda g: electrostatics(g, True))))
    records = [{"model": "equipot", "variant": name, "dataset": "ionic_pbc", "dtype": "float32", "n_atoms": 10 * 31,
                "metric": "train_step_latency", "value": round(ms, 2), "unit": "ms"} for name, ms in rows]
    write_result("cost-train-step", threads, records)
    md = ["# Cost of a training step on small periodic ionic cells", "",
          f"Machine: {machine(threads)['cpu']}, {threads} thread(s), float32; batches of ten 30–32-atom cells of "
          "../shared/data/xtb/ionic_pbc; lmax 1, 32 channels, untrained; energy, forces and stress in the loss, "
          f"then backward; median over {repeats} × 4 batches. Command: `python benchmarks/cost.py train-step "
          f"--threads {threads} --repeats {repeats}`", "", "| what | ms per batch |", "|---|---|"]
    md += [f"| {name} | {ms:.1f} |" for name, ms in rows]
    md += ["", f"Long-range / local: {rows[1][1] / rows[0][1]:.2f}×. torch-pme's vmapped calculator (σ, the box of ±k) "
           f"against equipot's batched sum: {rows[4][1] / rows[3][1]:.1f}× slower without the range split (the ball of "
           f"one of each ±k and the batched products), {rows[4][1] / rows[2][1]:.1f}× with it (as inside a model)."]
    (DOCS / "cost-train-step.md").write_text("\n".join(md) + "\n")
    print("\n".join(md))


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("kind", choices=["heads", "long-range", "pme", "train-step"])
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--sizes", type=int, nargs="+")
    p.add_argument("--report", action="store_true", help="pme: rebuild the table and plot from the JSON, no timing")
    args = p.parse_args()
    if args.kind == "train-step":
        time_train_step(args.threads, args.repeats)
    elif args.kind == "pme" and args.report:
        pme_report()
    elif args.kind == "pme":
        time_pme(args.threads, args.sizes or [150, 300, 1000, 3000, 10000, 30000, 100000], args.repeats)
    else:
        default = [960] if args.kind == "heads" else [960, 7680]
        time_models(args.kind, args.threads, args.sizes or default, args.repeats)


if __name__ == "__main__":
    main()
