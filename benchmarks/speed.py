"""Energy + forces speed through the ASE calculator (neighbour list included).

    python benchmarks/speed.py MODEL --threads 1 --dtype float32 --sizes 15 120 960 7680

Boxes are built like those of ../shared/bench/peers.md: randomly rotated acetylacetone copies,
400 Å³ per molecule, periodic (15 atoms: one open molecule). Molecules sit on a jittered grid at
least 2.5 Å apart (peers.md: 3 Å, placed freely); both give about 19 neighbours within 5 Å per
atom, which is what the cost depends on, and the average is recorded with every result.
Reports the median time per call over repeated calls after warm-up, µs/atom/step and the
peak resident memory of a fresh process per size. Writes docs/benchmarks/speed-<tag>.json/.md.
"""

import argparse
import contextlib
import json
import resource
import subprocess
import sys
import time
from typing import Optional

import numpy as np

from common import DATA, DOCS, machine, write_result


MIN_GAP = 2.5  # Å between atoms of different molecules


def acac_box(n_molecules: int, seed: int = 0):
    import ase.io
    from ase import Atoms
    from scipy.spatial.transform import Rotation

    mol = ase.io.read(str(DATA / "acac" / "train_300K.xyz"), index=0)
    if n_molecules == 1:
        return Atoms(mol.numbers, mol.positions - mol.positions.mean(0))
    rng = np.random.default_rng(seed)
    length = (400.0 * n_molecules) ** (1 / 3)
    base = mol.positions - mol.positions.mean(0)
    side = int(np.ceil(n_molecules ** (1 / 3)))
    cells = np.array([(i, j, k) for i in range(side) for j in range(side) for k in range(side)])
    cells = cells[rng.permutation(len(cells))]  # the first n_molecules, and spares for a crowded site
    spacing = length / side
    # a molecule stays within its radius + 1 Å of its site; only molecules on neighbouring
    # sites can come closer than MIN_GAP when the sites are further apart than that
    reach = np.linalg.norm(base, axis=1).max() + np.sqrt(3.0)
    assert 2 * spacing - 2 * reach > MIN_GAP, "grid too dense for the neighbour-site check"
    offsets = np.array(list(np.ndindex(3, 3, 3))) - 1  # the site and its 26 neighbours
    by_cell, placed, numbers = {}, [], []
    for cell in cells:  # a jittered grid; rotations are redrawn until MIN_GAP from every placed atom
        if len(placed) == n_molecules:
            break
        site = cell * spacing
        near = [by_cell[key] for key in {tuple(k) for k in (cell + offsets) % side} if key in by_cell]
        for attempt in range(500):
            rotation = Rotation.random(random_state=int(rng.integers(1 << 31)))
            pos = rotation.apply(base) + site + rng.uniform(-1.0, 1.0, 3)
            if not near:
                break
            d = pos[:, None, :] - np.concatenate(near)[None, :, :]
            d -= length * np.round(d / length)
            if np.min(np.linalg.norm(d, axis=-1)) >= MIN_GAP:
                break
        else:
            continue  # no room at this site: leave it empty and use a spare one
        by_cell[tuple(cell)] = pos
        placed.append(pos)
        numbers.append(mol.numbers)
    if len(placed) < n_molecules:
        raise RuntimeError(f"could not place {n_molecules} molecules {MIN_GAP} Å apart")
    return Atoms(np.concatenate(numbers), np.concatenate(placed) % length, cell=[length] * 3, pbc=True)


def reset_peak_rss() -> bool:
    """Reset this process's peak resident memory (Linux: /proc/self/clear_refs, value 5)."""
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
        return True
    except OSError:
        return False


def peak_rss_since_reset() -> float | None:
    """Peak resident memory (MB) since reset_peak_rss: VmHWM of /proc/self/status."""
    try:
        for line in open("/proc/self/status"):
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    except OSError:
        pass
    return None


def measure(model: str, n_atoms: int, threads: int, dtype: str, repeats: int, compile: bool = False,
            tabulate: Optional[bool] = None, device: str = "cpu") -> dict:
    import torch

    from equipot import EquipotCalculator

    torch.set_num_threads(threads)
    if compile:  # the first call's time is that of a cold compile: no code cached by an earlier run
        from torch._inductor import config as inductor_config

        inductor_config.force_disable_caches = True
    atoms = acac_box(max(1, n_atoms // 15))
    atoms.calc = EquipotCalculator(model, device=device, dtype=dtype, compile=compile, tabulate=tabulate)
    tabulated = bool(getattr(atoms.calc.model.energy_model, "radial_tabulated", False))
    times, first, steps_peak_mb = [], None, None
    for k in range(repeats + 2):
        atoms.positions += 1e-4  # a new geometry each call, as in MD
        t = time.perf_counter()
        atoms.get_forces()
        if k == 0:
            first = time.perf_counter() - t  # with compile: the trace and the compile
            peak_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
            cleared = reset_peak_rss()  # from here on, the peak of the steps alone (no compiler memory)
        if k >= 2:
            times.append(time.perf_counter() - t)
    peak_mb = max(peak_mb, resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024)
    if cleared:
        steps_peak_mb = peak_rss_since_reset()
    median = float(np.median(times))
    from peer_worker import count_gflop  # the same count as the peers'

    form = contextlib.nullcontext()
    if compile:  # the counter is a dispatch mode, which compiled code cannot run under: count the eager model
        atoms.calc = EquipotCalculator(model, device=device, dtype=dtype, tabulate=tabulated)  # the timed model's radial form
        from equipot.o3.channel_product import sparse_products

        form = sparse_products()  # and its node products' form: sums of terms, no matrix products
    with form:
        gflop = count_gflop(atoms)
    from equipot.data import neighbor_list

    n_edges = len(neighbor_list(atoms.positions, np.array(atoms.cell), atoms.pbc, 5.0)[0])
    return {"n_atoms": len(atoms), "latency_ms": 1000 * median, "us_per_atom": 1e6 * median / len(atoms),
            "peak_mb": peak_mb, "steps_peak_mb": steps_peak_mb, "neighbors_5A": n_edges / len(atoms), "gflop": gflop, "first_call_s": first,
            "radial_tables": tabulated}


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("model")
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--dtype", default="float32")
    p.add_argument("--sizes", type=int, nargs="+", default=[15, 120, 960])
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--tag", default="equipot")
    p.add_argument("--compile", action="store_true", help="EquipotCalculator(compile=True); the compile is not timed")
    p.add_argument("--no-tabulate", action="store_true",
                   help="EquipotCalculator(tabulate=False): the radial networks, not their tables (the default of compiled float32 evaluation)")
    p.add_argument("--device", default="cpu", help="cpu or cuda (forces come back to the host each call, as in MD)")
    p.add_argument("--one", action="store_true", help=argparse.SUPPRESS)  # child process
    args = p.parse_args()
    if args.one:
        print(json.dumps(measure(args.model, args.sizes[0], args.threads, args.dtype, args.repeats, args.compile,
                                 False if args.no_tabulate else None, args.device)))
        return
    records, rows = [], []
    for n in args.sizes:
        cmd = [sys.executable, __file__, args.model, "--one", "--threads", str(args.threads), "--dtype", args.dtype,
               "--sizes", str(n), "--repeats", str(args.repeats), "--device", args.device] \
            + (["--compile"] if args.compile else []) \
            + (["--no-tabulate"] if args.no_tabulate else [])
        r = json.loads(subprocess.check_output(cmd, text=True).strip().splitlines()[-1])
        rows.append(r)
        base = {"model": "equipot", "variant": args.tag, "dataset": "acac-box", "dtype": args.dtype,
                "n_atoms": r["n_atoms"], "threads": args.threads, "neighbors_5A": round(r["neighbors_5A"], 2),
                **({} if args.device == "cpu" else {"device": args.device})}
        records += [
            {**base, "metric": "latency", "value": round(r["latency_ms"], 3), "unit": "ms"},
            {**base, "metric": "throughput", "value": round(r["us_per_atom"], 2), "unit": "us/atom/step"},
            {**base, "metric": "peak_memory", "value": round(r["peak_mb"], 1), "unit": "MB",
             "note": "the whole process: with --compile, the compiler's memory too"},
            *([{**base, "metric": "peak_memory_steps", "value": round(r["steps_peak_mb"], 1), "unit": "MB",
                "note": "peak resident memory over the calls after the first (Linux VmHWM after clear_refs)"}]
              if r.get("steps_peak_mb") is not None else []),
            {**base, "metric": "first_call", "value": round(r["first_call_s"], 2), "unit": "s",
             "note": "with --compile: the trace and a cold compile"},
        ]
        print(f"{r['n_atoms']:7d} atoms  {r['latency_ms']:10.2f} ms  {r['us_per_atom']:9.1f} µs/atom  {r['peak_mb']:8.0f} MB", flush=True)
    name = f"speed-{args.tag}-{args.dtype}-t{args.threads}"
    write_result(name, args.threads, records)
    where = machine(args.threads)
    md = [f"# Speed: {args.tag}, {args.dtype}, {args.threads} thread(s)", "",
          f"Machine: {where['cpu']}" + (f", on the GPU ({where['gpu']})" if args.device != "cpu" else "")
          + ". Energy + forces through the ASE calculator, neighbour list "
          f"included; median of {args.repeats} calls. Command: `python benchmarks/speed.py MODEL --threads {args.threads} --dtype {args.dtype}"
          + ("" if args.device == "cpu" else f" --device {args.device}")
          + (" --compile" if args.compile else "") + (" --no-tabulate" if args.no_tabulate else "")
          + f"`; radial networks {'tabulated' if rows[0].get('radial_tables') else 'evaluated'}. Peak RSS: of the whole process (with --compile, the compiler's own memory too), and over "
          "the calls after the first (the steps alone; Linux only)", "",
          "| atoms | ms/call | µs/atom/step | peak RSS (MB) | peak RSS of the steps (MB) | first call (s) |",
          "|---|---|---|---|---|---|"]
    md += [f"| {r['n_atoms']} | {r['latency_ms']:.1f} | {r['us_per_atom']:.1f} | {r['peak_mb']:.0f} | "
           + (f"{r['steps_peak_mb']:.0f}" if r.get("steps_peak_mb") is not None else "–")
           + f" | {r['first_call_s']:.1f} |" for r in rows]
    (DOCS / f"{name}.md").write_text("\n".join(md) + "\n")


if __name__ == "__main__":
    main()
