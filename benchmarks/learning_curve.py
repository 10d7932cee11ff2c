"""Data efficiency: force error against training-set size, for equivariant models, the
invariant baseline and a non-equivariant network trained with random rotations.

    python benchmarks/learning_curve.py ethanol --models lmax1 invariant cartesian --threads 1
    python benchmarks/learning_curve.py ethanol --report      # table and plot from the points done

Every (model, size) point trains on the first N structures of the seeded training split
(the validation structures are the same for every point) for a wall-clock budget that grows
with N (``--minutes`` + ``--minutes-per-100`` per 100 structures), then is evaluated on the
whole test file and, in float64, on the first ``--rotation-configs`` test structures turned by
``--rotations`` random rotations: an equivariant model's error is the same in every
orientation (spread at float64 rounding), a model that learnt invariance from data is not.
A point's record (its errors, budget, epochs and command) is written to
docs/benchmarks/learning_curve-points/<dataset>[-<tag>]/<model>-n<N>.json, to be committed, and
its training run to runs/learning_curve/; a point whose record exists is skipped, so a curve can
be stopped and continued later, on another machine too (``--rotations-only`` needs the runs).
Writes docs/benchmarks/learning_curve-<dataset>[-<tag>].{json,md,png}.
"""

import argparse
import json
import math
import sys
import time
from pathlib import Path

import numpy as np
import torch

from common import DATA, DOCS, REPO, machine, write_result

DATASETS = {
    "ethanol": {"train": "ethanol/train.xyz", "valid_fraction": 0.05, "e0s": "fit", "test": "ethanol/test_MD.xyz",
                "sizes": [25, 50, 100, 250, 500, 950],
                # force MAE (meV/Å) published for MACE (MACE paper, rMD17 ethanol)
                "published": {"mace": {50: 32.6, 950: 2.1}, "nequip": {50: 40.2, 950: 2.8}}},
    "acac": {"train": "acac/train_300K.xyz", "valid_fraction": 0.1, "e0s": "acac/isolated_atoms.xyz",
             "test": "acac/test_MD_300K.xyz", "sizes": [25, 50, 100, 250, 450], "published": {}},
}

# the models of the curve; the equivariant ones are the network of issue 2 at lmax 1..3, the
# invariant one sees distances only (lmax 0), the Cartesian one sees raw coordinates
MODELS = {
    "lmax1": {"model": {"lmax": 1, "channels": 32}},
    "lmax2": {"model": {"lmax": 2, "channels": 32}},
    "lmax3": {"model": {"lmax": 3, "channels": 32}},
    "invariant": {"model": {"lmax": 0, "channels": 32}},
    "cartesian": {"model": {"architecture": "cartesian", "channels": 64}, "training": {"augment_rotations": True}},
    # the recipe of examples/configs/fast.yaml (scalar messages, sh_lmax 3, mixed products,
    # compiled; the compile is paid inside each point's budget)
    "fast": {"model": {"lmax": 1, "channels": 32, "message_lmax": 0, "sh_lmax": 3, "product_mixing": True},
             "training": {"compile": True}},
}
LABELS = {"lmax1": "equipot lmax 1", "lmax2": "equipot lmax 2", "lmax3": "equipot lmax 3",
          "invariant": "invariant (lmax 0)", "cartesian": "Cartesian MLP + rotations",
          "fast": "equipot fast.yaml recipe"}


def budget_minutes(n: int, args) -> float:
    return args.minutes + args.minutes_per_100 * n / 100.0


RUNS = REPO / "runs" / "learning_curve"  # training runs (models, checkpoints): not committed
RECORDS = DOCS / "learning_curve-points"  # one JSON per point: committed, so curves continue elsewhere


TAG = ""  # --tag: a separate set of points (another budget), docs learning_curve-<dataset>-<tag>


def point_dir(dataset: str) -> Path:
    """Where the training runs of a curve's points go."""
    return RUNS / (dataset + (f"-{TAG}" if TAG else ""))


def record_dir(dataset: str) -> Path:
    """Where the records of a curve's points go (one JSON per point)."""
    return RECORDS / (dataset + (f"-{TAG}" if TAG else ""))


def doc_name(dataset: str) -> str:
    return f"learning_curve-{dataset}" + (f"-{TAG}" if TAG else "")


def rotated_errors(model_path: str, configs, n_rotations: int, seed: int = 0) -> np.ndarray:
    """Force RMSE (meV/Å) of the float64 model on ``configs`` turned by each of ``n_rotations``
    random rotations (the reference forces turned with them). The RMSE, unlike the MAE of
    Cartesian components, does not depend on the orientation for an equivariant model."""
    from equipot.data import Configuration
    from equipot.evaluate import predict
    from equipot.model import load_model
    from equipot.train.augment import random_rotations

    model = load_model(model_path, dtype=torch.float64)
    rotations = random_rotations(n_rotations, torch.Generator().manual_seed(seed)).numpy()
    rmses = []
    for r in rotations:
        moved = [Configuration(c.numbers, c.positions @ r.T, c.cell @ r.T, c.pbc,
                               targets={"forces": c.targets["forces"] @ r.T}) for c in configs]
        preds = predict(model, moved, batch_size=50)
        err = np.concatenate([(p["forces"] - c.targets["forces"]).ravel() for p, c in zip(preds, moved)])
        rmses.append(1000 * np.sqrt(np.mean(err ** 2)))
    return np.array(rmses)


def run_point(dataset: str, name: str, n: int, args) -> dict:
    """Train and evaluate one point, or return it if it is already done."""
    from common import train_model
    from equipot.data import read_configurations
    from equipot.evaluate import evaluate_file

    spec, out = DATASETS[dataset], point_dir(dataset)
    record_path = record_dir(dataset) / f"{name}-n{n}.json"
    if record_path.exists():
        point = json.loads(record_path.read_text())
        if point.get("scheduler", "plateau") != args.scheduler:
            raise SystemExit(f"{record_path} was trained with the {point.get('scheduler', 'plateau')} schedule, "
                             f"not {args.scheduler}: keep the two sets apart with --tag")
        if point.get("patience") != args.patience:
            raise SystemExit(f"{record_path} was trained with patience {point.get('patience')}, not "
                             f"{args.patience}: keep the two sets apart with --tag")
        if point.get("forces_weight", 100.0) != args.forces_weight:
            raise SystemExit(f"{record_path} was trained with forces weight {point.get('forces_weight', 100.0):g}, "
                             f"not {args.forces_weight:g}: keep the two sets apart with --tag")
        if not math.isclose(point["budget_minutes"], budget_minutes(n, args)):
            raise SystemExit(f"{record_path} was trained for {point['budget_minutes']:g} min, not "
                             f"{budget_minutes(n, args):g}: keep the two sets apart with --tag")
        return point
    minutes = budget_minutes(n, args)
    values = {
        "output_dir": str(out / f"{name}-n{n}"), "seed": 1234,
        "data": {"train": str(DATA / spec["train"]), "valid_fraction": spec["valid_fraction"],
                 "e0s": spec["e0s"] if spec["e0s"] == "fit" else str(DATA / spec["e0s"]),
                 "keys": {"energy": "energy", "forces": "forces"}, "max_train": n},
        "model": {"r_max": 5.0, "num_layers": 2, "correlation": 3, **MODELS[name]["model"]},
        "training": {"dtype": "float32", "threads": args.threads, "batch_size": 5, "lr": 0.01,
                     "max_epochs": 100000, "max_minutes": minutes, "patience": args.patience or 100000,
                     "scheduler": args.scheduler,
                     "lr_patience": 10, "lr_factor": 0.8, "ema_decay": 0.99,
                     "loss": {"energy": 1.0, "forces": args.forces_weight}, **MODELS[name].get("training", {})},
    }
    print(f"[{time.strftime('%H:%M:%S')}] {dataset} {name} N={n}: training {minutes:.1f} min", flush=True)
    model, result, wall = train_model(values)
    test = DATA / spec["test"]
    s = evaluate_file(model, str(test), progress=False)
    configs = read_configurations(str(test), keys={"energy": "energy", "forces": "forces"})[: args.rotation_configs]
    rmses = rotated_errors(f"{values['output_dir']}/model.safetensors", configs, args.rotations)
    point = {"model": name, "n_train": n, "train_wall_s": round(wall), "budget_minutes": minutes,
             "epochs": result["epochs"], "n_params": sum(p.numel() for p in model.parameters()),
             "forces_mae": s["forces_mae"], "forces_rmse": s["forces_rmse"], "energy_mae": s["energy_mae"],
             "energy_rmse": s["energy_rmse"], "rotated_forces_rmse_mean": float(rmses.mean()),
             "rotated_forces_rmse_std": float(rmses.std()), "rotated_forces_rmse_range": float(rmses.max() - rmses.min()),
             "n_rotations": args.rotations, "n_rotated_configs": len(configs), "threads": args.threads,
             "command": "python " + " ".join(["benchmarks/learning_curve.py"] + sys.argv[1:]),
             "patience": args.patience, "scheduler": args.scheduler, "forces_weight": args.forces_weight}
    record_path.parent.mkdir(parents=True, exist_ok=True)
    tmp = record_path.with_suffix(".tmp")
    tmp.write_text(json.dumps(point, indent=1))
    tmp.replace(record_path)
    print(f"    F MAE {s['forces_mae']:.2f} meV/Å; F RMSE rotated {rmses.mean():.3f} ± {rmses.std():.2e}", flush=True)
    return point


def reevaluate_rotations(dataset: str, args) -> None:
    """Measure the spread over rotations again for every point done (their models are kept)."""
    from equipot.data import read_configurations

    test = DATA / DATASETS[dataset]["test"]
    configs = read_configurations(str(test), keys={"energy": "energy", "forces": "forces"})[: args.rotation_configs]
    for path in sorted(record_dir(dataset).glob("*-n*.json")):
        point = json.loads(path.read_text())
        model_path = point_dir(dataset) / path.stem / "model.safetensors"
        if not model_path.exists():
            raise SystemExit(f"{path.name}: its model {model_path} is not on this machine; train the point again")
        rmses = rotated_errors(str(model_path), configs, args.rotations)
        point.update({"rotated_forces_rmse_mean": float(rmses.mean()), "rotated_forces_rmse_std": float(rmses.std()),
                      "rotated_forces_rmse_range": float(rmses.max() - rmses.min()),
                      "n_rotations": args.rotations, "n_rotated_configs": len(configs)})
        tmp = path.with_suffix(".tmp")
        tmp.write_text(json.dumps(point, indent=1))
        tmp.replace(path)
        print(f"{path.stem}: F RMSE rotated {rmses.mean():.3f} ± {rmses.std():.2e}", flush=True)


def slope(points) -> float:
    """Least-squares slope of log(F MAE) against log(N)."""
    if len(points) < 2:
        return math.nan
    x = np.log([p["n_train"] for p in points])
    y = np.log([p["forces_mae"] for p in points])
    return float(np.polyfit(x, y, 1)[0])


def report(dataset: str, args) -> None:
    spec = DATASETS[dataset]
    points = [json.loads(p.read_text()) for p in sorted(record_dir(dataset).glob("*-n*.json"))]
    if not points:
        sys.exit(f"no points yet in {record_dir(dataset)}")
    by_model = {}
    for p in sorted(points, key=lambda p: p["n_train"]):
        by_model.setdefault(p["model"], []).append(p)
    split = Path(spec["test"]).stem
    records = []
    for name, pts in by_model.items():
        for p in pts:
            common = {"model": "equipot" if name != "cartesian" else "baseline", "variant": name, "dataset": dataset,
                      "split": split, "dtype": "float32", "n_train": p["n_train"], "train_wall_s": p["train_wall_s"],
                      "budget_minutes": p["budget_minutes"], "epochs": p["epochs"], "n_params": p["n_params"]}
            if "command" in p:  # the call that trained this point (points before this field: see the docs)
                common["train_command"] = p["command"]
            for metric, unit in (("forces_mae", "meV/A"), ("forces_rmse", "meV/A"), ("energy_mae", "meV"),
                                 ("energy_rmse", "meV")):
                records.append({**common, "metric": metric, "value": round(p[metric], 4), "unit": unit})
            records.append({**common, "split": f"{split} (first {p['n_rotated_configs']}, rotated)",
                            "metric": "forces_rmse", "value": round(p["rotated_forces_rmse_mean"], 4), "unit": "meV/A",
                            "dtype": "float64", "n_rotations": p["n_rotations"],
                            "std_over_rotations": p["rotated_forces_rmse_std"],
                            "range_over_rotations": p["rotated_forces_rmse_range"]})
    for peer, values in spec["published"].items():
        for n, value in values.items():
            records.append({"model": f"published:{peer}", "variant": "paper", "dataset": dataset, "split": split,
                            "metric": "forces_mae", "value": value, "unit": "meV/A", "n_train": n})
    threads = points[0]["threads"]
    schedulers = sorted({p.get("scheduler", "plateau") for p in points})
    doc = doc_name(dataset)
    budgets = {p["n_train"]: p["budget_minutes"] for p in points}  # the same rule for every model of a curve
    patience = sorted({p.get("patience") or 0 for p in points})
    weights = sorted({p.get("forces_weight", 100.0) for p in points})
    path = write_result(doc, threads, records,
                        extra={"budget_minutes": {str(n): b for n, b in sorted(budgets.items())},
                               "patience": patience, "scheduler": schedulers, "forces_weight": weights})
    sizes = sorted({p["n_train"] for p in points})
    md = [f"# Learning curves: {dataset}, force MAE on {split} (meV/Å)", "",
          f"Machine: {machine(threads)['cpu']}, {threads} thread(s) per run; float32 training; each point trained for "
          "at most " + ", ".join(f"{budgets[n]:g} min at N={n}" for n in sorted(budgets)) + " of wall-clock, validation on "
          f"the same seeded structures for every point"
          + (", early stopping after " + " / ".join(map(str, patience)) + " epochs without improvement"
             if any(patience) else "")
          + ", learning rate " + " / ".join({"plateau": "×0.8 on plateaus", "budget": "a cosine to 0 over the budget"}[x]
                                            for x in schedulers)
          + ", loss weight of the forces " + " / ".join(f"{w:g}" for w in weights) + " (energy per atom 1)"
          + f". Command: `python benchmarks/learning_curve.py {dataset} ...` "
          "(see the JSON). Slope: least-squares slope of log F MAE against log N.", "",
          "| model | " + " | ".join(f"N={n}" for n in sizes) + " | slope | spread over rotations (std, meV/Å) |",
          "|---|" + "---|" * (len(sizes) + 2)]
    for name, pts in by_model.items():
        cells = {p["n_train"]: f"{p['forces_mae']:.2f}" for p in pts}
        spread = max(p["rotated_forces_rmse_std"] for p in pts)
        md.append(f"| {LABELS.get(name, name)} | " + " | ".join(cells.get(n, "–") for n in sizes)
                  + f" | {slope(pts):.2f} | {spread:.1e} |")
    for peer, values in spec["published"].items():
        md.append(f"| published {peer.upper()} | " + " | ".join(f"{values[n]}" if n in values else "–" for n in sizes)
                  + " | | |")
    md += ["", f"Spread: standard deviation of the force RMSE over {points[0]['n_rotations']} random rotations of the "
           f"first {points[0]['n_rotated_configs']} test structures, evaluated in float64 (the largest over the sizes). "
           "Equivariant and invariant models give the same error in every orientation up to rounding; the "
           "Cartesian network, which learnt invariance from rotated copies, does not.", "",
           f"![learning curves]({doc}.png)"]
    (DOCS / f"{doc}.md").write_text("\n".join(md) + "\n")
    plot(dataset, by_model, spec, doc)
    print("\n".join(md))
    print(f"wrote {path}")


def plot(dataset, by_model, spec, name) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(5.5, 4))
    for k, (model, pts) in enumerate(by_model.items()):
        n = [p["n_train"] for p in pts]
        ax.plot(n, [p["forces_mae"] for p in pts], "-o", color=f"C{k}", ms=4,
                label=f"{LABELS.get(model, model)} (slope {slope(pts):.2f})")
    for peer, values in spec["published"].items():
        ax.plot(list(values), list(values.values()), "k*" if peer == "mace" else "kx", ms=8,
                label=f"published {peer.upper()}")
    ax.set_xscale("log")
    ax.set_yscale("log")
    sizes = sorted({p["n_train"] for pts in by_model.values() for p in pts})
    ax.xaxis.set_minor_locator(matplotlib.ticker.NullLocator())
    ax.set_xticks(sizes, [str(n) for n in sizes])
    ax.set_xlabel("training structures N")
    ax.set_ylabel("force MAE (meV/Å)")
    ax.set_title(f"{dataset}: learning curves")
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(DOCS / f"{name}.png", dpi=110)
    plt.close(fig)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("dataset", choices=sorted(DATASETS))
    p.add_argument("--models", nargs="+", default=list(MODELS), choices=list(MODELS))
    p.add_argument("--sizes", nargs="+", type=int, default=None)
    p.add_argument("--minutes", type=float, default=1.5, help="budget of a point: this many minutes ...")
    p.add_argument("--minutes-per-100", type=float, default=0.8, help="... plus this many per 100 training structures")
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--rotations", type=int, default=100)
    p.add_argument("--rotation-configs", type=int, default=100)
    p.add_argument("--report", action="store_true", help="only write the table and plot of the points done")
    p.add_argument("--rotations-only", action="store_true",
                   help="measure the spread over rotations again for the points done, then report")
    p.add_argument("--patience", type=int, default=None,
                   help="stop a point after this many epochs without a better validation loss (default: never)")
    p.add_argument("--scheduler", default="plateau", choices=["plateau", "budget"],
                   help="learning rate: ×0.8 on plateaus, or a cosine to 0 over each point's budget")
    p.add_argument("--forces-weight", type=float, default=100.0,
                   help="loss weight of the forces, every model (energy per atom: 1)")
    p.add_argument("--tag", default="", help="keep these points apart from others (another budget)")
    p.add_argument("--runs", default=None, help="folder of the points (default runs/learning_curve)")
    args = p.parse_args()
    global RUNS, TAG
    TAG = args.tag
    if args.runs:
        RUNS = Path(args.runs).resolve()
    torch.set_num_threads(args.threads)
    if args.rotations_only:
        reevaluate_rotations(args.dataset, args)
    elif not args.report:
        for name in args.models:
            for n in args.sizes or DATASETS[args.dataset]["sizes"]:
                run_point(args.dataset, name, n, args)
    report(args.dataset, args)


if __name__ == "__main__":
    main()
