"""equipot, MACE and NequIP side by side on this machine, each peer in its own virtual environment.

    python benchmarks/peers.py speed --threads 1 --sizes 15 120 960 --dtype float32
    python benchmarks/peers.py train acac --budget-minutes 25 --threads 1 --peers mace
    python benchmarks/peers.py train 3bpa --budget-minutes 25 --threads 1 --peers nequip

The harness creates runs/peers/<peer>/ (a venv: torch==2.13.0 first, so no CUDA build is pulled,
then the peer at the version below; MACE pins e3nn 0.4.4 and cannot share our environment) the
first time it is needed, and says in the table why when a peer cannot be installed or run. Every
model sees the same structures: the acetylacetone boxes of benchmarks/speed.py (400 Å³ per
molecule; 15 atoms: one open molecule), energy + forces through each code's ASE calculator,
median of --repeats calls after two warm-up calls, one fresh process per model and size (so the
peak memory is that size's). Peer models are untrained, built as in ../shared/bench/peers.md
(the time does not depend on the weights); equipot's are untrained too, at the settings of the
accuracy benchmarks. Writes docs/benchmarks/peers-speed-<dtype>-t<threads>[-<tag>].json/.md/.png.

``train`` trains a peer for a wall-clock budget with the recipe of ../shared/bench/peers.md (the
same seeded 450 / 50 split of acac's train_300K for every model — for 3BPA 360 / 40 of the
training file of common.bpa_files, as benchmarks/accuracy.py splits it — E0s from the isolated atoms, loss
1 × per-atom energy + 100 × forces, Adam lr 0.01, EMA 0.99, batch 5) through the peer's own
command line, then evaluates the test files with the peer's own evaluation and computes the
errors here. MACE has no wall-clock limit: it is stopped at the budget and restarted from its
latest checkpoint with no epochs left, which makes it write its model as usual; NequIP stops
itself (Lightning's max_time; benchmarks/peer_nequip.py). Writes
docs/benchmarks/peers-<dataset>-<peer>.json/.md (equipot's own figures: benchmarks/accuracy.py).
"""

import argparse
import json
import os
import shlex
import subprocess
import sys
from pathlib import Path

import numpy as np

from common import DOCS, REPO, machine, untrained_model, write_result

PEERS = {"mace": "mace-torch==0.3.16", "nequip": "nequip==0.19.1"}
TORCH = "torch==2.13.0"
EQUIPOT_MODELS = {  # label: model settings (as in benchmarks/accuracy.py)
    "equipot lmax 1, 16 ch": {"lmax": 1, "channels": 16},
    "equipot lmax 1, 16 ch, mixed products": {"lmax": 1, "channels": 16, "product_mixing": True},
    "equipot lmax 1, 32 ch": {"lmax": 1, "channels": 32},
    "equipot lmax 1, 32 ch, scalar messages": {"lmax": 1, "channels": 32, "message_lmax": 0},
    "equipot lmax 1, 32 ch, scalar messages, mixed products": {"lmax": 1, "channels": 32, "message_lmax": 0,
                                                               "product_mixing": True},
    "equipot lmax 1, 32 ch, scalar messages, mixed products, sh 3": {"lmax": 1, "channels": 32, "message_lmax": 0,
                                                                     "product_mixing": True, "sh_lmax": 3},
    "equipot lmax 1, 16 ch, mixed products, sh 3": {"lmax": 1, "channels": 16, "product_mixing": True, "sh_lmax": 3},
    "equipot lmax 2, 32 ch": {"lmax": 2, "channels": 32},
    # the two long-run models (examples/configs/accurate.yaml, and l = 1 messages with sh 3)
    "equipot lmax 1, 32 ch, mixed products, sh 3": {"lmax": 1, "channels": 32, "product_mixing": True, "sh_lmax": 3},
    "equipot lmax 2, 64 ch, mixed products": {"lmax": 2, "channels": 64, "product_mixing": True},
}
PEER_LABELS = {"mace": "MACE 2 layers, 64x0e+64x1o, max_ell 3", "nequip": "NequIP 3 layers, 32 features, l_max 1"}


def peer_python(peer: str):
    """The peer's venv python, created on first use; (python, None) or (None, why it failed)."""
    venv = REPO / "runs" / "peers" / peer
    python = venv / "bin" / "python"
    if python.exists():
        return python, None
    venv.parent.mkdir(parents=True, exist_ok=True)
    log = venv.parent / f"{peer}-install.log"
    print(f"creating {venv} ({PEERS[peer]}) ...", flush=True)
    steps = [[sys.executable, "-m", "venv", str(venv)], [str(python), "-m", "pip", "install", "-q", TORCH],
             [str(python), "-m", "pip", "install", "-q", PEERS[peer]]]
    with open(log, "w") as out:
        for step in steps:
            if subprocess.run(step, stdout=out, stderr=subprocess.STDOUT).returncode != 0:
                tail = [line for line in open(log).read().splitlines() if line.strip()][-1:]
                return None, f"`{' '.join(step[-2:])}` failed: {tail[0][:120] if tail else 'no output'}"
    return python, None


def equipot_model(label: str, settings: dict) -> str:
    return untrained_model("peers/equipot", label, settings)


def box_file(n_atoms: int) -> str:
    from speed import acac_box

    path = REPO / "runs" / "peers" / "boxes" / f"acac-{n_atoms}.xyz"
    if not path.exists():
        path.parent.mkdir(parents=True, exist_ok=True)
        acac_box(max(1, n_atoms // 15)).write(str(path))
    return str(path)


def run_json(cmd, env) -> dict:
    done = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=3600)
    lines = [line for line in done.stdout.splitlines() if line.startswith("{")]
    if done.returncode != 0 or not lines:
        last = [line for line in done.stderr.splitlines() if line.strip()][-1:] or ["no output"]
        return {"error": last[0][:160]}
    return json.loads(lines[-1])


def speed(args) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    env = {**os.environ, "OMP_NUM_THREADS": str(args.threads),
           # e3nn 0.4.4 (MACE's) loads its own packaged constants with a plain torch.load, which
           # torch >= 2.6 refuses without this; it is the peer's file, never a user's
           "TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD": "1"}
    results = {}  # label -> list of per-size results (or an error)
    for label, settings in EQUIPOT_MODELS.items():
        if args.models and label not in args.models:
            continue
        path = equipot_model(label, settings)
        if args.compile:
            label += ", compiled"
        results[label] = [run_json([sys.executable, str(REPO / "benchmarks" / "speed.py"), path, "--one", "--threads",
                                    str(args.threads), "--dtype", args.dtype, "--sizes", str(n), "--repeats",
                                    str(args.repeats)] + (["--compile"] if args.compile else [])
                                   + (["--no-tabulate"] if args.no_tabulate else []), env)
                          for n in args.sizes]
        print(label, [round(r.get("us_per_atom", float("nan")), 1) for r in results[label]], flush=True)
    versions = {}
    for peer in args.peers:
        label = PEER_LABELS[peer]
        python, why = peer_python(peer)
        if python is None:
            results[label] = {"error": f"not installable here: {why}"}
            continue
        worker = str(REPO / "benchmarks" / "peer_worker.py")
        results[label] = [run_json([str(python), worker, peer, box_file(n), "--dtype", args.dtype, "--threads",
                                    str(args.threads), "--repeats", str(args.repeats)], env) for n in args.sizes]
        versions[peer] = next((r["version"] for r in results[label] if "version" in r), None)
        print(label, [round(r.get("us_per_atom", float("nan")), 1) for r in results[label]], flush=True)

    import torch

    from flops import matmul_peak_gflops

    torch.set_num_threads(args.threads)
    peak = matmul_peak_gflops(getattr(torch, args.dtype))  # this dtype, these threads
    records, rows = [], []
    for label, per_size in results.items():
        if isinstance(per_size, dict):
            rows.append(f"| {label} | " + " | ".join(["—"] * len(args.sizes)) + f" | {per_size['error']} | – |")
            continue
        cells, notes, share = [], [], "–"
        for n, r in zip(args.sizes, per_size):
            if "error" in r:
                cells.append("failed")
                notes.append(f"{n} atoms: {r['error']}")
                continue
            cells.append(f"{r['us_per_atom']:.0f} µs · {r['peak_mb']:.0f} MB")
            if r.get("radial_tables") and "radial networks tabulated" not in notes:
                notes.append("radial networks tabulated")
            if label.endswith(", compiled") and r.get("first_call_s"):  # the trace and compile, not timed above
                notes.append(f"{n} atoms: first call (compile) {r['first_call_s']:.0f} s")
            base = {"model": label.split()[0].lower(), "variant": label, "dataset": "acac-box", "dtype": args.dtype,
                    "n_atoms": r["n_atoms"], "threads": args.threads}
            records += [{**base, "metric": "throughput", "value": round(r["us_per_atom"], 2), "unit": "us/atom/step"},
                        {**base, "metric": "latency", "value": round(r["latency_ms"], 3), "unit": "ms"},
                        {**base, "metric": "peak_memory", "value": round(r["peak_mb"], 1), "unit": "MB"}]
            if r.get("gflop"):  # matmul FLOPs per call over the median time: the share of the peak
                gflops = r["gflop"] / (r["latency_ms"] / 1000)
                records += [{**base, "metric": "gflop_per_step", "value": round(r["gflop"], 4), "unit": "GFLOP"},
                            {**base, "metric": "share_of_matmul_peak", "value": round(gflops / peak, 4),
                             "unit": "fraction", "achieved_gflops": round(gflops, 2)}]
                share = f"{100 * gflops / peak:.1f} % ({r['gflop']:.2f} GFLOP)"  # of the largest size
        rows.append(f"| {label} | " + " | ".join(cells) + f" | {'; '.join(notes)} | {share} |")
    name = f"peers-speed-{args.dtype}-t{args.threads}" + (f"-{args.tag}" if args.tag else "")
    records.append({"model": "machine", "variant": "matmul 1024", "dataset": "-", "dtype": args.dtype,
                    "threads": args.threads, "metric": "matmul_peak", "value": round(peak, 1), "unit": "GFLOP/s"})
    write_result(name, args.threads, records, extra={"peer_versions": versions})

    fig, ax = plt.subplots(figsize=(5.5, 3.8))
    for label, per_size in results.items():
        if isinstance(per_size, dict):
            continue
        pts = [(r["n_atoms"], r["us_per_atom"]) for r in per_size if "error" not in r]
        if pts:
            ax.loglog(*zip(*pts), marker="o" if label.startswith("equipot") else "s", label=label)
    ax.set_xlabel("atoms")
    ax.set_ylabel("µs/atom/step (energy + forces)")
    ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(DOCS / f"{name}.png", dpi=110)
    plt.close(fig)

    peer_versions = ", ".join(f"{p} {v}" for p, v in versions.items() if v)
    md = [f"# Speed side by side: {args.dtype}, {args.threads} thread(s)" + (f" ({args.tag})" if args.tag else ""), "",
          f"Machine: {machine(args.threads)['cpu']}. Energy + forces through each code's ASE calculator (neighbour list "
          f"included), median of {args.repeats} calls, one fresh process per model and size; peers in their own venvs "
          f"({peer_versions or 'none ran'}). Cells: µs/atom/step · peak RSS. Share of peak: matmul FLOPs of a "
          f"call at {args.sizes[-1]} atoms (torch.utils.flop_counter's formulas; elementwise work not counted, a lower bound) "
          f"per second, over this machine's {args.dtype} matmul peak measured in the same run, {peak:.0f} GFLOP/s "
          f"on {args.threads} thread(s). Command: `python benchmarks/peers.py {shlex.join(sys.argv[1:])}`", "",
          "| model | " + " | ".join(f"{n} atoms" for n in args.sizes) + " | notes | share of matmul peak |",
          "|---|" + "---|" * len(args.sizes) + "---|---|"] + rows + ["", f"![speed]({name}.png)"]
    (DOCS / f"{name}.md").write_text("\n".join(md) + "\n")
    print("\n".join(md))


TRAIN_SETS = {"acac": {"train": "acac/train_300K.xyz", "n_valid": 50, "e0s": "acac/isolated_atoms.xyz",
                       "tests": ["test_MD_300K", "test_MD_600K"]},
              # the splits of common.bpa_files: 360 / 40 of the 400 training structures
              "3bpa": {"train": None, "n_valid": 40, "e0s": "3bpa/iso_atoms.xyz", "tests": ["test_300K", "test_hot"]}}


def test_files(dataset: str) -> dict:
    from common import DATA, bpa_files

    tests = TRAIN_SETS[dataset]["tests"]
    if dataset == "3bpa":
        return {t: bpa_files()[t] for t in tests}
    return {t: DATA / dataset / f"{t}.xyz" for t in tests}


def split_files(dataset: str):
    """The seeded train / validation split every peer gets (written once)."""
    import ase.io

    from common import DATA

    spec = TRAIN_SETS[dataset]
    folder = REPO / "runs" / "peers" / f"data-{dataset}"
    train, valid = folder / "train.xyz", folder / "valid.xyz"
    if not valid.exists():
        folder.mkdir(parents=True, exist_ok=True)
        from common import bpa_files

        source = bpa_files()["train"] if dataset == "3bpa" else DATA / spec["train"]
        frames = ase.io.read(str(source), ":")
        order = np.random.default_rng(1234).permutation(len(frames))
        ase.io.write(str(valid), [frames[i] for i in sorted(order[: spec["n_valid"]])])
        ase.io.write(str(train), [frames[i] for i in sorted(order[spec["n_valid"]:])])
    e0s = {int(a.numbers[0]): float(a.get_potential_energy()) for a in ase.io.read(str(DATA / spec["e0s"]), ":")}
    return train, valid, e0s


def errors(reference: str, predicted: str, energy_key: str, forces_key: str) -> dict:
    """Energy (meV per structure) and force (meV/Å) RMSE and MAE of a peer's predictions."""
    import ase.io

    ref = ase.io.read(reference, ":")
    pred = ase.io.read(predicted, ":")
    de = np.array([p.info[energy_key] - r.get_potential_energy() for r, p in zip(ref, pred)]) * 1000
    df = np.concatenate([(p.arrays[forces_key] - r.get_forces()).ravel() for r, p in zip(ref, pred)]) * 1000
    rms = lambda x: float(np.sqrt(np.mean(x**2)))
    return {"energy_rmse": rms(de), "energy_mae": float(np.abs(de).mean()), "forces_rmse": rms(df),
            "forces_mae": float(np.abs(df).mean())}


def train_mace(python, args, env) -> dict:
    """Train MACE (peers.md's settings) for the budget; returns epochs, wall-clock, per-test errors."""
    import glob
    import time

    train, valid, e0s = split_files(args.dataset)
    work = REPO / "runs" / "peers" / f"train-{args.dataset}-mace"
    work.mkdir(parents=True, exist_ok=True)
    bin_dir = Path(python).parent
    common = ["--name", args.dataset, "--work_dir", str(work), "--train_file", str(train), "--valid_file", str(valid),
              "--E0s", repr(e0s), "--energy_key", "energy", "--forces_key", "forces", "--model", "MACE",
              "--hidden_irreps", "64x0e+64x1o", "--max_ell", "3", "--correlation", "3", "--num_interactions", "2",
              "--r_max", "5.0", "--batch_size", "5", "--valid_batch_size", "10", "--lr", "0.01", "--ema",
              "--ema_decay", "0.99", "--loss", "weighted", "--energy_weight", "1", "--forces_weight", "100",
              "--default_dtype", "float64", "--device", "cpu", "--seed", "1234", "--eval_interval", "1"]
    log = open(work / "train.log", "w")
    start = time.time()
    try:
        subprocess.run([str(bin_dir / "mace_run_train"), *common, "--max_num_epochs", "100000"], stdout=log,
                       stderr=subprocess.STDOUT, env=env, timeout=60 * args.budget_minutes)
    except subprocess.TimeoutExpired:
        pass  # the budget is over; the latest checkpoint holds the model
    wall = time.time() - start
    epochs = [int(p.rsplit("epoch-", 1)[1].split(".")[0]) for p in glob.glob(str(work / "checkpoints" / "*epoch-*.pt"))]
    if not epochs:
        return {"error": "no checkpoint within the budget"}
    subprocess.run([str(bin_dir / "mace_run_train"), *common, "--max_num_epochs", str(max(epochs)), "--restart_latest"],
                   stdout=log, stderr=subprocess.STDOUT, env=env, check=True)
    model = work / f"{args.dataset}.model"
    import re

    logged = [int(m) for m in re.findall(r"Epoch (\d+)", (work / "train.log").read_text())]
    # epochs evaluated within the budget (MACE counts from 0); the model is the best checkpoint's
    results = {"epochs": max(logged, default=max(epochs)) + 1, "best_epoch": max(epochs), "train_wall_s": wall, "tests": {}}
    for test, reference in test_files(args.dataset).items():
        out = work / f"{test}_pred.xyz"
        subprocess.run([str(bin_dir / "mace_eval_configs"), "--configs", str(reference), "--model", str(model),
                        "--output", str(out), "--default_dtype", "float64"], stdout=log, stderr=subprocess.STDOUT,
                       env=env, check=True)
        results["tests"][test] = errors(str(reference), str(out), "MACE_energy", "MACE_forces")
    return results


def train(args) -> None:
    env = {**os.environ, "OMP_NUM_THREADS": str(args.threads), "TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD": "1"}
    for peer in args.peers:
        python, why = peer_python(peer)
        if python is None:
            result = {"error": f"not installable here: {why}"}
        elif peer == "mace":
            result = train_mace(python, args, env)
        else:
            from peer_nequip import train_nequip

            train_file, valid_file, e0s = split_files(args.dataset)
            tests = test_files(args.dataset)
            result = train_nequip(python, REPO / "runs" / "peers" / f"train-{args.dataset}-nequip", train_file,
                                  valid_file, e0s, tests, args.budget_minutes, args.threads, env)
        records, rows = [], []
        for test, err in result.get("tests", {}).items():
            for metric, value in err.items():
                records.append({"model": peer, "variant": PEER_LABELS[peer], "dataset": args.dataset, "split": test,
                                "metric": metric, "value": round(value, 3), "unit": "meV" if "energy" in metric else "meV/A",
                                "train_wall_s": round(result["train_wall_s"]), "epochs": result["epochs"]})
            rows.append(f"| {test} | {err['energy_rmse']:.2f} | {err['forces_rmse']:.2f} | {err['energy_mae']:.2f} | "
                        f"{err['forces_mae']:.2f} |")
        name = f"peers-{args.dataset}-{peer}" + (f"-{args.tag}" if args.tag else "")
        write_result(name, args.threads, records, extra={"error": result["error"]} if "error" in result else None)
        md = [f"# {args.dataset}: {PEER_LABELS[peer]}, {args.budget_minutes:g} min budget, its own venv"
              + (f" ({args.tag})" if args.tag else ""), "",
              f"Machine: {machine(args.threads)['cpu']}, {args.threads} thread(s); "
              + (f"{result['epochs']} epochs in {result['train_wall_s'] / 60:.1f} min; " if "epochs" in result else "")
              + f"command: `python benchmarks/peers.py {shlex.join(sys.argv[1:])}`", ""]
        if "error" in result:
            md.append(f"Not run: {result['error']}.")
        else:
            md += ["| split | E RMSE (meV) | F RMSE (meV/Å) | E MAE (meV) | F MAE (meV/Å) |", "|---|---|---|---|---|"] + rows
        (DOCS / f"{name}.md").write_text("\n".join(md) + "\n")
        print("\n".join(md), flush=True)


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("kind", choices=["speed", "train"])
    p.add_argument("dataset", nargs="?", default="acac", choices=sorted(TRAIN_SETS))
    p.add_argument("--budget-minutes", type=float, default=25.0)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--dtype", default="float32", choices=["float32", "float64"])
    p.add_argument("--sizes", type=int, nargs="+", default=[15, 120, 960])
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--peers", nargs="+", default=sorted(PEERS), choices=sorted(PEERS))
    p.add_argument("--models", nargs="+", default=None, choices=sorted(EQUIPOT_MODELS),
                   help="equipot models to time (default all)")
    p.add_argument("--tag", default="", help="suffix of the output name (keeps another machine's table)")
    p.add_argument("--no-tabulate", action="store_true",
                   help="equipot through EquipotCalculator(tabulate=False): radial networks, not tables (the default of compiled float32 evaluation)")
    p.add_argument("--compile", action="store_true",
                   help="equipot through EquipotCalculator(compile=True) (the compile, at the first call, is not timed)")
    args = p.parse_args()
    speed(args) if args.kind == "speed" else train(args)


if __name__ == "__main__":
    main()
