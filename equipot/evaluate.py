"""`equipot eval MODEL [MODEL ...] DATA`: errors, parity plots and predictions of a model, or of
the mean of a committee of models, on a data set."""

import json
import os
from typing import Dict, List, Optional, Sequence

import ase.io
import numpy as np
import torch
from ase import Atoms
from ase.data import atomic_numbers, chemical_symbols
from ase.calculators.singlepoint import SinglePointCalculator

from .data import Configuration, DataError, GraphLoader, read_configurations
from .atomic import atomic_write
from .model.potential import Potential
from .train.metrics import ErrorAccumulator


class CommitteeError(ValueError):
    pass


EVAL_KEYS = {"energy": "energy", "forces": "forces", "stress": "stress"}


def predict(
    model: Potential, configs: Sequence[Configuration], batch_size: int = 20, progress: bool = False
) -> List[Dict[str, np.ndarray]]:
    """Predictions per configuration (numpy, eV / Å units), in input order."""
    from tqdm import tqdm

    dtype = model.dtype
    device = model.device
    r_max = model.model_config.r_max
    loader = GraphLoader(configs, r_max, batch_size)
    results = []
    for graph in tqdm(loader, desc="evaluating", disable=not progress, leave=False):
        pred = model(graph.to(device, dtype))
        pred = {k: v.detach().cpu().double().numpy() for k, v in pred.items()}
        starts = np.cumsum([0] + graph.atoms_per_graph().tolist())
        for g in range(graph.n_graphs):
            a, b = starts[g], starts[g + 1]
            result = {
                "energy": float(pred["energy"][g]),
                "energies": pred["energies"][a:b],
                "forces": pred["forces"][a:b],
                "stress": pred["stress"][g],
                "periodic": bool(graph.pbc[g].any()),
            }
            for name, f in model.output_fields.items():
                result[name] = pred[name][a:b] if f.level == "node" else pred[name][g]
            if "energy_long_range" in pred:  # the electrostatic part of the energy
                result["energy_long_range"] = float(pred["energy_long_range"][g])
                result["energies_long_range"] = pred["energies_long_range"][a:b]
            results.append(result)
    return results


def committee_predict(
    models: Sequence[Potential], configs: Sequence[Configuration], batch_size: int = 20, progress: bool = False
) -> List[Dict[str, np.ndarray]]:
    """The mean of several models' predictions (:func:`predict`), per configuration.

    A mean of equivariant predictions is equivariant and the mean forces are minus the gradient
    of the mean energy, so the committee is a model of the same kind. Each configuration also
    gets the committee's spread, an estimate of the error where no label is known:
    ``energy_std`` (eV) and ``forces_std`` (eV/Å, per atom: the standard deviation over the
    models of the force vector, the root of the summed variances of its components).
    """
    check_committee(models)
    runs = [predict(m, configs, batch_size=batch_size, progress=progress) for m in models]
    results = []
    for per_model in zip(*runs):
        result = committee_mean([{k: v for k, v in p.items() if k != "periodic"} for p in per_model])
        result["energy"] = float(result["energy"])
        result["periodic"] = per_model[0]["periodic"]
        results.append(result)
    return results


def check_committee(models: Sequence[Potential]) -> None:
    """Models that can be averaged: at least one, all with the same outputs, long range or not,
    and the same dtype."""
    if not models:
        raise CommitteeError("a committee needs at least one model")
    first = models[0]
    for k, m in enumerate(models[1:], 2):
        if m.output_fields != first.output_fields or (m.long_range is None) != (first.long_range is None):
            raise CommitteeError(f"model {k} of the committee has outputs {sorted(m.output_fields)}"
                                 f"{'' if m.long_range is None else ' and long range'}, the first "
                                 f"{sorted(first.output_fields)}{'' if first.long_range is None else ' and long range'}: "
                                 "a committee needs the same outputs")
        if m.dtype != first.dtype:
            raise CommitteeError(f"model {k} of the committee is in {m.dtype}, the first in {first.dtype}: "
                                 "load them in one dtype")


def committee_mean(outs: Sequence[Dict[str, np.ndarray]]) -> Dict[str, np.ndarray]:
    """The mean over models of every quantity that all of ``outs`` hold, with the spread of the
    energy (``energy_std``) and, per atom, of the force vector (``forces_std``: the root of the
    summed variances of its components)."""
    mean = {k: np.mean([o[k] for o in outs], axis=0) for k in outs[0] if all(k in o for o in outs)}
    mean["energy_std"] = float(np.std([np.reshape(o["energy"], -1)[0] for o in outs]))
    mean["forces_std"] = np.sqrt(np.stack([o["forces"] for o in outs]).var(axis=0).sum(axis=-1))
    return mean


def error_table(configs: Sequence[Configuration], preds: Sequence[dict], scalars: Sequence[str] = ()) -> Dict[str, float]:
    """MAE and RMSE of every labelled quantity that the model predicts (R² for typed outputs; for
    the scalar outputs named in ``scalars`` whose labels are all -1, 0 or +1, the share of the ±1 labels
    predicted with the right sign)."""
    acc = ErrorAccumulator()
    for c, p in zip(configs, preds):
        targets = {k: np.asarray(v) for k, v in c.targets.items() if k in p and k != "energies"}
        pred = {k: np.asarray(p[k]) for k in targets}
        if "energy" in targets:
            targets["energy"], pred["energy"] = targets["energy"].reshape(1), pred["energy"].reshape(1)
        acc.add_batch(pred, targets, np.array([c.n_atoms]), scalars)
        if "forces" in targets:  # and per element (as forces[H]), where the errors of one element often dominate
            err = pred["forces"] - targets["forces"]
            for z in np.unique(c.numbers):
                acc.add(f"forces[{chemical_symbols[int(z)]}]", err[c.numbers == z])
    summary = acc.summary()
    if preds and "energy_long_range" in preds[0]:  # how the predicted energy splits, on average
        summary["mean_energy_long_range_eV"] = float(np.mean([p["energy_long_range"] for p in preds]))
        summary["mean_energy_short_range_eV"] = float(np.mean([p["energy"] - p["energy_long_range"] for p in preds]))
    summary["n_structures"] = len(configs)
    summary["n_atoms"] = int(sum(c.n_atoms for c in configs))
    return summary


def format_table(summary: Dict[str, float], units: Optional[Dict[str, str]] = None) -> str:
    """A text table; ``units`` gives the units of typed outputs ({name: unit})."""
    elements = sorted({k[len("forces["):k.index("]")] for k in summary if k.startswith("forces[")},
                      key=lambda symbol: atomic_numbers[symbol])
    rows = [("energy", "meV"), ("energy_per_atom", "meV/atom"), ("forces", "meV/Å")]
    rows += [(f"forces[{symbol}]", "meV/Å") for symbol in elements] + [("stress", "meV/Å³")]
    rows += [(name, unit) for name, unit in (units or {}).items()]
    lines = [f"{'quantity':<18}{'MAE':>12}{'RMSE':>12}{'R²':>9}  unit"]
    for name, unit in rows:
        if f"{name}_mae" in summary:
            r2 = f"{summary[name + '_r2']:>9.4f}" if f"{name}_r2" in summary else " " * 9
            lines.append(f"{name:<18}{summary[name + '_mae']:>12.4g}{summary[name + '_rmse']:>12.4g}{r2}  {unit}")
        if f"{name}_sign_accuracy" in summary:  # labels ±1: classes by sign
            lines.append(f"{name}: sign right for {100 * summary[name + '_sign_accuracy']:.1f} % of the ±1 labels")
    if "mean_energy_long_range_eV" in summary:
        lines.append(f"mean predicted energy: short range {summary['mean_energy_short_range_eV']:.4f} eV, "
                     f"long range (electrostatic) {summary['mean_energy_long_range_eV']:.4f} eV")
    lines.append(f"{summary['n_structures']} structures, {summary['n_atoms']} atoms")
    if "groups" in summary:
        lines += ["", _group_table(summary, rows)]
    return "\n".join(lines)


def _group_table(summary: Dict, rows) -> str:
    """MAE and RMSE of each quantity per group of structures (``evaluate_file(..., by=KEY)``)."""
    names = [(name, unit) for name, unit in rows if f"{name}_mae" in summary and name != "energy_per_atom" and "[" not in name]
    head = f"{'by ' + summary['group_by']:<24}{'structures':>11}" + "".join(
        f"{name + ' MAE':>{max(14, len(name) + 5)}}{'RMSE':>10}" for name, _ in names)
    lines = [head]
    for group, s in summary["groups"].items():
        cells = "".join(f"{s.get(name + '_mae', float('nan')):>{max(14, len(name) + 5)}.4g}"
                        f"{s.get(name + '_rmse', float('nan')):>10.4g}" for name, _ in names)
        lines.append(f"{group[:23]:<24}{s['n_structures']:>11}{cells}")
    lines.append("units: " + ", ".join(f"{name} {unit}" for name, unit in names))
    return "\n".join(lines)


def parity_plot(path: str, configs: Sequence[Configuration], preds: Sequence[dict], title: str = "") -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    panels = []
    # each panel over the structures that carry its label (a file may mix labelled and unlabelled ones)
    with_label = lambda name: [(c, p) for c, p in zip(configs, preds) if name in c.targets]  # noqa: E731
    if with_label("energy"):
        ref = np.array([float(c.targets["energy"]) / c.n_atoms for c, _ in with_label("energy")])
        pred = np.array([p["energy"] / c.n_atoms for c, p in with_label("energy")])
        panels.append(("energy (eV/atom)", ref, pred))
    for name, label in (("forces", "force components (eV/Å)"), ("stress", "stress components (eV/Å³)")):
        if with_label(name) and (name == "forces" or panels):
            ref = np.concatenate([np.asarray(c.targets[name]).reshape(-1) for c, _ in with_label(name)])
            pred = np.concatenate([p[name].reshape(-1) for _, p in with_label(name)])
            panels.append((label, ref, pred))
    for name in sorted({k for p in preds[:1] for k in p} - {"energy", "energies", "forces", "stress", "periodic",
                                                          "energy_long_range", "energies_long_range"}):
        if with_label(name):
            ref = np.concatenate([np.asarray(c.targets[name], dtype=float).reshape(-1) for c, _ in with_label(name)])
            pred = np.concatenate([np.asarray(p[name], dtype=float).reshape(-1) for _, p in with_label(name)])
            panels.append((f"{name} ()", ref, pred))
    if not panels:
        return
    fig, axes = plt.subplots(1, len(panels), figsize=(4.2 * len(panels), 4))
    axes = np.atleast_1d(axes)
    for ax, (label, ref, pred) in zip(axes, panels):
        lo, hi = min(ref.min(), pred.min()), max(ref.max(), pred.max())
        ax.plot([lo, hi], [lo, hi], color="0.6", lw=1)
        ax.scatter(ref, pred, s=4, alpha=0.5)
        rmse = np.sqrt(np.mean((pred - ref) ** 2))
        unit = label.split("(")[1][:-1]
        text = f"RMSE {1000 * rmse:.2f} m{unit}" if unit else f"RMSE {rmse:.4g}, R² {1 - np.sum((pred - ref) ** 2) / max(np.sum((ref - ref.mean()) ** 2), 1e-300):.4f}"
        ax.set_title(f"{label.replace(' ()', '')}\n{text}", fontsize=9)
        ax.set_xlabel("reference")
        ax.set_ylabel("predicted")
    if title:
        fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    atomic_write(path, lambda tmp: fig.savefig(tmp, dpi=110, format="png"))
    plt.close(fig)


def atoms_field(atoms: Atoms, key: str, value: np.ndarray, per_atom: bool) -> None:
    """Store ``value`` in ``atoms.arrays`` (per atom, flattened to (N, k)) or ``atoms.info``."""
    if per_atom:
        flat = value.reshape(len(atoms), -1)
        atoms.arrays[key] = flat[:, 0] if flat.shape[1] == 1 else flat
    else:
        atoms.info[key] = value.reshape(-1) if value.size > 1 else float(value.reshape(-1)[0])


def write_predictions(path: str, configs: Sequence[Configuration], preds: Sequence[dict], fields=None) -> None:
    """Structures with reference (REF_*) and predicted values; ``fields``: the model's typed outputs."""
    frames = []
    for c, p in zip(configs, preds):
        atoms = Atoms(numbers=c.numbers, positions=c.positions, cell=c.cell, pbc=c.pbc)
        for name, value in c.targets.items():
            per_atom = name in ("forces", "energies") or (name in (fields or {}) and fields[name].level == "node")
            atoms_field(atoms, f"REF_{name}", np.asarray(value), per_atom)
        atoms.arrays["energies"] = p["energies"]
        for name, f in (fields or {}).items():
            atoms_field(atoms, f"pred_{name}", np.asarray(p[name]), f.level == "node")
        if "energy_long_range" in p:
            atoms.info["pred_energy_long_range"] = p["energy_long_range"]
            atoms.info["pred_energy_short_range"] = p["energy"] - p["energy_long_range"]
            atoms.arrays["pred_energies_long_range"] = p["energies_long_range"]
        if "energy_std" in p:  # a committee's spread
            atoms.info["pred_energy_std"] = p["energy_std"]
            atoms.arrays["pred_forces_std"] = p["forces_std"]
        results = {"energy": p["energy"], "forces": p["forces"]}
        if p["periodic"]:
            results["stress"] = p["stress"]
        atoms.calc = SinglePointCalculator(atoms, **results)
        frames.append(atoms)
    atomic_write(path, lambda tmp: ase.io.write(tmp, frames, format="extxyz"))


def evaluate_file(
    model,  # a Potential, or a sequence of them: a committee, evaluated by the mean of its predictions
    data_path: str,
    out_dir: Optional[str] = None,
    keys: Optional[Dict[str, str]] = None,
    energy_unit: str = "eV",
    length_unit: str = "Angstrom",
    batch_size: int = 20,
    progress: bool = True,
    by: Optional[str] = None,
) -> Dict[str, float]:
    """Errors of ``model`` on ``data_path``; with ``out_dir``, also plots and predictions; with
    ``by``, the errors of each group of structures by that per-structure key (``config_type``,
    say) too, under ``summary["groups"]`` (structures without the key: group "(none)")."""
    models = list(model) if isinstance(model, (list, tuple)) else [model]
    fields = models[0].output_fields
    if keys is None:
        keys = dict(EVAL_KEYS, **{name: name for name in fields})
    configs = read_configurations(data_path, keys=keys, energy_unit=energy_unit, length_unit=length_unit, fields=fields,
                                  tags=[by] if by else ())
    if len(models) == 1:
        preds = predict(models[0], configs, batch_size=batch_size, progress=progress)
    else:
        preds = committee_predict(models, configs, batch_size=batch_size, progress=progress)
    scalars = [name for name, f in fields.items() if f.shape == ()]
    summary = error_table(configs, preds, scalars)
    if by:
        if not any(by in c.tags for c in configs):
            raise DataError(f"{data_path}: no structure has the key {by!r} to group by")
        groups: Dict[str, List[int]] = {}
        for k, c in enumerate(configs):
            groups.setdefault(c.tags.get(by, "(none)"), []).append(k)
        summary["groups"] = {name: error_table([configs[k] for k in rows], [preds[k] for k in rows], scalars)
                             for name, rows in sorted(groups.items())}
        summary["group_by"] = by
    summary["data"] = data_path
    if len(models) > 1:
        summary["n_models"] = len(models)
        summary["mean_forces_std"] = float(np.mean(np.concatenate([p["forces_std"] for p in preds])))
    if out_dir:
        stem = os.path.splitext(os.path.basename(data_path))[0]
        os.makedirs(out_dir, exist_ok=True)
        parity_plot(os.path.join(out_dir, f"{stem}_parity.png"), configs, preds, title=stem)
        write_predictions(os.path.join(out_dir, f"{stem}_predictions.xyz"), configs, preds, fields)
    return summary


def write_json(path: str, obj) -> None:
    def write(tmp):
        with open(tmp, "w") as f:
            json.dump(obj, f, indent=2)

    atomic_write(path, write)
