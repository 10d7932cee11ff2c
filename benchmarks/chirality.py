"""R/S from 3D structures: a pseudoscalar (0o) output against an invariant baseline.

    python benchmarks/chirality.py --budget-minutes 10 --threads 1
    python benchmarks/chirality.py --invariant --budget-minutes 10 --threads 1
    python benchmarks/chirality.py --seeds 1 2 3 --reuse --threads 1   # spread over seeds, and their ensemble
    python benchmarks/chirality.py --site-labels --seeds 1 2 3 --threads 1   # R/S as a per-atom label

By default the label is a per-structure output, a sum over atoms. With --site-labels it is a
per-atom output trained on ±1 at the stereocentre and 0 at every other atom (the data key
``chirality@stereocentre``), and R/S is read at the stereocentre.

../shared/data/xtb/chirality: 26 chiral molecules, both enantiomers, `chirality` = +1 (R) /
−1 (S). Split by molecule: TEST molecules are never seen in training, VALID ones only
steer the learning-rate schedule. equipot reads the label from 0o features (parity both),
so its sign flips exactly in a mirror; the baseline (lmax 0, even scalars only, a 0e
output) gives both enantiomers the same value and must sit at 50 %.
Writes docs/benchmarks/chirality-<variant>.{json,md}.
"""

import argparse
import csv
import shlex
import sys

import ase.io
import numpy as np
import torch

from common import DATA, DOCS, REPO, machine, train_model, write_frames, write_result

from equipot.config import config_from_dict, load_config
from equipot.data import bond_graph, read_configurations, torsion_conformers
from equipot.evaluate import predict
from equipot.model import load_model
from equipot.train import LAST_MODEL, MODEL

TEST = ["2_pentanol", "2_chlorobutane", "serine", "lactonitrile", "3_methylhexane", "carvone"]
VALID = ["2_fluorobutane", "alaninol", "propylene_oxide"]


def predictions(model, path, fields, label_key="chirality"):
    """(predicted, reference) chirality of every structure in ``path``: a per-structure output, or a
    per-atom one read at the stereocentre."""
    configs = read_configurations(str(path), keys={"chirality": label_key}, fields=fields)
    pred, ref = [], []
    for c, p in zip(configs, predict(model, configs)):
        label, value = np.asarray(c.targets["chirality"]).reshape(-1), np.asarray(p["chirality"]).reshape(-1)
        site = int(np.argmax(np.abs(label)))  # per atom: the stereocentre, the one atom labelled ±1
        pred.append(float(value[site]))
        ref.append(float(label[site]))
    return np.array(pred), np.array(ref)


def sign_accuracy(pred, ref) -> float:
    return float(np.mean(np.sign(pred) == np.sign(ref)))


def pct(x: float) -> str:
    return f"{100 * x:.1f} %"


def finished_run(folder, values: dict, budget_minutes: float, model_file: str = MODEL) -> bool:
    """Whether ``folder`` holds a model trained with exactly ``values`` for the whole budget
    (a killed run also leaves a model file, written at its best epoch so far)."""
    if not (folder / model_file).exists() or not (folder / "metrics.csv").exists():
        return False
    if load_config(str(folder / "config.yaml")).to_dict() != config_from_dict(values).to_dict():
        return False
    with open(folder / "metrics.csv") as f:
        history = list(csv.DictReader(f))
    return bool(history) and float(history[-1]["wall_s"]) >= 0.98 * 60 * budget_minutes


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--budget-minutes", type=float, default=10.0, help="training wall-clock per seed")
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--invariant", action="store_true", help="the invariant baseline (lmax 0, 0e output)")
    p.add_argument("--lmax", type=int, default=1)
    p.add_argument("--channels", type=int, default=16)
    p.add_argument("--layers", type=int, default=2)
    p.add_argument("--r-max", type=float, default=5.0,
                   help="cutoff in Å; about 2.5 keeps covalent bonds (and the closer 1-3 pairs) only, so that messages "
                        "follow the bonds, as the priority rules do, whatever the conformer")
    p.add_argument("--forces-weight", type=float, default=0.0,
                   help="also fit the xTB energies (weight 1) and forces (this weight): chemistry as an auxiliary task")
    p.add_argument("--seeds", type=int, nargs="+", default=[11],
                   help="train one model per seed; with several, report each, their mean and spread, and "
                        "the ensemble (mean of the models' outputs, still exactly odd under reflection)")
    p.add_argument("--reuse", action="store_true", help="load a seed's model from its run folder if it is there")
    p.add_argument("--product-mixing", action="store_true", help="model.product_mixing: mixed channels in the node products")
    p.add_argument("--gate-odd", action="store_true",
                   help="model.gate_odd_outputs: the head's 0o units gated by the atom's 0e features")
    p.add_argument("--site-labels", action="store_true",
                   help="train a per-atom 0o output on ±1 at the stereocentre (the `stereocentre` key) and 0 at the "
                        "other atoms, and read R/S at the stereocentre, instead of a per-structure sum over atoms")
    p.add_argument("--sign-loss", action="store_true",
                   help="training.loss.forms: {chirality: sign}: a logistic loss of the sign instead of the MSE to ±1")
    p.add_argument("--no-valid", action="store_true",
                   help="train on the validation molecules too (20 molecules instead of 17), the learning rate on a "
                        "cosine over the budget, and read R/S from the model after the last epoch: nothing is "
                        "picked by the three validation molecules (the valid column is then training data)")
    p.add_argument("--torsions", type=int, default=0,
                   help="add this many conformers of every training structure, each rotatable bond turned by a random "
                        "angle (equipot.data.torsions; R/S unchanged, energies and forces dropped): R/S must not depend "
                        "on the conformer")
    p.add_argument("--weight-decay", type=float, default=0.0,
                   help="training.optimizer adamw with this decoupled weight decay (against memorising the training molecules)")
    p.add_argument("--tta", type=int, default=0, metavar="K",
                   help="also read R/S as the mean over each validation and test structure and K copies of it with "
                        "every rotatable bond turned at random (the same copies for every seed): one model, its "
                        "prediction averaged over conformers that share the structure's R/S")
    p.add_argument("--tag", default="", help="appended to the result's name (a rerun on another machine, say)")
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    variant = "invariant-lmax0" if args.invariant else f"lmax{args.lmax}-both-c{args.channels}"
    variant += f"-l{args.layers}" if args.layers != 2 else ""
    variant += f"-r{args.r_max:g}" if args.r_max != 5.0 else ""
    variant += "-mix" if args.product_mixing else ""
    variant += "-gate" if args.gate_odd else ""
    variant += "-sign" if args.sign_loss else ""
    variant += "-site" if args.site_labels else ""
    variant += "-novalid" if args.no_valid else ""
    variant += f"-t{args.torsions}" if args.torsions else ""
    variant += f"-ef{args.forces_weight:g}" if args.forces_weight > 0 else ""
    variant += f"-wd{args.weight_decay:g}" if args.weight_decay > 0 else ""
    variant += f"-{args.budget_minutes:g}min" if args.budget_minutes != 10.0 else ""
    seeds_tag = ("" if args.seeds == [11] else "-seed" + "-".join(map(str, args.seeds))) + (f"-tta{args.tta}" if args.tta else "")
    frames = ase.io.read(str(DATA / "xtb/chirality/train.xyz"), ":")
    split = {name: [a for a in frames if (a.info["molecule"] in TEST) == (name == "test")
                    and (a.info["molecule"] in VALID) == (name == "valid")] for name in ("train", "valid", "test")}
    if args.no_valid:
        split["train"] = split["train"] + split["valid"]
    model_file = LAST_MODEL if args.no_valid else MODEL
    # each molecule's bonds from its least displaced structure (a strongly displaced one may break a bond)
    graphs = {m: bond_graph(min((a for a in frames if a.info["molecule"] == m), key=lambda a: a.info["sigma"]))
              for m in {a.info["molecule"] for a in frames}}
    auxiliary = args.forces_weight > 0
    if auxiliary and args.torsions:
        p.error("--torsions drops energies and forces from the new conformers: not with --forces-weight")
    label_key = "chirality@stereocentre" if args.site_labels else "chirality"  # ±1 on the stereocentre, 0 elsewhere
    output = ({"type": "0e" if args.invariant else "0o", "level": "node"} if args.site_labels
              else "0e" if args.invariant else "0o")
    # a per-atom MSE is a mean over atoms: weight it by the mean atom count, so the stereocentre counts as one structure did
    output_weight = float(np.mean([len(a) for a in split["train"]])) if args.site_labels else 1.0
    turned_files = {}
    if args.tta:  # K turned copies of every validation and test structure, in order, drawn once for all seeds
        rng = np.random.default_rng(2024)
        for name in ("valid", "test"):
            copies = [c for a in split[name] for c in torsion_conformers(a, args.tta, rng, graphs[a.info["molecule"]])]
            turned_files[name] = write_frames(REPO / "runs" / f"chirality-tta{args.tta}" / f"{name}.xyz", copies)
    runs = []  # one dict per seed
    for seed in args.seeds:
        out = REPO / "runs" / (f"chirality-{variant}" + (f"-seed{seed}" if seed != 11 else ""))
        files = {name: write_frames(out / f"{name}.xyz", split[name]) for name in split}
        train_file = files["train"]  # accuracies are read on the structures of the data set only
        if args.torsions:  # with the turned conformers, drawn with the run's seed
            rng = np.random.default_rng(seed)
            turned = [c for a in split["train"] for c in torsion_conformers(a, args.torsions, rng, graphs[a.info["molecule"]])]
            train_file = write_frames(out / "train-torsions.xyz", split["train"] + turned)
        values = {
            "output_dir": str(out / "train"), "seed": seed,
            "data": {"train": str(train_file), "valid": str(files["valid"]),
                     "keys": {"chirality": label_key, **({"energy": "energy", "forces": "forces"} if auxiliary else {})}},
            "model": {"r_max": args.r_max, "channels": args.channels, "lmax": 0 if args.invariant else args.lmax,
                      "parity": "natural" if args.invariant else "both", "correlation": 3, "num_layers": args.layers,
                      "product_mixing": args.product_mixing,
                      "gate_odd_outputs": args.gate_odd,
                      "outputs": {"chirality": output}},
            "training": {"threads": args.threads, "batch_size": 10, "lr": 0.005, "max_epochs": 100000,
                         **({"optimizer": "adamw", "weight_decay": args.weight_decay} if args.weight_decay > 0 else {}),
                         **({"scheduler": "budget"} if args.no_valid else {}),
                         "max_minutes": args.budget_minutes, "patience": 100000, "lr_patience": 8,
                         "loss": {"energy": 1.0 if auxiliary else 0.0, "forces": args.forces_weight,
                                  "outputs": {"chirality": output_weight},
                                  **({"forms": {"chirality": "sign"}} if args.sign_loss else {})}},
        }
        reused = args.reuse and finished_run(out / "train", values, args.budget_minutes, model_file)
        if not reused:
            train_model(values)
        model = load_model(str(out / "train" / model_file))
        with open(out / "train" / "metrics.csv") as f:
            history = list(csv.DictReader(f))
        preds = {name: predictions(model, files[name], model.output_fields, label_key) for name in split}
        tta = {}
        for name, path in turned_files.items():  # the structure's own output and its K copies', averaged
            copies = predictions(model, path, model.output_fields, label_key)[0].reshape(-1, args.tta)
            tta[name] = (preds[name][0] + copies.sum(axis=1)) / (args.tta + 1)
        runs.append({"seed": seed, "epochs": len(history), "wall": float(history[-1]["wall_s"]), "reused": reused,
                     "n_params": sum(x.numel() for x in model.parameters()),
                     "pred": {name: p for name, (p, _) in preds.items()}, "tta": tta})
    ref = {name: preds[name][1] for name in split}  # the same structures for every seed
    names = np.array([a.info["molecule"] for a in split["test"]])
    conformers = np.array([a.info.get("conformer", -1) for a in split["test"]])
    n_params = runs[0]["n_params"]
    common = {"model": "equipot", "variant": variant, "dataset": "chirality", "n_params": n_params, "dtype": "float32"}
    records, rows, per_molecule = [], [], {}

    def by_molecule(pred):
        return {m: sign_accuracy(pred[names == m], ref["test"][names == m]) for m in TEST}

    def by_conformer(pred):
        """Per test molecule and conformer: (number of structures, share right); R/S does not depend on the
        conformer, so a model that gets one conformer wrong and another right has not found the rule."""
        out = {m: {} for m in TEST}
        for m in TEST:
            for c in np.unique(conformers[names == m]):
                sel = (names == m) & (conformers == c)
                out[m][int(c)] = (int(sel.sum()), sign_accuracy(pred[sel], ref["test"][sel]))
        return out

    for run in runs:
        acc = {name: sign_accuracy(run["pred"][name], ref[name]) for name in split}
        records += [{**common, "seed": run["seed"], "train_wall_s": round(run["wall"]), "epochs": run["epochs"],
                     "reused": run["reused"], "split": name, "metric": "sign_accuracy", "value": round(acc[name], 4),
                     "unit": ""} for name in split]
        tta = {name: sign_accuracy(run["tta"][name], ref[name]) for name in run["tta"]}
        records += [{**common, "seed": run["seed"], "split": name, "metric": "sign_accuracy_tta", "value": round(a, 4),
                     "unit": "", "turned_copies": args.tta} for name, a in tta.items()]
        rows.append((f"seed {run['seed']}", run["epochs"], *(pct(acc[name]) for name in split),
                     *(pct(tta[name]) for name in tta)))
        per_molecule[f"seed {run['seed']}"] = by_molecule(run["pred"]["test"])
        if args.tta:
            per_molecule[f"seed {run['seed']}, with {args.tta} turned copies"] = by_molecule(run["tta"]["test"])
    if len(runs) > 1:
        def over_seeds(key, names, prefix, extra):
            """Each split's accuracy per seed and the committee's outputs; their records."""
            accs = {name: [sign_accuracy(run[key][name], ref[name]) for run in runs] for name in names}
            ensemble = {name: np.mean([run[key][name] for run in runs], axis=0) for name in names}
            for name in names:
                for metric, value in ((f"{prefix}_mean", np.mean(accs[name])), (f"{prefix}_std", np.std(accs[name], ddof=1)),
                                      (f"{prefix}_ensemble", sign_accuracy(ensemble[name], ref[name]))):
                    records.append({**common, "seeds": args.seeds, "split": name, "metric": metric,
                                    "value": round(float(value), 4), "unit": "", **extra})
            return accs, ensemble

        accs, ensemble = over_seeds("pred", split, "sign_accuracy", {})
        accs_tta, ensemble_tta = over_seeds("tta", turned_files, "sign_accuracy_tta", {"turned_copies": args.tta})
        spread = lambda a: f"{100 * np.mean(a):.1f} ± {100 * np.std(a, ddof=1):.1f} %"  # noqa: E731
        rows.append(("mean ± std", "", *(spread(accs[name]) for name in split),
                     *(spread(accs_tta[name]) for name in turned_files)))
        rows.append(("ensemble", "", *(pct(sign_accuracy(ensemble[name], ref[name])) for name in split),
                     *(pct(sign_accuracy(ensemble_tta[name], ref[name])) for name in turned_files)))
        per_molecule["ensemble"] = by_molecule(ensemble["test"])
    last = ensemble["test"] if len(runs) > 1 else runs[0]["pred"]["test"]
    per_conformer = by_conformer(last)
    name = f"chirality-{variant}{seeds_tag}" + (f"-{args.tag}" if args.tag else "")
    path = write_result(name, args.threads, records,
                        extra={"test_molecules": TEST, "valid_molecules": VALID, "seeds": args.seeds,
                               "per_test_molecule": per_molecule,
                               "per_test_conformer": {m: {str(c): round(a, 4) for c, (_, a) in v.items()}
                                                      for m, v in per_conformer.items()}})
    md = [f"# Chirality (R/S) of molecules never seen in training: equipot {variant}", "",
          f"Machine: {machine(args.threads)['cpu']}, {args.threads} thread(s); float32; {args.budget_minutes:g} min "
          f"of training per seed; {n_params} parameters; {len(split['train'])} / {len(split['valid'])} / "
          f"{len(split['test'])} train / valid / test structures"
          + (f", and {args.torsions} turned conformers of each training structure" if args.torsions else "")
          + "; command: "
          f"`python benchmarks/chirality.py {shlex.join(sys.argv[1:])}`",
          "", f"| model | epochs | train | {'valid (trained on)' if args.no_valid else 'valid'} | test |"
          + (f" valid, mean over {args.tta} turned copies too | test, mean over {args.tta} turned copies too |" if args.tta else ""),
          "|---|---|---|---|---|" + ("---|---|" if args.tta else "")]
    md += [f"| {' | '.join(map(str, r))} |" for r in rows]
    md += ["", "Test accuracy per molecule:", ""]
    md += [f"- {who}: " + ", ".join(f"{m} {100 * a:.0f} %" for m, a in scores.items())
           for who, scores in per_molecule.items()]
    md += ["", f"Test accuracy per conformer ({'ensemble' if len(runs) > 1 else 'the one seed'}; structures in brackets):", ""]
    md += [f"- {m}: " + ", ".join(f"conformer {c} ({n}) {100 * a:.0f} %" for c, (n, a) in v.items())
           for m, v in per_conformer.items()]
    (DOCS / f"{name}.md").write_text("\n".join(md) + "\n")
    print("\n".join(md))
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
