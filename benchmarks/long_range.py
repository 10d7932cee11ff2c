"""Long range: a local model and the same model with learnt-charge electrostatics, side by side.

    python benchmarks/long_range.py dimers --budget-minutes 15 --threads 1
    python benchmarks/long_range.py dimers --long-range --budget-minutes 15 --threads 1
    python benchmarks/long_range.py dimers --compare      # table + plots from the two records

lode: ../shared/data/lode-dimers, six dimers: binding curves of one model trained on all of them.
ionic: ../shared/data/xtb/ionic_pbc, periodic cells with stress (20 % held out).
dimers: ../shared/data/xtb/dimers_lr (train 2000 / test 1000): two molecular fragments, ions
and neutrals, 3-18 Å apart. Energy and force errors are binned by separation (3-5, 5-8, 8-12,
12-18 Å). Charges are latent: the models see energies and forces only. Same cutoff (5 Å),
same network; the long-range model adds the electrostatic energy of its charges.
Writes docs/benchmarks/long_range-dimers-<variant>.json; --compare writes the .md and plots.
"""

import argparse
import json
import sys

import numpy as np
import torch

from common import DATA, DOCS, REPO, machine, train_model, write_result

from equipot.data import read_configurations
from equipot.evaluate import predict

BINS = [(3, 5), (5, 8), (8, 12), (12, 18)]
SETS = {
    "dimers": {"train": "xtb/dimers_lr/train.xyz", "test": "xtb/dimers_lr/test.xyz", "x": "separation", "stress": 0.0},
    # periodic alkali-halide cells: no test file, so a seeded 20 % of the structures is held out
    "ionic": {"train": "xtb/ionic_pbc/train.xyz", "test": None, "x": None, "stress": 100.0},
    # six dimers (charged / polar / apolar), 10 train + 3 test frames each, 4-15 Å apart; stored as
    # isolated dimers in 30 Å periodic boxes: used here as the open molecules they stand for
    # only 54 training structures of six compositions: the binding energies need a heavy energy
    # weight (forces outnumber them 60:1), and a plateau patience that is not 30 steps
    "lode": {"train": "lode-dimers/train-id*.xyz", "test": "lode-dimers/test-id*.xyz", "x": "distance", "stress": 0.0,
             "group": "label", "energy_weight": 1000.0, "lr_patience": 50},
}


def lode_file(pattern, out):
    """All dimers of ``pattern`` in one file: open boundaries, total charge = chargeA + chargeB,
    and as the energy the binding energy E − E_A − E_B (the file's ``inter_energy``; the
    fragments keep their geometry along each curve, so the forces are unchanged). The total
    DFT energies (−1.4·10^4 eV) differ from dimer to dimer by offsets that six compositions
    cannot pin down through per-element E0s; the curves are what the benchmark is about."""
    import ase.io
    from ase.calculators.singlepoint import SinglePointCalculator

    from common import write_frames

    frames = []
    for path in sorted(DATA.glob(pattern)):
        for a in ase.io.read(str(path), ":"):
            forces = a.get_forces()
            a.info["total_energy"] = a.get_potential_energy()
            a.pbc, a.cell = False, None
            a.calc = SinglePointCalculator(a, energy=float(a.info["inter_energy"]), forces=forces)
            a.info["total_charge"] = int(a.info["chargeA"]) + int(a.info["chargeB"])
            frames.append(a)
    return write_frames(out / pattern.split("/")[-1].replace("-id*", ""), frames)


def split_files(spec, out):
    """(train, test) paths; carve a test split when the set has no test file."""
    if "*" in spec["train"]:
        return lode_file(spec["train"], out), lode_file(spec["test"], out)
    if spec["test"]:
        return DATA / spec["train"], DATA / spec["test"]
    import ase.io

    from common import write_frames

    frames = ase.io.read(str(DATA / spec["train"]), ":")
    order = np.random.default_rng(0).permutation(len(frames))
    n_test = len(frames) // 5
    test = write_frames(out / "test.xyz", [frames[i] for i in order[:n_test]])
    train = write_frames(out / "train.xyz", [frames[i] for i in sorted(order[n_test:])])
    return train, test


def binned(values, x):
    out = {}
    for lo, hi in BINS:
        m = (x >= lo) & (x < hi)
        if m.any():
            out[f"{lo}-{hi}"] = (float(np.sqrt(np.mean(values[m] ** 2))), float(np.mean(np.abs(values[m]))), int(m.sum()))
    return out


def evaluate(model, path, x_key, group_key="pair"):
    import ase.io

    configs = read_configurations(str(path), keys={"energy": "energy", "forces": "forces"}, fields=model.output_fields)
    preds = predict(model, configs)
    frames = ase.io.read(str(path), ":")
    x = np.array([a.info[x_key] if x_key else 10.0 for a in frames])  # no separation: one bin
    e_err = np.array([p["energy"] - float(c.targets["energy"]) for c, p in zip(configs, preds)])
    f_rmse = np.array([np.sqrt(np.mean((p["forces"] - c.targets["forces"]) ** 2)) for c, p in zip(configs, preds)])
    pair = [str(a.info.get(group_key, "")) for a in frames]
    e_pred = np.array([p["energy"] for p in preds])
    e_ref = np.array([float(c.targets["energy"]) for c in configs])
    return x, e_err, f_rmse, pair, e_pred, e_ref


def train_and_record(args):
    spec = SETS[args.set]
    variant = "long-range" if args.long_range else "local"
    if args.supervise_charges:
        variant += "-charges"
    variant += f"-{args.tag}" if args.tag else ""
    out = REPO / "runs" / f"long_range-{args.set}-{variant}"
    train_path, test_path = split_files(spec, out.parent / f"long_range-{args.set}-data")
    model_cfg = {"r_max": 5.0, "channels": args.channels, "lmax": 1, "parity": "natural", "correlation": 3,
                 "num_layers": 2}
    if args.long_range:
        model_cfg["long_range"] = {"smearing": args.smearing, "method": "auto"}
    keys = {"energy": "energy", "forces": "forces", **({"stress": "stress"} if spec["stress"] else {})}
    outputs_loss = {}
    if args.supervise_charges:  # the reference (xTB Mulliken) charges as a third loss term
        model_cfg["outputs"] = {"charges": "charges"}
        keys["charges"] = "charges"
        outputs_loss = {"charges": 10.0}
    values = {
        "output_dir": str(out), "seed": 5,
        "data": {"train": str(train_path), "valid_fraction": 0.05 if spec["test"] else 0.1, "e0s": "fit",
                 "keys": keys},
        "model": model_cfg,
        "training": {"threads": args.threads, "batch_size": 10, "lr": 0.005, "max_epochs": 100000,
                     "max_minutes": args.budget_minutes, "patience": 100000, "lr_patience": spec.get("lr_patience", 5),
                     "loss": {"energy": spec.get("energy_weight", 10.0), "forces": 10.0, "stress": spec["stress"],
                              "outputs": outputs_loss}},
    }
    model, result, wall = train_model(values)
    x, e_err, f_rmse, pair, e_pred, e_ref = evaluate(model, test_path, spec["x"], spec.get("group", "pair"))
    if spec.get("group"):  # binding curves over every frame of each dimer, training frames included
        import ase.io

        from common import write_frames

        both = write_frames(out.parent / f"long_range-{args.set}-data" / "all.xyz",
                            ase.io.read(str(train_path), ":") + ase.io.read(str(test_path), ":"))
        _, _, _, pair_all, e_pred_all, e_ref_all = evaluate(model, both, spec["x"], spec["group"])
        x_all = np.array([a.info[spec["x"]] for a in ase.io.read(str(both), ":")])
    common = {"model": "equipot", "variant": variant, "dataset": f"{args.set}_lr", "train_wall_s": round(wall),
              "epochs": result["epochs"], "n_params": sum(p.numel() for p in model.parameters()), "dtype": "float32"}
    records = []
    for name, values_ in (("energy", 1000 * e_err), ("forces", 1000 * f_rmse)):
        unit = "meV" if name == "energy" else "meV/A"
        for b, (rmse, mae, n) in binned(values_, x).items():
            records.append({**common, "split": f"test {b} A", "metric": f"{name}_rmse", "value": round(rmse, 3), "unit": unit, "n": n})
            records.append({**common, "split": f"test {b} A", "metric": f"{name}_mae", "value": round(mae, 3), "unit": unit, "n": n})
    per_structure = {"separation": x.tolist(), "energy_error_eV": e_err.tolist(), "force_rmse_eV_A": f_rmse.tolist(),
                     "pair": pair, "energy_pred_eV": e_pred.tolist(), "energy_ref_eV": e_ref.tolist()}
    if spec.get("group"):
        per_structure.update({"separation": x_all.tolist(), "pair": pair_all, "energy_pred_eV": e_pred_all.tolist(),
                              "energy_ref_eV": e_ref_all.tolist()})
    if spec.get("group"):  # the binding curves themselves, every frame of every dimer
        records += [{**common, "split": f"{g} {d:.2f} A", "metric": "binding_energy", "value": round(1000 * e, 3),
                     "reference": round(1000 * r, 3), "unit": "meV"}
                    for g, d, e, r in zip(pair_all, x_all, e_pred_all, e_ref_all)]
    if not spec["x"]:  # periodic cells: overall errors, stress included
        from equipot.evaluate import evaluate_file

        s = evaluate_file(model, str(test_path), progress=False)
        records = [{**common, "split": "test", "metric": k, "value": round(float(s[k]), 3),
                    "unit": {"energy": "meV", "energy_per_atom": "meV/atom", "forces": "meV/A", "stress": "meV/A^3"}[k.rsplit("_", 1)[0]]}
                   for k in ("energy_per_atom_rmse", "energy_per_atom_mae", "forces_rmse", "forces_mae", "stress_rmse", "stress_mae") if k in s]
    path = write_result(f"long_range-{args.set}-{variant}", args.threads, records)
    (REPO / "runs" / f"long_range-{args.set}-{variant}-per_structure.json").write_text(json.dumps(per_structure))
    print(json.dumps(records[:8], indent=1))
    print(f"wrote {path}")


def compare(args):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    runs = {}
    tag = f"-{args.tag}" if args.tag else ""
    for variant in ("local", "long-range", "long-range-charges"):
        path = DOCS / f"long_range-{args.set}-{variant}{tag}.json"
        if path.exists() or variant != "long-range-charges":
            runs[variant] = json.loads(path.read_text())
    lines = [f"# Long range, {args.set}: local vs long-range model (same 5 Å cutoff, same network)", "",
             f"Machine: {runs['local']['machine']['cpu']}, {runs['local']['machine']['threads']} thread(s); "
             + ("test set binned by separation; " if SETS[args.set]["x"] else "a seeded 20 % of the cells held out as the test set; ")
             + f"charges latent (energies and forces only) unless stated. Commands: "
             f"`{runs['local']['command']}`, `{runs['long-range']['command']}`", "",
             "| separation (Å) | structures | E RMSE local (meV) | E RMSE long-range (meV) | ratio | F RMSE local (meV/Å) | F RMSE long-range (meV/Å) |",
             "|---|---|---|---|---|---|---|"]
    table = {v: {(r["split"], r["metric"]): r for r in rec["records"]} for v, rec in runs.items()}
    if not SETS[args.set]["x"]:
        lines = lines[:4] + ["| metric | local | long-range |", "|---|---|---|"]
        for (split, metric), r in table["local"].items():
            lines.append(f"| {metric} ({r['unit']}) | {r['value']:.2f} | {table['long-range'][(split, metric)]['value']:.2f} |")
        lines.append("")
        lines += [f"{v}: {rec['records'][0]['epochs']} epochs in {rec['records'][0]['train_wall_s'] / 60:.1f} min."
                  for v, rec in runs.items()]
        (DOCS / f"long_range-{args.set}{tag}.md").write_text("\n".join(lines) + "\n")
        print("\n".join(lines))
        return
    for lo, hi in BINS:
        split = f"test {lo}-{hi} A"
        if (split, "energy_rmse") not in table["local"]:
            continue
        el, er = table["local"][(split, "energy_rmse")], table["long-range"][(split, "energy_rmse")]
        fl, fr = table["local"][(split, "forces_rmse")]["value"], table["long-range"][(split, "forces_rmse")]["value"]
        lines.append(f"| {lo}–{hi} | {el['n']} | {el['value']:.1f} | {er['value']:.1f} | {el['value'] / er['value']:.1f}× | {fl:.1f} | {fr:.1f} |")
    if "long-range-charges" in table:
        lines += ["", "With the reference charges as a third loss term (`--supervise-charges`, weight 10):", "",
                  "| separation (Å) | E RMSE local (meV) | E RMSE long-range + charges (meV) | ratio | F RMSE (meV/Å) |", "|---|---|---|---|---|"]
        for lo, hi in BINS:
            split = f"test {lo}-{hi} A"
            if (split, "energy_rmse") in table["long-range-charges"]:
                el, ec = table["local"][(split, "energy_rmse")]["value"], table["long-range-charges"][(split, "energy_rmse")]["value"]
                fc = table["long-range-charges"][(split, "forces_rmse")]["value"]
                lines.append(f"| {lo}–{hi} | {el:.1f} | {ec:.1f} | {el / ec:.1f}× | {fc:.1f} |")
    for v, rec in runs.items():
        meta = rec["records"][0]
        if not SETS[args.set]["x"] and v == "long-range-charges":
            continue
        lines.append(f"\n{v}: {meta['epochs']} epochs in {meta['train_wall_s'] / 60:.1f} min, {meta['n_params']} parameters.")
    lines += ["", f"![binned errors](long_range-{args.set}{tag}.png)", "", f"![binding curves](long_range-{args.set}{tag}-curves.png)"]
    if args.set == "dimers":
        scan_curves(tag)
        if (DOCS / f"long_range-dimers{tag}-scans.png").exists():
            lines += ["", "Binding curves: each model on a rigid scan of the relaxed fragments (fragment B moved away "
                      "from A along x; E(∞) from the two fragments alone, each with its own charge), with the xTB test "
                      "structures of the same pair at their random orientations (E − E_A − E_B with the relaxed "
                      "fragments' energies, so the molecular pairs also carry their small deformation energies; "
                      "chloride + chloride has none):", "", f"![scans](long_range-dimers{tag}-scans.png)"]
    (DOCS / f"long_range-{args.set}{tag}.md").write_text("\n".join(lines) + "\n")

    fig, ax = plt.subplots(figsize=(5, 3.5))
    present = [(lo, hi) for lo, hi in BINS if (f"test {lo}-{hi} A", "energy_rmse") in table["local"]]
    for v, marker in (("local", "o"), ("long-range", "s"), ("long-range-charges", "^")):
        if v not in table:
            continue
        ys = [table[v][(f"test {lo}-{hi} A", "energy_rmse")]["value"] for lo, hi in present]
        ax.plot([f"{lo}–{hi}" for lo, hi in present], ys, marker=marker, label=v)
    ax.set_yscale("log")
    ax.set_xlabel("separation (Å)")
    ax.set_ylabel("energy RMSE (meV)")
    ax.legend()
    fig.tight_layout()
    fig.savefig(DOCS / f"long_range-{args.set}{tag}.png", dpi=110)
    plt.close(fig)

    per = {v: json.loads((REPO / "runs" / f"long_range-{args.set}-{v}{tag}-per_structure.json").read_text()) for v in runs}
    pairs = {}
    for p in per["local"]["pair"]:
        pairs[p] = pairs.get(p, 0) + 1
    chosen = sorted(pairs, key=lambda p: -pairs[p])[:4] if args.set == "dimers" else sorted(pairs)
    ncols = 2 if len(chosen) == 4 else min(3, len(chosen))
    nrows = int(np.ceil(len(chosen) / ncols))
    fig, axes = plt.subplots(nrows, ncols, figsize=(4 * ncols, 3.2 * nrows), squeeze=False)
    for ax, name in zip(axes.flat, chosen):
        for v, style in (("local", "C0o"), ("long-range", "C1s"), ("long-range-charges", "C2^")):
            if v not in per:
                continue
            d = per[v]
            m = np.array([p == name for p in d["pair"]])
            x = np.array(d["separation"])[m]
            ref = np.array(d["energy_ref_eV"])[m]
            pred = np.array(d["energy_pred_eV"])[m]
            far = x.argmax()
            order = np.argsort(x)
            if args.set == "dimers":
                if v == "local":
                    ax.plot(x, ref - ref[far], "k.", label="xTB")
                ax.plot(x, pred - ref[far], style, ms=3, alpha=0.7, label=v)
            else:  # lode: binding energies, E − E_A − E_B
                if v == "local":
                    ax.plot(x[order], ref[order], "k.-", label="DFT")
                ax.plot(x[order], pred[order], style + "-", ms=3, alpha=0.8, label=v)
        ax.set_title(name, fontsize=9)
        ax.set_xlabel("separation (Å)")
        ax.set_ylabel("E − E_ref(farthest) (eV)" if args.set == "dimers" else "E − E_A − E_B (eV)")
        ax.legend(fontsize=7)
    for ax in list(axes.flat)[len(chosen):]:
        ax.set_visible(False)
    fig.tight_layout()
    fig.savefig(DOCS / f"long_range-{args.set}{tag}-curves.png", dpi=110)
    plt.close(fig)
    print("\n".join(lines))


SCAN_PAIRS = ("chloride+chloride", "chloride+tetramethylammonium", "chloride+water", "water+water")


def scan_curves(tag: str) -> None:
    """Binding curves E(d) − E(∞) of the dimers set: each model on a rigid scan of the relaxed
    fragments (fragments.xyz), B moved along x away from A, against the xTB test structures of
    the same pair, E − E_A − E_B with the relaxed fragments' energies. Writes
    long_range-dimers{tag}-scans.{png,json}."""
    import ase.io
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from equipot.data import Configuration
    from equipot.model import load_model

    models = {v: REPO / "runs" / f"long_range-dimers-{v}{tag}" / "model.safetensors" for v in ("local", "long-range")}
    if not all(m.exists() for m in models.values()):
        print(f"no scans: the trained models of tag {tag!r} are not in runs/")
        return
    fragments = {a.info["fragment"]: a for a in ase.io.read(str(DATA / "xtb/dimers_lr/fragments.xyz"), ":")}
    tests = ase.io.read(str(DATA / SETS["dimers"]["test"]), ":")
    separations = np.linspace(3.0, 18.0, 61)

    def config(atoms, charge):
        return Configuration(numbers=atoms.numbers, positions=atoms.positions, cell=np.zeros((3, 3)),
                             pbc=np.zeros(3, bool), source="scan", total_charge=float(charge))

    fig, axes = plt.subplots(1, len(SCAN_PAIRS), figsize=(3.6 * len(SCAN_PAIRS), 3.3), squeeze=False)
    records = []
    for ax, pair in zip(axes.flat, SCAN_PAIRS):
        name_a, name_b = pair.split("+")
        e_a, e_b = fragments[name_a].get_potential_energy(), fragments[name_b].get_potential_energy()
        a, b = fragments[name_a].copy(), fragments[name_b].copy()
        qa, qb = a.info["total_charge"], b.info["total_charge"]
        a.positions -= a.get_center_of_mass()
        b.positions -= b.get_center_of_mass()
        points = [t for t in tests if t.info["pair"] == pair]
        x = np.array([t.info["separation"] for t in points])
        ref = np.array([t.get_potential_energy() - e_a - e_b for t in points])
        ax.plot(x, ref, "k.", ms=4, label="xTB test structures")
        for (v, path), style in zip(models.items(), ("C0-", "C1-")):
            model = load_model(str(path), dtype=torch.float64)
            ok, dimers = [], []
            for d in separations:
                both = a + b.copy()
                both.positions[len(a):] += [d, 0.0, 0.0]
                if np.min(both.get_all_distances()[: len(a), len(a):]) > 1.5:
                    ok.append(d)
                    dimers.append(config(both, qa + qb))
            alone = predict(model, [config(a, qa), config(b, qb)])
            e_inf = alone[0]["energy"] + alone[1]["energy"]
            curve = np.array([p["energy"] for p in predict(model, dimers)]) - e_inf
            ax.plot(ok, curve, style, label=v)
            records += [{"model": "equipot", "variant": f"{v}{tag}", "dataset": "dimers_lr", "split": f"{pair} scan {d:.2f} A",
                         "metric": "binding_energy", "value": round(float(e) * 1000, 3), "unit": "meV"}
                        for d, e in zip(ok, curve)]
        ax.set_title(f"{pair} ({qa:+d}, {qb:+d})", fontsize=9)
        ax.set_xlabel("separation (Å)")
        ax.set_ylabel("E − E_A − E_B (eV)")
        ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(DOCS / f"long_range-dimers{tag}-scans.png", dpi=110)
    plt.close(fig)
    write_result(f"long_range-dimers{tag}-scans", 1, records)
    print(f"wrote long_range-dimers{tag}-scans.png")


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("set", choices=sorted(SETS))
    p.add_argument("--long-range", action="store_true")
    p.add_argument("--compare", action="store_true")
    p.add_argument("--supervise-charges", action="store_true", help="also fit the data's reference charges")
    p.add_argument("--budget-minutes", type=float, default=15.0)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--channels", type=int, default=32)
    p.add_argument("--smearing", type=float, default=1.0)
    p.add_argument("--tag", default="", help="suffix of the variant names (e.g. a longer budget); --compare reads the same")
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    compare(args) if args.compare else train_and_record(args)


if __name__ == "__main__":
    main()
