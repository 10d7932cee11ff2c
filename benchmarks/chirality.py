"""R/S from 3D structures: a pseudoscalar (0o) output against an invariant baseline.

    python benchmarks/chirality.py --budget-minutes 10 --threads 1
    python benchmarks/chirality.py --invariant --budget-minutes 10 --threads 1

../shared/data/xtb/chirality: 26 chiral molecules, both enantiomers, `chirality` = +1 (R) /
−1 (S). Split by molecule: TEST molecules are never seen in training, VALID ones only
steer the learning-rate schedule. equipot reads the label from 0o features (parity both),
so its sign flips exactly in a mirror; the baseline (lmax 0, even scalars only, a 0e
output) gives both enantiomers the same value and must sit at 50 %.
Writes docs/benchmarks/chirality-<variant>.{json,md}.
"""

import argparse
import sys

import ase.io
import numpy as np
import torch

from common import DATA, DOCS, REPO, machine, train_model, write_frames, write_result

from equipot.data import read_configurations
from equipot.evaluate import predict

TEST = ["2_pentanol", "2_chlorobutane", "serine", "lactonitrile", "3_methylhexane", "carvone"]
VALID = ["2_fluorobutane", "alaninol", "propylene_oxide"]


def accuracy(model, path, fields):
    configs = read_configurations(str(path), keys={"chirality": "chirality"}, fields=fields)
    pred = np.array([float(p["chirality"]) for p in predict(model, configs)])
    ref = np.array([float(c.targets["chirality"]) for c in configs])
    return float(np.mean(np.sign(pred) == np.sign(ref))), len(configs), pred, ref


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--budget-minutes", type=float, default=10.0)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--invariant", action="store_true", help="the invariant baseline (lmax 0, 0e output)")
    p.add_argument("--lmax", type=int, default=1)
    p.add_argument("--channels", type=int, default=16)
    p.add_argument("--layers", type=int, default=2)
    p.add_argument("--forces-weight", type=float, default=0.0,
                   help="also fit the xTB energies (weight 1) and forces (this weight): chemistry as an auxiliary task")
    p.add_argument("--seed", type=int, default=11)
    p.add_argument("--product-mixing", action="store_true", help="model.product_mixing: mixed channels in the node products")
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    variant = "invariant-lmax0" if args.invariant else f"lmax{args.lmax}-both-c{args.channels}"
    variant += f"-l{args.layers}" if args.layers != 2 else ""
    variant += "-mix" if args.product_mixing else ""
    variant += f"-ef{args.forces_weight:g}" if args.forces_weight > 0 else ""
    variant += f"-{args.budget_minutes:g}min" if args.budget_minutes != 10.0 else ""
    variant += f"-seed{args.seed}" if args.seed != 11 else ""
    out = REPO / "runs" / f"chirality-{variant}"
    frames = ase.io.read(str(DATA / "xtb/chirality/train.xyz"), ":")
    split = {name: [a for a in frames if (a.info["molecule"] in TEST) == (name == "test")
                    and (a.info["molecule"] in VALID) == (name == "valid")] for name in ("train", "valid", "test")}
    files = {name: write_frames(out / f"{name}.xyz", split[name]) for name in split}
    auxiliary = args.forces_weight > 0
    values = {
        "output_dir": str(out / "train"), "seed": args.seed,
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
    model, result, wall = train_model(values)
    fields = model.output_fields
    n_params = sum(x.numel() for x in model.parameters())
    common = {"model": "equipot", "variant": variant, "dataset": "chirality", "train_wall_s": round(wall),
              "epochs": result["epochs"], "n_params": n_params, "dtype": "float32"}
    records, rows = [], []
    for name in ("train", "valid", "test"):
        acc, n, pred, ref = accuracy(model, files[name], fields)
        records.append({**common, "split": name, "metric": "sign_accuracy", "value": round(acc, 4), "unit": ""})
        rows.append((name, n, acc))
    per_molecule = []
    _, _, pred, ref = accuracy(model, files["test"], fields)
    names = [a.info["molecule"] for a in split["test"]]
    for mol in TEST:
        mask = np.array([m == mol for m in names])
        per_molecule.append((mol, float(np.mean(np.sign(pred[mask]) == np.sign(ref[mask])))))
    path = write_result(f"chirality-{variant}", args.threads, records,
                        extra={"test_molecules": TEST, "valid_molecules": VALID,
                               "per_test_molecule": dict(per_molecule)})
    md = [f"# Chirality (R/S) of molecules never seen in training: equipot {variant}", "",
          f"Machine: {machine(args.threads)['cpu']}, {args.threads} thread(s); float32; {result['epochs']} epochs in "
          f"{wall / 60:.1f} min; {n_params} parameters; command: `python benchmarks/chirality.py {' '.join(sys.argv[1:])}`",
          "", "| split | structures | sign accuracy |", "|---|---|---|"]
    md += [f"| {a} | {b} | {100 * c:.1f} % |" for a, b, c in rows]
    md += ["", "Per test molecule: " + ", ".join(f"{m} {100 * a:.0f} %" for m, a in per_molecule)]
    (DOCS / f"chirality-{variant}.md").write_text("\n".join(md) + "\n")
    print("\n".join(md))
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
