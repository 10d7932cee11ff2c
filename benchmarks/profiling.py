"""Where the time of a step goes: torch.profiler tables of an energy + forces call and of a
training step, grouped by operator and input shape.

    python benchmarks/profiling.py inference MODEL --atoms 960 --threads 1
    python benchmarks/profiling.py train --lmax 2 --channels 32 --batch-size 5

inference: MODEL's energy + forces on the acac box of benchmarks/speed.py (model call only; the
time to build the graph, mostly the neighbour list, is reported beside it). train: one optimizer step (forces in the loss, so a second backward pass) of an
untrained model on acac training structures. Prints the operators that take most of the
time per call, the number of operator calls per step and the median step time, and writes
docs/benchmarks/profile-<kind>-<tag>.md. Profiling is for finding work to remove; speed figures
come from benchmarks/speed.py and benchmarks/peers.py.
"""

import argparse
import sys
import time

import numpy as np
import torch

from common import DATA, DOCS, REPO, machine


def inference_step(args):
    from equipot.data import Configuration, to_graph
    from equipot.model import load_model
    from speed import acac_box

    model = load_model(args.model, dtype=getattr(torch, args.dtype)).eval()
    if args.tabulate:
        model.energy_model.tabulate_radial()
    atoms = acac_box(max(1, args.atoms // 15))
    config = Configuration(numbers=atoms.numbers, positions=atoms.positions, cell=np.array(atoms.cell),
                           pbc=atoms.pbc)
    dtype = getattr(torch, args.dtype)
    graph = to_graph(config, model.model_config.r_max).to(dtype=dtype)
    times = []
    for _ in range(5):
        t = time.perf_counter()
        to_graph(config, model.model_config.r_max).to(dtype=dtype)
        times.append(time.perf_counter() - t)
    evaluate = model
    if args.compile:
        from equipot.model.compiled import CompiledPotential

        evaluate = CompiledPotential(model, inference=True, vectorize=not args.no_vectorize)
        layout_times = []
        for _ in range(5):
            t = time.perf_counter()
            model.layout(graph)
            layout_times.append(time.perf_counter() - t)
    what = (f"{len(atoms)} atoms, {graph.edge_src.numel()} edges; building the graph (neighbour list, "
            f"not in the step) {1000 * float(np.median(times)):.1f} ms")
    if args.compile:
        what += f"; of the step, the eager layout {1000 * float(np.median(layout_times)):.1f} ms"
    return lambda: evaluate(graph), what


def train_step(args):
    from equipot.config import config_from_dict
    from equipot.train import Trainer
    from equipot.train.loss import combine, squared_error_terms

    dataset = getattr(args, "dataset", "acac")
    data = {"acac": {"train": str(DATA / "acac/train_300K.xyz"), "e0s": str(DATA / "acac/isolated_atoms.xyz")},
            "ethanol": {"train": str(DATA / "ethanol/train.xyz"), "e0s": "fit"}}[dataset]
    config = config_from_dict({
        "output_dir": str(REPO / "runs" / "profile-train"), "seed": 1,
        "data": {**data, "valid_fraction": 0.1, "max_train": 100, "keys": {"energy": "energy", "forces": "forces"}},
        "model": {"lmax": args.lmax, "channels": args.channels, "product_mixing": args.product_mixing,
                  "message_lmax": args.message_lmax, "sh_lmax": args.sh_lmax},
        "training": {"threads": args.threads, "batch_size": args.batch_size, "dtype": args.dtype},
    }, "profile config")
    trainer = Trainer(config, progress=False)
    trainer._setup(resume=False, overwrite=True)
    graphs = [g.to("cpu", getattr(torch, args.dtype)) for g in trainer.train_loader]
    evaluate = trainer.model
    if args.compile:
        from equipot.model.compiled import CompiledPotential

        evaluate = CompiledPotential(trainer.model, vectorize=getattr(args, "vectorize", False))
    weights, count = config.training.loss, [0]

    def step():
        graph = graphs[count[0] % len(graphs)]
        count[0] += 1
        trainer.optimizer.zero_grad(set_to_none=True)
        terms = squared_error_terms(evaluate(graph, training=True), graph, weights)
        combine(terms, trainer._global_counts(terms), weights).backward()
        trainer.optimizer.step()
        if trainer.ema:
            trainer.ema.update(trainer.model)

    step.evaluate = evaluate
    atoms = graphs[0].positions.shape[0]
    return step, f"batch of {args.batch_size} {dataset} structures ({atoms} atoms)"


def median_step_time(step, steps: int, warmup: int = 3) -> float:
    """Seconds per call of ``step``: the median of ``steps`` timed calls after ``warmup`` untimed ones."""
    for _ in range(warmup):
        step()
    times = []
    for _ in range(steps):
        start = time.perf_counter()
        step()
        times.append(time.perf_counter() - start)
    return float(np.median(times))


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("kind", choices=["inference", "train"])
    p.add_argument("model", nargs="?", help="model file (inference)")
    p.add_argument("--atoms", type=int, default=960)
    p.add_argument("--lmax", type=int, default=2)
    p.add_argument("--channels", type=int, default=32)
    p.add_argument("--batch-size", type=int, default=5)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--dtype", default="float32")
    p.add_argument("--steps", type=int, default=5)
    p.add_argument("--rows", type=int, default=25)
    p.add_argument("--product-mixing", action="store_true", help="train: model.product_mixing")
    p.add_argument("--message-lmax", type=int, default=None, help="train: model.message_lmax")
    p.add_argument("--sh-lmax", type=int, default=None, help="train: model.sh_lmax")
    p.add_argument("--compile", action="store_true",
                   help="through equipot.model.compiled (compiled during the warm-up steps, not timed; "
                   "inference=True for inference)")
    p.add_argument("--vectorize", action="store_true", help="train --compile: Inductor's SIMD loops on "
                   "(CompiledPotential(vectorize=True); inference has them by default)")
    p.add_argument("--no-vectorize", action="store_true", help="inference --compile: Inductor's SIMD loops off")
    p.add_argument("--tabulate", action="store_true", help="inference: the radial networks as tables "
                   "(EnergyModel.tabulate_radial, as the calculator does for compiled float32 models)")
    p.add_argument("--kernel-profile", action="store_true",
                   help="--compile: each of Inductor's generated C++ kernels recorded as its own profiler row")
    p.add_argument("--tag", default=None)
    args = p.parse_args()
    if args.kind == "inference" and not args.model:
        p.error("inference needs a MODEL file")
    if args.vectorize and args.kind != "train" or args.no_vectorize and args.kind != "inference":
        p.error("--vectorize is for train --compile, --no-vectorize for inference --compile")
    torch.set_num_threads(args.threads)
    if args.kernel_profile:
        import torch._inductor.config as inductor_config

        inductor_config.cpp.enable_kernel_profile = True
    step, what = inference_step(args) if args.kind == "inference" else train_step(args)
    median = median_step_time(step, args.steps)
    with torch.profiler.profile(record_shapes=True) as prof:
        for _ in range(args.steps):
            step()
    events = prof.key_averages(group_by_input_shape=True)
    total = sum(e.self_cpu_time_total for e in events)
    calls = sum(e.count for e in events if e.key.startswith("aten::")) / args.steps
    rows = sorted(events, key=lambda e: -e.self_cpu_time_total)[: args.rows]
    tag = args.tag or (f"lmax{args.lmax}-c{args.channels}-b{args.batch_size}"
                       + (f"-m{args.message_lmax}" if args.message_lmax is not None else "")
                       + (f"-sh{args.sh_lmax}" if args.sh_lmax is not None else "")
                       + ("-mix" if args.product_mixing else "") + ("-compiled" if args.compile else "")
                       if args.kind == "train"
                       else f"{args.atoms}" + ("-compiled" if args.compile else "") + ("-tables" if args.tabulate else ""))
    if args.kernel_profile and not args.tag:
        tag += "-kernels"
    if args.compile and (args.vectorize if args.kind == "train" else args.no_vectorize):
        tag += "-vectorized" if args.kind == "train" else "-not-vectorized"
    simd = ""
    if args.compile:  # CompiledPotential's default: SIMD loops for inference, not for training
        on = args.vectorize if args.kind == "train" else not args.no_vectorize
        simd = f"; compiled, Inductor's SIMD loops {'on' if on else 'off'}"
    md = [f"# Profile: {args.kind}, {tag}", "",
          f"Machine: {machine(args.threads)['cpu']}, {args.threads} thread(s), {args.dtype}; {what}{simd}; median step "
          f"{1000 * median:.1f} ms (without the profiler); {calls:.0f} aten operator calls per step. "
          f"Command: `python benchmarks/profiling.py {' '.join(sys.argv[1:])}`", "",
          "| share | ms per step | calls per step | operator | input shapes |", "|---|---|---|---|---|"]
    for e in rows:
        shapes = str(e.input_shapes).replace("|", "/")[:90]
        md.append(f"| {100 * e.self_cpu_time_total / total:.1f} % | {e.self_cpu_time_total / 1000 / args.steps:.2f} | "
                  f"{e.count / args.steps:g} | {e.key} | {shapes} |")
    (DOCS / f"profile-{args.kind}-{tag}.md").write_text("\n".join(md) + "\n")
    print("\n".join(md))


if __name__ == "__main__":
    main()
