"""Accuracy at a fixed CPU wall-clock budget: train equipot, evaluate on the test files.

    python benchmarks/accuracy.py acac --budget-minutes 25 --threads 1
    python benchmarks/accuracy.py ethanol --budget-minutes 25 --threads 1
    python benchmarks/accuracy.py 3bpa --budget-minutes 25 --threads 1

Writes docs/benchmarks/<dataset>.json, docs/benchmarks/<dataset>.md and parity plots.
The validation split (seeded) is carved from the training file; test files are only evaluated.
"""

import argparse
import csv
import shlex
import shutil
import sys
from pathlib import Path

import torch

from common import DATA, DOCS, machine, write_result

from equipot.config import config_from_dict
from equipot.evaluate import evaluate_file
from equipot.model import load_model
from equipot.train import MODEL, Trainer
from equipot.train.loop import CHECKPOINT

DATASETS = {
    "acac": {
        "train": "acac/train_300K.xyz", "n_train": 450, "valid_fraction": 0.1,
        "e0s": "acac/isolated_atoms.xyz",
        "tests": ["test_MD_300K", "test_MD_600K", "test_dihedral", "test_H_transfer"],
        "published": {  # MACE paper Table 3 (RMSE; E meV per molecule, F meV/Å)
            "mace": {"test_MD_300K": (0.9, 5.1), "test_MD_600K": (4.6, 22.4)},
            "nequip": {"test_MD_300K": (0.81, 5.90), "test_MD_600K": (6.04, 27.8)},
        },
        "published_metric": "rmse",
    },
    "ethanol": {
        "train": "ethanol/train.xyz", "n_train": 950, "valid_fraction": 0.05,
        "e0s": "fit", "tests": ["test_MD"],
        "published": {"mace": {"test_MD": (0.4, 2.1)}, "nequip": {"test_MD": (0.4, 2.8)}},
        "published_metric": "mae",
        # force MAE (meV/Å) of MACE trained on 50 structures (the data-efficiency target of issue 5)
        "published_small": {50: {"mace": {"test_MD": (None, 32.6)}}},
    },
    "3bpa": {
        # splits of train_300K and train_mixedT made by common.bpa_files (the official test sets are not here)
        "train": None, "n_train": 360, "valid_fraction": 0.1, "e0s": "3bpa/iso_atoms.xyz",
        "tests": ["test_300K", "test_hot"],
        # MACE paper Table 2, on the official 300 K test set (not this held-out split): RMSE E meV, F meV/Å
        "published": {"mace": {"test_300K": (3.0, 8.8)}, "nequip": {"test_300K": (3.3, 10.8)}},
        "published_metric": "rmse",
    },
}


def data_paths(dataset: str):
    """(training file, {test name: file}) of a dataset."""
    spec = DATASETS[dataset]
    if dataset == "3bpa":
        from common import bpa_files

        files = bpa_files()
        return files["train"], {t: files[t] for t in spec["tests"]}
    return DATA / spec["train"], {t: DATA / dataset / f"{t}.xyz" for t in spec["tests"]}


def energy_curve(model, path, png) -> None:
    """Energy along a scan or path, model against reference, relative to each one's minimum."""
    import ase.io
    import matplotlib
    import numpy as np

    from equipot.data import read_configurations
    from equipot.evaluate import predict

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    configs = read_configurations(str(path), keys={"energy": "energy"})
    pred = np.array([p["energy"] for p in predict(model, configs)])
    ref = np.array([float(c.targets["energy"]) for c in configs])
    frames = ase.io.read(str(path), ":")
    x = np.array([a.info.get("dihedral_angle", k) for k, a in enumerate(frames)], dtype=float)
    order = np.argsort(x)
    fig, ax = plt.subplots(figsize=(5, 3.4))
    ax.plot(x[order], 1000 * (ref[order] - ref.min()), "k-o", ms=3, label="DFT")
    ax.plot(x[order], 1000 * (pred[order] - pred.min()), "C0-s", ms=3, label="equipot")
    ax.set_xlabel("dihedral angle (°)" if "dihedral_angle" in frames[0].info else "frame along the path")
    ax.set_ylabel("E − E_min (meV)")
    ax.set_title(path.stem)
    ax.legend()
    fig.tight_layout()
    png.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(png, dpi=110)
    plt.close(fig)


COMMANDS = "commands.txt"  # in the run's folder: the training command of each part of the run


def log_command(out_dir: Path, command: str, resume: bool) -> None:
    """Record this part's training command (a fresh run starts the list again). A part resumed
    with the same arguments (after a crash or a kill) trains what the first command alone would
    have, so it is not listed; one resumed with another budget is."""
    out_dir.mkdir(parents=True, exist_ok=True)
    lines = training_commands(out_dir) if resume else []
    plain = shlex.split(command)
    if not lines or [x for x in shlex.split(lines[-1]) if x != "--resume"] != [x for x in plain if x != "--resume"]:
        lines.append(command)
    tmp = out_dir / (COMMANDS + ".tmp")
    tmp.write_text("\n".join(lines) + "\n")
    tmp.replace(out_dir / COMMANDS)


def training_commands(out_dir: Path) -> list:
    path = out_dir / COMMANDS
    return [x for x in path.read_text().splitlines() if x.strip()] if path.exists() else []


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("dataset", choices=sorted(DATASETS))
    p.add_argument("--budget-minutes", type=float, default=25.0)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--device", default="cpu", help="training.device: cpu or cuda (evaluation stays on the CPU)")
    p.add_argument("--channels", type=int, default=64)
    p.add_argument("--lmax", type=int, default=1)
    p.add_argument("--parity", default="natural")
    p.add_argument("--correlation", type=int, default=3)
    p.add_argument("--num-layers", type=int, default=2)
    p.add_argument("--n-train", type=int, default=None,
                   help="train on the first N of the training split (data efficiency); validation set unchanged")
    p.add_argument("--message-lmax", type=int, default=None, help="highest l sent along edges (default lmax)")
    p.add_argument("--sh-lmax", type=int, default=None, help="model.sh_lmax: highest l of the edge harmonics (default lmax)")
    p.add_argument("--product-mixing", action="store_true", help="model.product_mixing: mixed channels in the node products")
    p.add_argument("--r-max", type=float, default=5.0, help="cutoff radius (Å)")
    p.add_argument("--radial-hidden", type=int, nargs="+", default=[64, 64], help="hidden sizes of the radial networks")
    p.add_argument("--dtype", default="float32")
    p.add_argument("--lr", type=float, default=0.01)
    p.add_argument("--batch-size", type=int, default=5)
    p.add_argument("--scheduler", default="plateau", choices=["plateau", "budget"],
                   help="plateau: ×0.8 after 10 epochs without progress; budget: cosine to 0 over the budget")
    p.add_argument("--forces-weight", type=float, default=100.0, help="loss weight of the forces (energy per atom: 1)")
    p.add_argument("--stage-two", type=float, default=None, metavar="START",
                   help="training.stage_two from this fraction of the budget, with the weights below")
    p.add_argument("--stage-two-weights", type=float, nargs=2, default=[1000.0, 100.0], metavar=("ENERGY", "FORCES"),
                   help="stage two's loss weights (default 1000 100, as MACE's SWA stage)")
    p.add_argument("--stage-two-lr", type=float, default=None, help="stage two's constant learning rate "
                   "(default: the schedule goes on)")
    p.add_argument("--compile", action="store_true",
                   help="training.compile: trace and compile the training step (its compile counts against the budget)")
    p.add_argument("--variant", default=None)
    p.add_argument("--seed", type=int, default=1234, help="seeds the validation split and the initial weights")
    p.add_argument("--out", default=None, help="training output folder (default runs/<dataset>)")
    p.add_argument("--eval-only", action="store_true", help="evaluate the model already trained in --out")
    p.add_argument("--resume", action="store_true",
                   help="continue the run in --out for another --budget-minutes (long runs over several sessions); "
                        "with --scheduler budget, --budget-minutes is the budget of the whole run and a resumed "
                        "run finishes what is left of it")
    args = p.parse_args()
    command = "python " + shlex.join(["benchmarks/accuracy.py"] + [x for x in sys.argv[1:] if x != "--eval-only"])
    # the record names the training command; --eval-only re-evaluates that same run
    sys.argv = [x for x in sys.argv if x not in ("--eval-only", "--resume")]
    torch.set_num_threads(args.threads)
    if args.compile:  # a cold compile, paid inside the budget: no code cached by an earlier run
        from torch._inductor import config as inductor_config

        inductor_config.force_disable_caches = True
    spec = DATASETS[args.dataset]
    variant = args.variant or (
        f"lmax{args.lmax}-{args.parity}-c{args.channels}-nu{args.correlation}"
        + ("" if args.message_lmax is None else f"-m{args.message_lmax}")
        + ("" if args.sh_lmax is None else f"-sh{args.sh_lmax}")
        + ("-mix" if args.product_mixing else "")
        + ("" if args.r_max == 5.0 else f"-rmax{args.r_max:g}")
        + ("" if args.radial_hidden == [64, 64] else "-r" + "x".join(map(str, args.radial_hidden)))
        + ("" if args.n_train is None else f"-n{args.n_train}")
        + ("" if args.scheduler == "plateau" else f"-{args.scheduler}")
        + ("" if args.seed == 1234 else f"-seed{args.seed}")
        + ("" if args.stage_two is None else f"-s2at{args.stage_two:g}"
           + ("" if args.stage_two_weights == [1000.0, 100.0] else "-e{:g}f{:g}".format(*args.stage_two_weights))
           + ("" if args.stage_two_lr is None else f"-lr{args.stage_two_lr:g}"))
        + ("-compiled" if args.compile else "")
        + ("" if args.device == "cpu" else f"-{args.device}")
    )
    n_train = spec["n_train"] if args.n_train is None else args.n_train
    out_dir = args.out or f"runs/{args.dataset}-{variant}"
    model_cfg = dict(channels=args.channels, lmax=args.lmax, parity=args.parity,
                     correlation=args.correlation, num_layers=args.num_layers, r_max=args.r_max,
                     message_lmax=args.message_lmax, sh_lmax=args.sh_lmax, radial_hidden=args.radial_hidden,
                     product_mixing=args.product_mixing)
    config = config_from_dict({
        "output_dir": out_dir, "seed": args.seed,
        "data": {"train": str(data_paths(args.dataset)[0]), "valid_fraction": spec["valid_fraction"],
                 "e0s": spec["e0s"] if spec["e0s"] == "fit" else str(DATA / spec["e0s"]),
                 "keys": {"energy": "energy", "forces": "forces"}, "max_train": n_train},
        "model": model_cfg,
        "training": {"dtype": args.dtype, "device": args.device, "threads": args.threads, "batch_size": args.batch_size,
                     "lr": args.lr, "max_epochs": 100000, "max_minutes": args.budget_minutes,
                     "patience": 100000, "scheduler": args.scheduler, "lr_patience": 10, "lr_factor": 0.8,
                     "ema_decay": 0.99, "loss": {"energy": 1.0, "forces": args.forces_weight},
                     "compile": args.compile,
                     "stage_two": None if args.stage_two is None else {
                         "start": args.stage_two, "lr": args.stage_two_lr,
                         "loss": dict(zip(("energy", "forces"), args.stage_two_weights))}},
    }, "benchmark config")
    if not args.eval_only:
        resume = args.resume and Path(out_dir, CHECKPOINT).exists()
        log_command(Path(out_dir), command, resume)
        Trainer(config, progress=False).run(resume=resume)
    commands = training_commands(Path(out_dir))
    # the run's own record: its epochs, and the wall-clock of all its training (every resumed part)
    history = list(csv.DictReader(open(f"{out_dir}/metrics.csv")))
    result, train_wall = {"epochs": len(history)}, float(history[-1]["wall_s"])
    model = load_model(f"{out_dir}/{MODEL}")
    n_params = sum(p.numel() for p in model.parameters())
    records, rows = [], []
    common = {"model": "equipot", "variant": variant, "dataset": args.dataset, "train_wall_s": round(train_wall),
              "dtype": args.dtype, "n_train": n_train, "epochs": result["epochs"], "n_params": n_params,
              **({} if args.device == "cpu" else {"device": args.device})}
    # the validation split's errors at the epoch whose weights were exported (lowest validation loss)
    best = min(history, key=lambda row: float(row["valid_loss"]))
    valid = {m: float(best[f"valid_{m}"]) for m in ("energy_rmse", "forces_rmse", "energy_mae", "forces_mae") if f"valid_{m}" in best}
    for metric, value in valid.items():
        records.append({**common, "split": "valid", "metric": metric, "value": round(value, 3),
                        "unit": "meV" if "energy" in metric else "meV/A", "epoch": int(best["epoch"])})
    rows.append(("valid (training log)",) + tuple(valid.get(k, float("nan")) for k in ("energy_rmse", "forces_rmse", "energy_mae", "forces_mae")))
    for test, path in data_paths(args.dataset)[1].items():
        s = evaluate_file(model, str(path), out_dir=f"{out_dir}/eval", progress=False)
        plots = DOCS / f"{args.dataset}-{variant}"  # parity plots go to the docs; predictions stay in the run
        plots.mkdir(parents=True, exist_ok=True)
        shutil.copy(f"{out_dir}/eval/{test}_parity.png", plots / f"{test}_parity.png")
        for metric, unit in (("energy_rmse", "meV"), ("energy_mae", "meV"), ("forces_rmse", "meV/A"), ("forces_mae", "meV/A")):
            if metric in s:  # some test files (scans, paths) have energies only
                records.append({**common, "split": test, "metric": metric, "value": round(s[metric], 3), "unit": unit})
        rows.append((test,) + tuple(s.get(k, float("nan")) for k in ("energy_rmse", "forces_rmse", "energy_mae", "forces_mae")))
        if "forces_rmse" not in s:
            energy_curve(model, path, DOCS / f"{args.dataset}-{variant}" / f"{test}_curve.png")
    published = spec["published"] if n_train == spec["n_train"] else spec.get("published_small", {}).get(n_train, {})
    for peer, values in published.items():
        for test, (e, f) in values.items():
            m = spec["published_metric"]
            if e is not None:
                records.append({"model": f"published:{peer}", "variant": "paper", "dataset": args.dataset, "split": test,
                                "metric": f"energy_{m}", "value": e, "unit": "meV"})
            records.append({"model": f"published:{peer}", "variant": "paper", "dataset": args.dataset, "split": test,
                            "metric": f"forces_{m}", "value": f, "unit": "meV/A"})
    # a run resumed with another budget (a warm restart of the schedule) is not what one
    # command with the final budget would train: the record names every part
    path = write_result(f"{args.dataset}-{variant}", args.threads, records,
                        {"command": " && ".join(commands)} if len(commands) > 1 else None)
    where = machine(args.threads)
    md = [f"# {args.dataset}: equipot {variant}, {train_wall / 60:.0f} min of training",
          "", f"Machine: {where['cpu']}, {args.threads} thread(s)"
          + (f", trained on the GPU ({where['gpu']})" if args.device != "cpu" else "") + f"; {args.dtype}; "
          f"{result['epochs']} epochs in {train_wall / 60:.1f} min; {n_params} parameters; "
          "command" + (f"s, one after the other: `{'` then `'.join(commands)}`" if len(commands) > 1
                       else f": `python benchmarks/accuracy.py {' '.join(sys.argv[1:])}`"),
          "", "| split | E RMSE (meV) | F RMSE (meV/Å) | E MAE (meV) | F MAE (meV/Å) |", "|---|---|---|---|---|"]
    md += [f"| {t} | {a:.2f} | {b:.2f} | {c:.2f} | {d:.2f} |" for t, a, b, c, d in rows]
    (DOCS / f"{args.dataset}-{variant}.md").write_text("\n".join(md) + "\n")
    print("\n".join(md))
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
