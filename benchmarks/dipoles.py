"""Dipoles (and the charges behind them) learnt from reference dipoles.

    python benchmarks/dipoles.py xtb --budget-minutes 12 --threads 1
    python benchmarks/dipoles.py spice --budget-minutes 15 --threads 1
    python benchmarks/dipoles.py xtb --lmax 0     # the invariant baseline: dipole = Σ q_i r_i only
    python benchmarks/dipoles.py spice --point-charges   # equivariant, but the dipole from the charges alone

xtb: ../shared/data/xtb/dipoles, 42 molecules. Four molecules are carved out of training
entirely (UNSEEN) and reported separately; the others train on train.xyz and test on
test.xyz. spice: SPICE dipeptides (train / val / test files), dipole R² (published
learned-charge model: 0.991) and the R² of the latent charges against MBIS charges.
The model is trained on dipoles only; the charges are never shown to it.
Writes docs/benchmarks/dipoles-<set>-<variant>.{json,md} and parity plots.
"""

import argparse
import shutil
import sys

import ase.io
import torch

from common import DATA, DOCS, REPO, machine, train_model, write_frames, write_result

from equipot.evaluate import evaluate_file

UNSEEN = ["acetic_acid", "pyridine", "r_2_butanol", "chloroform"]
SETS = {
    "xtb": {"charges_key": "charges", "published_r2": None},
    "spice": {"charges_key": "mbi_charges", "published_r2": 0.991},
}


def xtb_files(out):
    train = ase.io.read(str(DATA / "xtb/dipoles/train.xyz"), ":")
    test = ase.io.read(str(DATA / "xtb/dipoles/test.xyz"), ":")
    seen = lambda a: a.info["molecule"] not in UNSEEN  # noqa: E731
    return (
        write_frames(out / "train.xyz", [a for a in train if seen(a)]),
        None,
        {"test": write_frames(out / "test_seen.xyz", [a for a in test if seen(a)]),
         "unseen_molecules": write_frames(out / "test_unseen.xyz", [a for a in train + test if not seen(a)])},
    )


def spice_files(out):
    base = DATA / "spice-dipep-dipolar"
    return (base / "spice-dipep-dipolar_train.xyz", base / "spice-dipep-dipolar_val.xyz",
            {"test": base / "spice-dipep-dipolar_test.xyz"})


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("set", choices=sorted(SETS))
    p.add_argument("--budget-minutes", type=float, default=12.0)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--lmax", type=int, default=1)
    p.add_argument("--channels", type=int, default=32)
    p.add_argument("--lr", type=float, default=0.005)
    p.add_argument("--point-charges", action="store_true",
                   help="model.atomic_dipoles: false: the dipole from the charges alone (Σ q_i r_i)")
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    spec = SETS[args.set]
    variant = "invariant-lmax0" if args.lmax == 0 else f"lmax{args.lmax}-c{args.channels}"
    variant += "-point-charges" if args.point_charges and args.lmax > 0 else ""
    out = REPO / "runs" / f"dipoles-{args.set}-{variant}"
    train, valid, tests = (xtb_files if args.set == "xtb" else spice_files)(out)
    data = {"train": str(train), "keys": {"dipole": "dipole"}, "e0s": "fit"}
    data.update({"valid": str(valid)} if valid else {"valid_fraction": 0.05})
    values = {
        "output_dir": str(out / "train"), "seed": 7, "data": data,
        "model": {"r_max": 5.0, "channels": args.channels, "lmax": args.lmax, "parity": "natural",
                  "correlation": 3, "num_layers": 2, "outputs": {"dipole": "dipole", "charges": "charges"},
                  "atomic_dipoles": not args.point_charges},
        "training": {"threads": args.threads, "batch_size": 10, "lr": args.lr, "max_epochs": 100000,
                     "max_minutes": args.budget_minutes, "patience": 100000, "lr_patience": 8,
                     "loss": {"energy": 0.0, "forces": 0.0, "outputs": {"dipole": 1.0}}},
    }
    model, result, wall = train_model(values)
    n_params = sum(x.numel() for x in model.parameters())
    common = {"model": "equipot", "variant": variant, "dataset": f"dipoles-{args.set}", "train_wall_s": round(wall),
              "epochs": result["epochs"], "n_params": n_params, "dtype": "float32"}
    records, rows = [], []
    plots = DOCS / f"dipoles-{args.set}-{variant}"
    plots.mkdir(parents=True, exist_ok=True)
    for split, path in tests.items():
        s = evaluate_file(model, str(path), out_dir=str(out / "eval"), progress=False,
                          keys={"dipole": "dipole", "charges": spec["charges_key"]})
        shutil.copy(out / "eval" / f"{path.stem}_parity.png", plots / f"{split}_parity.png")
        for metric, unit in (("dipole_mae", "e*A"), ("dipole_rmse", "e*A"), ("dipole_r2", ""), ("charges_r2", ""),
                             ("charges_mae", "e")):
            if metric in s:
                records.append({**common, "split": split, "metric": metric, "value": round(float(s[metric]), 5), "unit": unit})
        rows.append((split, s["n_structures"], s.get("dipole_mae"), s.get("dipole_r2"), s.get("charges_r2")))
    if spec["published_r2"]:
        records.append({"model": "published:LES (learned charges)", "variant": "paper", "dataset": f"dipoles-{args.set}",
                        "split": "test", "metric": "dipole_r2", "value": spec["published_r2"], "unit": ""})
    path = write_result(f"dipoles-{args.set}-{variant}", args.threads, records)
    md = [f"# Dipoles, {args.set}: equipot {variant}, {args.budget_minutes:g} min budget", "",
          f"Machine: {machine(args.threads)['cpu']}, {args.threads} thread(s); float32; {result['epochs']} epochs in "
          f"{wall / 60:.1f} min; {n_params} parameters; trained on dipoles only (charges latent; dipole "
          f"{'Σ q_i r_i alone' if args.point_charges or args.lmax == 0 else 'Σ q_i r_i + Σ μ_i'}); "
          f"command: `python benchmarks/dipoles.py {' '.join(sys.argv[1:])}`", "",
          "| split | structures | dipole MAE (e·Å) | dipole R² | charges R² (vs reference charges) |", "|---|---|---|---|---|"]
    md += [f"| {a} | {b} | {c:.4f} | {d:.4f} | {e:.3f} |" for a, b, c, d, e in rows]
    if args.set == "xtb":
        md += ["", f"Molecules never seen in training: {', '.join(UNSEEN)}."]
    if spec["published_r2"]:
        md += ["", f"Published learned-charge model (LES): dipole R² {spec['published_r2']}."]
    (DOCS / f"dipoles-{args.set}-{variant}.md").write_text("\n".join(md) + "\n")
    print("\n".join(md))
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
