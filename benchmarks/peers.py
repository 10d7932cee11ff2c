"""equipot, MACE and NequIP side by side on this machine, each peer in its own virtual environment.

    python benchmarks/peers.py speed --threads 1 --sizes 15 120 960 --dtype float32

The harness creates runs/peers/<peer>/ (a venv: torch==2.13.0 first, so no CUDA build is pulled,
then the peer at the version below; MACE pins e3nn 0.4.4 and cannot share our environment) the
first time it is needed, and says in the table why when a peer cannot be installed or run. Every
model sees the same structures: the acetylacetone boxes of benchmarks/speed.py (400 Å³ per
molecule; 15 atoms: one open molecule), energy + forces through each code's ASE calculator,
median of --repeats calls after two warm-up calls, one fresh process per model and size (so the
peak memory is that size's). Peer models are untrained, built as in ../shared/bench/peers.md
(the time does not depend on the weights); equipot's are untrained too, at the settings of the
accuracy benchmarks. Writes docs/benchmarks/peers-speed-<dtype>-t<threads>.json/.md/.png.
"""

import argparse
import json
import os
import subprocess
import sys

import numpy as np

from common import DOCS, REPO, machine, write_result

PEERS = {"mace": "mace-torch==0.3.16", "nequip": "nequip==0.19.1"}
TORCH = "torch==2.13.0"
EQUIPOT_MODELS = {  # label: model settings (as in benchmarks/accuracy.py)
    "equipot lmax 1, 16 ch": {"lmax": 1, "channels": 16},
    "equipot lmax 1, 32 ch, scalar messages": {"lmax": 1, "channels": 32, "message_lmax": 0},
    "equipot lmax 2, 32 ch": {"lmax": 2, "channels": 32},
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
    import torch

    from equipot.config import ModelConfig, _from_dict
    from equipot.data import Statistics
    from equipot.model import build_model, save_model

    path = REPO / "runs" / "peers" / "equipot" / (label.replace(" ", "_").replace(",", "") + ".safetensors")
    path.parent.mkdir(parents=True, exist_ok=True)
    values = {"r_max": 5.0, "parity": "natural", "correlation": 3, "num_layers": 2, **settings}
    config = _from_dict(ModelConfig, values, "model", "peers.py")
    stats = Statistics(species=[1, 6, 8], e0={1: 0.0, 6: 0.0, 8: 0.0}, energy_shift=0.0, energy_scale=1.0,
                       avg_num_neighbors=19.0)
    torch.manual_seed(0)
    save_model(str(path), build_model(config, stats), config, stats)
    return str(path)


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
        path = equipot_model(label, settings)
        results[label] = [run_json([sys.executable, str(REPO / "benchmarks" / "speed.py"), path, "--one", "--threads",
                                    str(args.threads), "--dtype", args.dtype, "--sizes", str(n), "--repeats",
                                    str(args.repeats)], env) for n in args.sizes]
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

    records, rows = [], []
    for label, per_size in results.items():
        if isinstance(per_size, dict):
            rows.append(f"| {label} | " + " | ".join(["—"] * len(args.sizes)) + f" | {per_size['error']} |")
            continue
        cells, notes = [], []
        for n, r in zip(args.sizes, per_size):
            if "error" in r:
                cells.append("failed")
                notes.append(f"{n} atoms: {r['error']}")
                continue
            cells.append(f"{r['us_per_atom']:.0f} µs · {r['peak_mb']:.0f} MB")
            base = {"model": label.split()[0].lower(), "variant": label, "dataset": "acac-box", "dtype": args.dtype,
                    "n_atoms": r["n_atoms"], "threads": args.threads}
            records += [{**base, "metric": "throughput", "value": round(r["us_per_atom"], 2), "unit": "us/atom/step"},
                        {**base, "metric": "latency", "value": round(r["latency_ms"], 3), "unit": "ms"},
                        {**base, "metric": "peak_memory", "value": round(r["peak_mb"], 1), "unit": "MB"}]
        rows.append(f"| {label} | " + " | ".join(cells) + f" | {'; '.join(notes)} |")
    name = f"peers-speed-{args.dtype}-t{args.threads}"
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
    md = [f"# Speed side by side: {args.dtype}, {args.threads} thread(s)", "",
          f"Machine: {machine(args.threads)['cpu']}. Energy + forces through each code's ASE calculator (neighbour list "
          f"included), median of {args.repeats} calls, one fresh process per model and size; peers in their own venvs "
          f"({peer_versions or 'none ran'}). Cells: µs/atom/step · peak RSS. "
          f"Command: `python benchmarks/peers.py {' '.join(sys.argv[1:])}`", "",
          "| model | " + " | ".join(f"{n} atoms" for n in args.sizes) + " | notes |",
          "|---|" + "---|" * len(args.sizes) + "---|"] + rows + ["", f"![speed]({name}.png)"]
    (DOCS / f"{name}.md").write_text("\n".join(md) + "\n")
    print("\n".join(md))


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("kind", choices=["speed"])
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--dtype", default="float32", choices=["float32", "float64"])
    p.add_argument("--sizes", type=int, nargs="+", default=[15, 120, 960])
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--peers", nargs="+", default=sorted(PEERS), choices=sorted(PEERS))
    args = p.parse_args()
    speed(args)


if __name__ == "__main__":
    main()
