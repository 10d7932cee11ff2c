"""Physical checks as numbers: equivariance error of every output (float32 and float64) and
smoothness of energy and forces across the cutoff.

    python benchmarks/physics.py equivariance --threads 1
    python benchmarks/physics.py smoothness --threads 1

equivariance: random-weight models (lmax 1 to 3; one with every typed output; the Cartesian
baseline for contrast) on an acac molecule and a periodic acac box; 10 random elements of
O(3) (half improper, the first the inversion) with random translations and atom permutations;
for each output the largest |f(g·x) − D(g) f(x)| in the output's unit. Writes
docs/benchmarks/physics-equivariance.{json,md}.

smoothness: a C–O dimer stretched through r_max with a random-weight model: energy and force
against r (plot), and the jumps of both between r_max − ε and r_max + ε. Writes
docs/benchmarks/physics-smoothness.{json,md,png}.
"""

import argparse
import sys

import numpy as np
import torch

from common import DATA, DOCS, machine, write_result

from equipot.config import ModelConfig, OutputConfig
from equipot.data import Configuration, to_graph
from equipot.data.statistics import Statistics
from equipot.model import build_model
from equipot.train.augment import random_rotations

STATS = Statistics(species=[1, 6, 8], e0={1: -13.6, 6: -1029.5, 8: -2041.3}, energy_shift=-0.3,
                   energy_scale=0.5, avg_num_neighbors=10.0)
TYPED = {"dipole": "dipole", "polarizability": "polarizability", "chirality": "0o", "charges": "charges"}
MODELS = {
    "lmax1": dict(lmax=1, channels=32),
    "lmax2": dict(lmax=2, channels=32),
    "lmax3": dict(lmax=3, channels=16),
    "lmax2-typed": dict(lmax=2, channels=16, parity="both",
                        outputs={k: OutputConfig(type=v) for k, v in TYPED.items()}),
    "cartesian": dict(architecture="cartesian", channels=64),
}
# how each output transforms under (R, t, permutation P): "scalar" invariant, "pseudo" times det R,
# "vector" R v, "tensor" R T Rᵀ; per-atom outputs are permuted with the atoms
TRANSFORM = {"energy": ("graph", "scalar"), "energies": ("node", "scalar"), "forces": ("node", "vector"),
             "stress": ("graph", "tensor"), "virial": ("graph", "tensor"), "dipole": ("graph", "vector"),
             "polarizability": ("graph", "tensor"), "chirality": ("graph", "pseudo"), "charges": ("node", "scalar")}
UNITS = {"energy": "eV", "energies": "eV", "forces": "eV/A", "stress": "eV/A^3", "virial": "eV", "dipole": "e*A",
         "polarizability": "as data", "chirality": "as data", "charges": "e"}


def structures():
    import ase.io

    mol = ase.io.read(str(DATA / "acac" / "test_MD_300K.xyz"), index=0)
    open_ = Configuration(mol.numbers, mol.positions - mol.positions.mean(0), np.zeros((3, 3)), np.zeros(3, bool))
    rng = np.random.default_rng(0)
    cell = np.array([[9.0, 0.0, 0.0], [0.8, 9.5, 0.0], [-0.5, 0.7, 10.0]])
    pos, num = [], []
    for k in range(4):  # four molecules, randomly turned, at the corners of a tetrahedron in a triclinic box
        r = random_rotations(1, torch.Generator().manual_seed(k))[0].numpy()
        centre = (np.array([[0, 0, 0], [0.5, 0.5, 0], [0.5, 0, 0.5], [0, 0.5, 0.5]])[k] + 0.25) @ cell
        pos.append((mol.positions - mol.positions.mean(0)) @ r.T + centre)
        num.append(mol.numbers)
    periodic = Configuration(np.concatenate(num), np.concatenate(pos), cell, np.ones(3, bool))
    return {"acac molecule": open_, "acac box (4 molecules, triclinic)": periodic}


def outputs(model, config: Configuration, r_max: float, dtype) -> dict:
    out = model(to_graph(config, r_max).to(dtype=dtype))
    return {k: v.detach().double() for k, v in out.items() if k in TRANSFORM}


def transformed(name: str, value: torch.Tensor, rotation: torch.Tensor, perm: torch.Tensor) -> torch.Tensor:
    level, kind = TRANSFORM[name]
    if level == "node":
        value = value[perm]
    if kind == "vector":
        return value @ rotation.T
    if kind == "tensor":
        return rotation @ value @ rotation.T
    if kind == "pseudo":
        return torch.det(rotation) * value
    return value


def equivariance(args) -> None:
    torch.set_num_threads(args.threads)
    records, rows = [], []
    systems = structures()
    gen = torch.Generator().manual_seed(1)
    elements = []
    for k in range(args.elements):
        r = random_rotations(1, gen)[0]
        if k == 0:
            r = -torch.eye(3, dtype=torch.float64)
        elif k % 2 == 0:
            r = -r
        elements.append((r, 3.0 * torch.randn(3, generator=gen, dtype=torch.float64)))
    for name, values in MODELS.items():
        cfg = ModelConfig(r_max=5.0, num_layers=2, correlation=3, **values)
        for dtype in (torch.float32, torch.float64):
            torch.manual_seed(0)
            model = build_model(cfg, STATS, dtype).eval()
            for sname, config in systems.items():
                ref = outputs(model, config, cfg.r_max, dtype)
                # no stress for an open structure; no dipole (NaN: refused) for a periodic one
                ref = {k: v for k, v in ref.items() if not torch.isnan(v).any()
                       and not (k in ("stress", "virial") and not config.pbc.any())}
                worst = {k: 0.0 for k in ref}
                for r, t in elements:
                    perm = torch.randperm(config.n_atoms, generator=gen)
                    rn, pn = r.numpy(), perm.numpy()
                    moved = Configuration(config.numbers[pn], config.positions[pn] @ rn.T + t.numpy(),
                                          config.cell @ rn.T, config.pbc)
                    got = outputs(model, moved, cfg.r_max, dtype)
                    for key, value in ref.items():
                        err = float((got[key] - transformed(key, value, r, perm)).abs().max())
                        worst[key] = max(worst[key], err)
                for key, err in worst.items():
                    scale = float(ref[key].abs().max())
                    records.append({"model": "equipot" if name != "cartesian" else "baseline", "variant": name,
                                    "dataset": sname, "metric": "equivariance_error", "value": err,
                                    "unit": UNITS[key], "output": key, "dtype": str(dtype).split(".")[-1],
                                    "output_scale": scale, "n_elements": args.elements})
                    rows.append((name, sname, str(dtype).split(".")[-1], key, err, scale))
                print(f"{name} {dtype} {sname}: " + ", ".join(f"{k} {v:.1e}" for k, v in worst.items()), flush=True)
    path = write_result("physics-equivariance", args.threads, records)
    md = ["# Equivariance error of every output", "",
          f"Machine: {machine(args.threads)['cpu']}, {args.threads} thread(s). Random-weight models, "
          f"{args.elements} random elements of O(3) (the inversion, then proper and improper rotations alternating) "
          "with random translations and atom permutations; neighbour lists rebuilt for every element. Largest "
          "|f(g·x) − D(g) f(x)| over the elements, in the output's unit, and the largest |f(x)| for scale. "
          "Command: `python benchmarks/physics.py equivariance`.", "",
          "| model | structure | dtype | output | max error | max |output| |", "|---|---|---|---|---|---|"]
    md += [f"| {a} | {b} | {c} | {d} | {e:.1e} | {f:.2g} |" for a, b, c, d, e, f in rows]
    md += ["", "The equivariant models are exact to rounding (float64 ~1e-15 relative, float32 ~1e-7); the "
           "Cartesian baseline, built without symmetry, is not."]
    (DOCS / "physics-equivariance.md").write_text("\n".join(md) + "\n")
    print(f"wrote {path}")


def dimer(r: float) -> Configuration:
    return Configuration(np.array([6, 8]), np.array([[0.0, 0.0, 0.0], [r, 0.0, 0.0]]), np.zeros((3, 3)),
                         np.zeros(3, bool))


def smoothness(args) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    torch.set_num_threads(args.threads)
    records, rows = [], []
    fig, axes = plt.subplots(1, 2, figsize=(9, 3.4))
    for k, (name, values) in enumerate({"lmax2": MODELS["lmax2"], "cartesian": MODELS["cartesian"]}.items()):
        cfg = ModelConfig(r_max=5.0, num_layers=2, correlation=3, **values)
        for dtype in (torch.float32, torch.float64):
            torch.manual_seed(0)
            model = build_model(cfg, STATS, dtype).eval()
            with torch.no_grad():
                model.energy_model.atomic_shift.zero_()
            r = np.linspace(3.5, 5.5, 401)
            e, f = [], []
            for x in r:
                out = outputs(model, dimer(x), cfg.r_max, dtype)
                e.append(float(out["energy"][0]))
                f.append(float(out["forces"][1, 0]))
            eps = 1e-6
            inside, outside = outputs(model, dimer(cfg.r_max - eps), cfg.r_max, dtype), \
                outputs(model, dimer(cfg.r_max + eps), cfg.r_max, dtype)
            de = abs(float(inside["energy"][0] - outside["energy"][0]))
            dfmax = float((inside["forces"] - outside["forces"]).abs().max())
            d = str(dtype).split(".")[-1]
            common = {"model": "equipot" if name != "cartesian" else "baseline", "variant": name,
                      "dataset": "C-O dimer", "dtype": d, "r_max": cfg.r_max, "epsilon": eps}
            records.append({**common, "metric": "energy_jump_at_cutoff", "value": de, "unit": "eV"})
            records.append({**common, "metric": "force_jump_at_cutoff", "value": dfmax, "unit": "eV/A"})
            rows.append((name, d, de, dfmax))
            if dtype == torch.float64:
                axes[0].plot(r, 1000 * np.array(e), color=f"C{k}", label=name)
                axes[1].plot(r, 1000 * np.array(f), color=f"C{k}", label=name)
    for ax, label in zip(axes, ("E − E(isolated) (meV)", "force on O along the bond (meV/Å)")):
        ax.axvline(5.0, color="k", lw=0.8, ls="--")
        ax.set_xlabel("C–O distance (Å)")
        ax.set_ylabel(label)
        ax.legend(fontsize=8)
    fig.suptitle("random-weight models, float64; r_max = 5 Å (dashed)", fontsize=9)
    fig.tight_layout()
    fig.savefig(DOCS / "physics-smoothness.png", dpi=110)
    plt.close(fig)
    path = write_result("physics-smoothness", args.threads, records)
    md = ["# Smoothness at the cutoff", "",
          f"Machine: {machine(args.threads)['cpu']}, {args.threads} thread(s). A C–O dimer with random-weight "
          "models (energy shift removed): the jump of the energy and of the forces between r_max − 1e-6 Å and "
          "r_max + 1e-6 Å (the polynomial envelope takes the energy, its first and second derivatives to zero "
          "at r_max). Command: `python benchmarks/physics.py smoothness`.", "",
          "| model | dtype | energy jump (eV) | force jump (eV/Å) |", "|---|---|---|---|"]
    md += [f"| {a} | {b} | {c:.1e} | {d:.1e} |" for a, b, c, d in rows]
    md += ["", "![energy and force across the cutoff](physics-smoothness.png)"]
    (DOCS / "physics-smoothness.md").write_text("\n".join(md) + "\n")
    print("\n".join(md))
    print(f"wrote {path}")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("check", choices=["equivariance", "smoothness"])
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--elements", type=int, default=10)
    args = p.parse_args()
    {"equivariance": equivariance, "smoothness": smoothness}[args.check](args)


if __name__ == "__main__":
    main()
