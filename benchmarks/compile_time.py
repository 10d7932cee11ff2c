"""How long `training.compile` takes before the first step, where that time goes, and what the
compiled steps then save against the eager model.

    python benchmarks/compile_time.py --lmax 2 --channels 32 --product-mixing
    python benchmarks/compile_time.py ... --cache-dir runs/inductor-cache   # twice: the warm cache
    python benchmarks/compile_time.py ... --vectorize        # Inductor's SIMD loops on
    python benchmarks/compile_time.py ... --inductor KEY=VALUE  # any other Inductor setting

The model and batches are those of `benchmarks/profiling.py train` (acac, or ethanol with
--dataset, batches of five structures, forces in the loss); a cache filled on one data set and
read on the other shows whether the data statistics change the compiled graph. Phases: the make_fx trace of energy and derivatives (its node
count says how big the graph handed to Inductor is), the whole first step (the trace, Dynamo
over the traced graph, AOTAutograd's split into forward and backward, Inductor's code for both
and the C++ builds, which run in Inductor's pool of build processes), and Dynamo's own timers. By
default Inductor's cache is a fresh empty folder, so the figures are a cold compile on a fresh
machine; with --cache-dir the cache is kept there, and a second run shows the warm one.
Writes docs/benchmarks/compile-<tag>.{json,md}.
"""

import argparse
import os
import shutil
import sys
import tempfile
import time


def parse_setting(text: str):
    key, _, value = text.partition("=")
    if not _:
        raise argparse.ArgumentTypeError(f"--inductor {text!r}: expected KEY=VALUE")
    for cast in (int, float):
        try:
            return key, cast(value)
        except ValueError:
            pass
    return key, {"true": True, "false": False, "none": None}.get(value.lower(), value)


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--lmax", type=int, default=2)
    p.add_argument("--channels", type=int, default=32)
    p.add_argument("--batch-size", type=int, default=5)
    p.add_argument("--dataset", default="acac", choices=["acac", "ethanol"],
                   help="the batches and statistics (both H, C, O: the same architecture)")
    p.add_argument("--product-mixing", action="store_true")
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--dtype", default="float32")
    p.add_argument("--steps", type=int, default=20, help="timed steps of each, eager and compiled")
    p.add_argument("--cache-dir", default=None, help="Inductor's cache folder (default: a fresh one, a cold compile)")
    p.add_argument("--inductor", type=parse_setting, action="append", default=[], metavar="KEY=VALUE",
                   help="a torch._inductor.config setting for this run")
    p.add_argument("--vectorize", action="store_true", help="Inductor's SIMD loops on (CompiledPotential(vectorize=True))")
    p.add_argument("--note", default=None, help="a remark kept in the record (e.g. what else ran)")
    p.add_argument("--tag", default=None)
    args = p.parse_args()
    if any(key == "cpp.simdlen" for key, _ in args.inductor):
        p.error("--inductor cpp.simdlen: use --vectorize (without it CompiledPotential sets cpp.simdlen=1)")
    cache = args.cache_dir or tempfile.mkdtemp(prefix="equipot-inductor-")
    os.environ["TORCHINDUCTOR_CACHE_DIR"] = os.path.abspath(cache)  # read when torch._inductor loads

    import torch
    import torch._dynamo.utils
    import torch._inductor.config as inductor_config

    from common import DOCS, machine, write_result
    from profiling import median_step_time, train_step

    for key, value in args.inductor:  # "cpp.threads" sets inductor_config.cpp.threads
        *path, name = key.split(".")
        target = inductor_config
        for part in path:
            target = getattr(target, part)
        setattr(target, name, value)
    torch.set_num_threads(args.threads)
    args.compile = True
    step, what = train_step(args)  # compiled
    warm_cache = any(os.scandir(cache)) if os.path.isdir(cache) else False

    t0 = time.perf_counter()
    step()
    first = time.perf_counter() - t0
    counters = torch._dynamo.utils.counters["inductor"]  # of the first step's compile
    cache_hits = {k: int(counters[k]) for k in ("fxgraph_cache_hit", "fxgraph_cache_miss")}
    timings = step.evaluate.timings[0]
    times = {}
    for name, run in (("compiled", step), ("eager", train_step(argparse.Namespace(**{**vars(args), "compile": False}))[0])):
        times[name] = median_step_time(run, args.steps)
    dynamo = torch._dynamo.utils.compile_times(repr="csv", aggregate=True)
    phases = dict(zip(dynamo[0], dynamo[1])) if isinstance(dynamo, tuple) else {}

    tag = args.tag or (f"lmax{args.lmax}-c{args.channels}-b{args.batch_size}" + ("-mix" if args.product_mixing else "")
                       + (f"-{args.dataset}" if args.dataset != "acac" else "")
                       + ("-vectorized" if args.vectorize else "") + "".join(f"-{k}={v}".replace("/", "_") for k, v in args.inductor)
                       + ("-warm" if warm_cache else ""))
    record = dict(model="equipot", variant=tag, dtype=args.dtype, unit="s")
    records = [
        {**record, "metric": "trace_s", "value": round(timings["trace_s"], 2), "nodes": timings["nodes"]},
        {**record, "metric": "first_step_s", "value": round(first, 2), "warm_cache": warm_cache, **cache_hits},
        {**record, "metric": "step_s_compiled", "value": round(times["compiled"], 5)},
        {**record, "metric": "step_s_eager", "value": round(times["eager"], 5)},
    ]
    extra = {"dynamo_compile_times": phases, "inductor": {k: v for k, v in args.inductor}, "vectorize": args.vectorize}
    write_result(f"compile-{tag}", args.threads, records, {**extra, **({"note": args.note} if args.note else {})})
    saved = times["eager"] - times["compiled"]
    md = [f"# Compile time of a training step: {tag}", "",
          f"Machine: {machine(args.threads)['cpu']}, {args.threads} thread(s), {args.dtype}; {what}; "
          f"Inductor cache {'warm' if warm_cache else 'cold (empty)'}; its compiled graphs found there "
          f"{cache_hits['fxgraph_cache_hit']}, compiled anew {cache_hits['fxgraph_cache_miss']}. "
          f"Command: `python benchmarks/compile_time.py {' '.join(sys.argv[1:])}`", "",
          *([args.note, ""] if args.note else []),
          "| phase | s |", "|---|---|",
          f"| make_fx trace of energy and derivatives ({timings['nodes']} nodes) | {timings['trace_s']:.1f} |",
          f"| first step (Dynamo, AOTAutograd, Inductor forward and backward, C++ build; the trace included) | {first:.1f} |"]
    md += [f"| of which Dynamo timer `{k}` | {float(v):.1f} |" for k, v in phases.items()
           if isinstance(v, (int, float, str)) and _number(v) and float(v) >= 0.5]
    md += ["", f"Then a step takes {1000 * times['compiled']:.1f} ms compiled against {1000 * times['eager']:.1f} ms "
           f"eager (median of {args.steps})" + (f": the compile is paid back after {first / saved:.0f} steps."
                                                  if saved > 0 else ": compiling does not pay back here.")]
    (DOCS / f"compile-{tag}.md").write_text("\n".join(md) + "\n")
    print("\n".join(md))
    if not args.cache_dir:  # the fresh folder of a cold run
        shutil.rmtree(cache, ignore_errors=True)


def _number(v) -> bool:
    try:
        float(v)
        return True
    except ValueError:
        return False


if __name__ == "__main__":
    main()
