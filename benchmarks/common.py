"""Shared helpers of the benchmark scripts: machine description and the JSON record format
of ../shared/design/BENCHMARKS.md."""

import datetime
import json
import os
import platform
import shlex
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
# ../shared/data beside the checkout; EQUIPOT_DATA names another copy (a machine without ../shared)
DATA = Path(os.environ.get("EQUIPOT_DATA", REPO.parent / "shared" / "data"))
DOCS = REPO / "docs" / "benchmarks"


def cpu_name() -> str:
    try:
        for line in open("/proc/cpuinfo"):
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def machine(threads: int) -> dict:
    import torch

    gpu = torch.cuda.get_device_name(0) if torch.cuda.is_available() else None
    return {"cpu": f"{cpu_name()} ({os.cpu_count()} cores)", "gpu": gpu, "threads": threads}


def commit() -> str:
    try:
        head = subprocess.check_output(["git", "rev-parse", "--short", "HEAD"], cwd=REPO, text=True).strip()
        # tracked files changed since that commit: the record does not name the code it ran
        dirty = subprocess.check_output(["git", "status", "--porcelain", "-uno"], cwd=REPO, text=True).strip()
        return head + ("-dirty" if dirty else "")
    except Exception:
        return "unknown"


# read when a benchmark starts: a long run's record names the code it ran, not a later commit
START_COMMIT = commit()


def versions() -> dict:
    import ase
    import e3nn
    import torch

    return {"python": platform.python_version(), "torch": torch.__version__, "e3nn": e3nn.__version__, "ase": ase.__version__}


def write_result(name: str, threads: int, records: list, extra: dict | None = None) -> Path:
    DOCS.mkdir(parents=True, exist_ok=True)
    result = {
        "benchmark": name,
        "date": datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ"),
        "commit": START_COMMIT,
        "machine": machine(threads),
        "command": "python " + shlex.join([os.path.relpath(sys.argv[0], REPO)] + sys.argv[1:]),
        "versions": versions(),
        "records": records,
    }
    if extra:
        result.update(extra)
    path = DOCS / f"{name}.json"
    tmp = path.with_suffix(".json.tmp")
    tmp.write_text(json.dumps(result, indent=2))
    tmp.replace(path)
    return path


def train_model(config_values: dict, source: str = "benchmark config"):
    """Train from a config dict; return (model, trainer result, wall-clock seconds)."""
    import time

    from equipot.config import config_from_dict
    from equipot.model import load_model
    from equipot.train import MODEL, Trainer

    config = config_from_dict(config_values, source)
    start = time.time()
    result = Trainer(config, progress=False).run(overwrite=True)
    wall = time.time() - start
    return load_model(f"{config.output_dir}/{MODEL}"), result, wall


def write_frames(path: Path, frames) -> Path:
    """extxyz, written whole (benchmarks carve their own splits into runs/)."""
    import ase.io

    path.parent.mkdir(parents=True, exist_ok=True)
    ase.io.write(str(path), frames, format="extxyz")
    return path


def untrained_model(folder: str, name: str, settings: dict) -> str:
    """An untrained H/C/O model (r_max 5, natural parity, correlation 3, 2 layers, ``settings`` on top)
    saved as runs/<folder>/<name>.safetensors, for timing: the time does not depend on the weights."""
    import torch

    from equipot.config import ModelConfig, _from_dict
    from equipot.data import Statistics
    from equipot.model import build_model, save_model

    slug = name.replace(" ", "_").replace(",", "").replace("+", "plus")
    path = REPO / "runs" / folder / f"{slug}.safetensors"
    path.parent.mkdir(parents=True, exist_ok=True)
    values = {"r_max": 5.0, "parity": "natural", "correlation": 3, "num_layers": 2, **settings}
    config = _from_dict(ModelConfig, values, "model", folder)
    stats = Statistics(species=[1, 6, 8], e0={1: 0.0, 6: 0.0, 8: 0.0}, energy_shift=0.0, energy_scale=1.0,
                       avg_num_neighbors=19.0)
    torch.manual_seed(0)
    save_model(str(path), build_model(config, stats), config, stats)
    return str(path)


def bpa_files() -> dict:
    """3BPA splits shared by every model (written once under runs/data-3bpa, deterministic).

    The public 3BPA test sets are not in ../shared/data, so: 100 structures of train_300K held
    out (seeded) as ``test_300K``; the other 400 are the training file (its validation split
    is carved by each trainer with the run's seed). ``test_hot``: the structures of
    train_mixedT (MD at 300, 600 and 1200 K, unlabelled) whose energy is above every
    train_300K energy, i.e. the high-temperature ones, none of them in training.
    """
    import ase.io
    import numpy as np

    folder = REPO / "runs" / "data-3bpa"
    files = {"train": folder / "train.xyz", "test_300K": folder / "test_300K.xyz", "test_hot": folder / "test_hot.xyz"}
    if all(p.exists() for p in files.values()):
        return files
    folder.mkdir(parents=True, exist_ok=True)
    cool = ase.io.read(str(DATA / "3bpa" / "train_300K.xyz"), ":")
    mixed = ase.io.read(str(DATA / "3bpa" / "train_mixedT.xyz"), ":")
    order = np.random.default_rng(0).permutation(len(cool))
    highest = max(a.get_potential_energy() for a in cool)
    parts = {"test_300K": [cool[i] for i in sorted(order[:100])], "train": [cool[i] for i in sorted(order[100:])],
             "test_hot": [a for a in mixed if a.get_potential_energy() > highest]}
    for name, frames in parts.items():
        tmp = files[name].with_suffix(".tmp.xyz")
        ase.io.write(str(tmp), frames, format="extxyz")
        tmp.replace(files[name])
    return files
