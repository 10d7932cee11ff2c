"""R/S from 3D structures: a pseudoscalar (0o) output against an invariant baseline.

    python benchmarks/chirality.py --budget-minutes 10 --threads 1
    python benchmarks/chirality.py --invariant --budget-minutes 10 --threads 1
    python benchmarks/chirality.py --seeds 1 2 3 --reuse --threads 1   # spread over seeds, and their ensemble

../shared/data/xtb/chirality: 26 chiral molecules, both enantiomers, `chirality` = +1 (R) /
−1 (S). Split by molecule: TEST molecules are never seen in training, VALID ones only
steer the learning-rate schedule. equipot reads the label from 0o features (parity both),
so its sign flips exactly in a mirror; the baseline (lmax 0, even scalars only, a 0e
output) gives both enantiomers the same value and must sit at 50 %.
Writes docs/benchmarks/chirality-<variant>.{json,md}.
"""

import argparse
import csv
import sys

import ase.io
import numpy as np
import torch

from common import DATA, DOCS, REPO, machine, train_model, write_frames, write_result

from equipot.data import read_configurations
from equipot.evaluate import predict

TEST = ["2_pentanol", "2_chlorobutane", "serine", "lactonitrile", "3_methylhexane", "carvone"]
VALID = ["2_fluorobutane", "alaninol", "propylene_oxide"]


def predictions(model, path, fields):
    """(predicted, reference) chirality of every structure in ``path``."""
    configs = read_configurations(str(path), keys={"chirality": "chirality"}, fields=fields)
    pred = np.array([float(p["chirality"]) for p in predict(model, configs)])
    ref = np.array([float(c.targets["chirality"]) for c in configs])
    return pred, ref


def sign_accuracy(pred, ref) -> float:
    return float(np.mean(np.sign(pred) == np.sign(ref)))


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--budget-minutes", type=float, default=10.0, help="training wall-clock per seed")
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--invariant", action="store_true", help="the invariant baseline (lmax 0, 0e output)")
    p.add_argument("--lmax", type=int, default=1)
    p.add_argument("--channels", type=int, default=16)
    p.add_argument("--layers", type=int, default=2)
    p.add_argument("--forces-weight", type=float, default=0.0,
                   help="also fit the xTB energies (weight 1) and forces (this weight): chemistry as an auxiliary task")
    p.add_argument("--seeds", type=int, nargs="+", default=[11],
                   help="train one model per seed; with several, report each, their mean and spread, and "
                        "the ensemble (mean of the models' outputs, still exactly odd under reflection)")
    p.add_argument("--reuse", action="store_true", help="load a seed's model from its run folder if it is there")
    p.add_argument("--product-mixing", action="store_true", help="model.product_mixing: mixed channels in the node products")
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    variant = "invariant-lmax0" if args.invariant else f"lmax{args.lmax}-both-c{args.channels}"
    variant += f"-l{args.layers}" if args.layers != 2 else ""
    variant += "-mix" if args.product_mixing else ""
    variant += f"-ef{args.forces_weight:g}" if args.forces_weight > 0 else ""
    variant += f"-{args.budget_minutes:g}min" if args.budget_minutes != 10.0 else ""
    seeds_tag = "" if args.seeds == [11] else "-seed" + "-".join(map(str, args.seeds))
    frames = ase.io.read(str(DATA / "xtb/chirality/train.xyz"), ":")
    split = {name: [a for a in frames if (a.info["molecule"] in TEST) == (name == "test")
                    and (a.info["molecule"] in VALID) == (name == "valid")] for name in ("train", "valid", "test")}
    auxiliary = args.forces_weight > 0
    runs = []  # per seed: (seed, epochs, wall, n_params, {split: (pred, ref)})
    for seed in args.seeds:
        out = REPO / "runs" / (f"chirality-{variant}" + (f"-seed{seed}" if seed != 11 else ""))
        files = {name: write_frames(out / f"{name}.xyz", split[name]) for name in split}
        values = {
            "output_dir": str(out / "train"), "seed": seed,
            "data": {"train": str(files["train"]), "valid": str(files["valid"]),
                     "keys": {"chirality": "chirality", **({"energy": "energy", "forces": "forces"} if auxiliary else {})}},
            "model": {"r_max": 5.0, "channels": args.channels, "lmax": 0 if args.invariant else args.lmax,
                      "parity": "natural" if args.invariant else "both", "correlation": 3, "num_layers": args.layers,
                      "product_mixing": args.product_mixing,
                      "outputs": {"chirality": "0e" if args.invariant else "0o"}},
            "training": {"threads": args.threads, "batch_size": 10, "lr": 0.005, "max_epochs": 100000,
                         "max_minutes": args.budget_minutes, "patience": 100000, "lr_patience": 8,
                         "loss": {"energy": 1.0 if auxiliary else 0.0, "forces": args.forces_weight,
                                  "outputs": {"chirality": 1.0}}},
        }
        model_file = out / "train" / "model.safetensors"
        if args.reuse and model_file.exists():
            from equipot.model import load_model

            history = list(csv.DictReader(open(out / "train" / "metrics.csv")))
            model, epochs, wall = load_model(str(model_file)), len(history), float(history[-1]["wall_s"])
        else:
            model, result, wall = train_model(values)
            epochs = result["epochs"]
        n_params = sum(x.numel() for x in model.parameters())
        runs.append((seed, epochs, wall, n_params,
                     {name: predictions(model, files[name], model.output_fields) for name in split}))
    names = np.array([a.info["molecule"] for a in split["test"]])
    common = {"model": "equipot", "variant": variant, "dataset": "chirality", "n_params": runs[0][3],
              "dtype": "float32"}
    records, rows, per_molecule = [], [], {}
    for seed, epochs, wall, _, preds in runs:
        for name in split:
            records.append({**common, "seed": seed, "train_wall_s": round(wall), "epochs": epochs, "split": name,
                            "metric": "sign_accuracy", "value": round(sign_accuracy(*preds[name]), 4), "unit": ""})
        rows.append((f"seed {seed}", epochs, *(sign_accuracy(*preds[name]) for name in split)))
        pred, ref = preds["test"]
        per_molecule[f"seed {seed}"] = {m: sign_accuracy(pred[names == m], ref[names == m]) for m in TEST}
    if len(runs) > 1:
        for name in split:
            accs = [sign_accuracy(*r[4][name]) for r in runs]
            ensemble = sign_accuracy(np.mean([r[4][name][0] for r in runs], axis=0), runs[0][4][name][1])
            records.append({**common, "seeds": args.seeds, "split": name, "metric": "sign_accuracy_mean",
                            "value": round(float(np.mean(accs)), 4), "unit": ""})
            records.append({**common, "seeds": args.seeds, "split": name, "metric": "sign_accuracy_std",
                            "value": round(float(np.std(accs, ddof=1)), 4), "unit": ""})
            records.append({**common, "seeds": args.seeds, "split": name, "metric": "sign_accuracy_ensemble",
                            "value": round(ensemble, 4), "unit": ""})
        rows.append(("mean ± std", "", *(f"{100 * np.mean(a):.1f} ± {100 * np.std(a, ddof=1):.1f}"
                                          for a in ([sign_accuracy(*r[4][name]) for r in runs] for name in split))))
        ens = {name: np.mean([r[4][name][0] for r in runs], axis=0) for name in split}
        rows.append(("ensemble", "", *(sign_accuracy(ens[name], runs[0][4][name][1]) for name in split)))
        per_molecule["ensemble"] = {m: sign_accuracy(ens["test"][names == m], runs[0][4]["test"][1][names == m])
                                    for m in TEST}
    name = f"chirality-{variant}{seeds_tag}"
    path = write_result(name, args.threads, records,
                        extra={"test_molecules": TEST, "valid_molecules": VALID, "seeds": args.seeds,
                               "per_test_molecule": per_molecule})
    pct = lambda x: x if isinstance(x, str) else f"{100 * x:.1f} %"
    md = [f"# Chirality (R/S) of molecules never seen in training: equipot {variant}", "",
          f"Machine: {machine(args.threads)['cpu']}, {args.threads} thread(s); float32; {args.budget_minutes:g} min "
          f"of training per seed; {runs[0][3]} parameters; {len(split['train'])} / {len(split['valid'])} / "
          f"{len(split['test'])} train / valid / test structures; command: "
          f"`python benchmarks/chirality.py {' '.join(sys.argv[1:])}`",
          "", "| model | epochs | train | valid | test |", "|---|---|---|---|---|"]
    md += [f"| {r[0]} | {r[1]} | " + " | ".join(pct(x) for x in r[2:]) + " |" for r in rows]
    md += ["", "Test accuracy per molecule:", ""]
    md += [f"- {who}: " + ", ".join(f"{m} {100 * a:.0f} %" for m, a in accs.items()) for who, accs in per_molecule.items()]
    (DOCS / f"{name}.md").write_text("\n".join(md) + "\n")
    print("\n".join(md))
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
