"""Train NequIP for a wall-clock budget through its own command line, then evaluate test files.

Used by benchmarks/peers.py (``train`` with ``--peers nequip``); the NequIP venv is created there.

    from peer_nequip import train_nequip
    result = train_nequip(python, work, train, valid, e0s, tests, budget_minutes=25, threads=1, env=env)

nequip 0.19 is driven by a Hydra config and PyTorch Lightning: this writes ``work/config.yaml``
with the recipe of ../shared/bench/peers.md (NequIP 3 layers, 32 features, l_max 1, r_max 5 Å,
float32; per-type energy shifts = E0s, energy scale = forces RMS of the training set, average
number of neighbours from the training set; loss 1 × per-atom energy MSE + 100 × forces MSE,
Adam lr 0.01, EMA 0.99, batch 5) and runs ``nequip-train``. Lightning's ``max_time`` ends the
fit at the budget (a last validation runs and the checkpoints are written), so nothing is killed.
The model with the lowest validation loss (``best.ckpt``, EMA weights) then predicts every test
file through NequIP's own ASE calculator, in a small script run by the venv's python (this
process has no nequip); the errors are computed here.

Files in ``work``: config.yaml, train.log (nequip-train's output), best.ckpt and last.ckpt,
metrics/ (Lightning's CSV log: per-epoch validation metrics), hydra/ (Hydra's own copy of the
config), evaluate.py and evaluate.json (the evaluation script and its input), evaluate.log,
<test name>_pred.xyz (predictions: info ``NequIP_energy``, arrays ``NequIP_forces``).
Only the standard library, numpy and ASE are imported here.
"""

import json
import math
import shutil
import subprocess
import time
from pathlib import Path

import numpy as np

R_MAX = 5.0
BATCH_SIZE = 5
SEED = 1234


def type_names(e0s: dict) -> dict:
    """atomic number -> NequIP type name (the chemical symbol), for the elements that have an E0."""
    from ase.data import chemical_symbols

    return {int(z): chemical_symbols[int(z)] for z in sorted(e0s)}


# Runs in the NequIP venv: loads a checkpoint (EMA weights) through nequip's API and writes, for
# every test file, its frames with the predicted energy and forces; prints one JSON line with the
# list of the files it evaluated (the training progress is read from Lightning's CSV log).
EVALUATE = r'''
import json, sys

import ase.io
import torch
from nequip.data.transforms import ChemicalSpeciesToAtomTypeMapper, NeighborListTransform
from nequip.integrations.ase import NequIPCalculator
from nequip.model import ModelFromCheckpoint
from nequip.utils.global_state import set_global_state

spec = json.load(open(sys.argv[1]))
torch.set_num_threads(spec["threads"])
set_global_state()  # nequip's float64 data / TF32 settings, as in nequip-train
# ModelFromCheckpoint gives the evaluation model (EMA weights swapped in) as a ModuleDict
model = ModelFromCheckpoint(spec["checkpoint"], compile_mode="eager")["sole_model"].eval()
types = spec["type_names"]
transforms = [ChemicalSpeciesToAtomTypeMapper(model_type_names=types,
                                              chemical_species_to_atom_type_map={t: t for t in types}),
              NeighborListTransform(r_max=spec["r_max"])]
calc = NequIPCalculator(model, device="cpu", transforms=transforms)
for name, (reference, out) in spec["tests"].items():
    frames = ase.io.read(reference, ":")
    for atoms in frames:
        atoms.calc = calc
        energy, forces = float(atoms.get_potential_energy()), atoms.get_forces().copy()
        atoms.calc = None
        atoms.info = {"NequIP_energy": energy}
        atoms.arrays = {k: v for k, v in atoms.arrays.items() if k in ("numbers", "positions")}
        atoms.arrays["NequIP_forces"] = forces
    ase.io.write(out, frames, format="extxyz")
print(json.dumps({"evaluated": sorted(spec["tests"])}))
'''


def max_time(budget_minutes: float) -> str:
    """Lightning's max_time as "DD:HH:MM:SS" (a dict would reach it as a Hydra DictConfig, which fails)."""
    seconds = max(1, int(round(60 * budget_minutes)))
    return f"{seconds // 86400:02d}:{seconds // 3600 % 24:02d}:{seconds // 60 % 60:02d}:{seconds % 60:02d}"


def nequip_config(work: Path, train: Path, valid: Path, e0s: dict, budget_minutes: float) -> dict:
    """The nequip-train config (Hydra; written as JSON, which YAML reads as is)."""
    names = type_names(e0s)  # every element of the data has an E0 (peers.py reads them from the isolated atoms)
    types = list(names.values())
    transforms = [
        {"_target_": "nequip.data.transforms.ChemicalSpeciesToAtomTypeMapper", "model_type_names": types,
         "chemical_species_to_atom_type_map": {t: t for t in types}},
        {"_target_": "nequip.data.transforms.NeighborListTransform", "r_max": R_MAX},
    ]
    loader = {"_target_": "torch.utils.data.DataLoader", "batch_size": BATCH_SIZE}
    # loss: per-atom energy MSE and forces MSE, 1 : 100 (nequip normalises the coefficients to
    # sum to 1, i.e. the loss is (E + 100 F) / 101: the same minimiser, and Adam is scale-free)
    coeffs = {"total_energy": 1.0, "forces": 100.0}
    loss = {"_target_": "nequip.train.EnergyForceLoss", "per_atom_energy": True, "coeffs": coeffs}
    # validation: the same weighted loss (its `weighted_sum` picks best.ckpt, as MACE keeps the
    # lowest validation loss), plus RMSEs logged for reading (no coefficient: not in the sum)
    rmse = [{"name": name, "field": field, "metric": {"_target_": "nequip.train.RootMeanSquaredError"}}
            for name, field in [("total_energy_rmse", "total_energy"), ("forces_rmse", "forces")]]
    val_metrics = {**loss, "extra_metrics": rmse}
    return {
        "run": ["train"],
        "data": {
            "_target_": "nequip.data.datamodule.ASEDataModule",
            "seed": SEED,
            "train_file_path": str(train),
            "val_file_path": str(valid),
            "transforms": transforms,
            "train_dataloader": {**loader, "shuffle": True},
            "val_dataloader": {**loader, "batch_size": 10},
            # energy key `energy` (info) and forces key `forces` (arrays) are ASE's own names
            "stats_manager": {"_target_": "nequip.data.CommonDataStatisticsManager", "type_names": types,
                              "dataloader_kwargs": {"batch_size": 10}},
        },
        "trainer": {
            "_target_": "lightning.Trainer",
            "accelerator": "cpu",
            "devices": 1,
            "max_epochs": 1_000_000,
            # Lightning's Timer: checked after every step; the fit ends cleanly (a last validation
            # and checkpoint) once this much training time has passed
            "max_time": max_time(budget_minutes),
            "check_val_every_n_epoch": 1,  # required by the EMA module
            "log_every_n_steps": 10,
            "enable_progress_bar": False,
            "logger": {"_target_": "lightning.pytorch.loggers.CSVLogger", "save_dir": str(work), "name": "metrics",
                       "version": 0},
            "callbacks": [
                {"_target_": "lightning.pytorch.callbacks.ModelCheckpoint", "monitor": "val0_epoch/weighted_sum",
                 "dirpath": str(work), "filename": "best", "save_top_k": 1, "save_last": False},
                # unmonitored: `last.ckpt` always holds the latest state (and the step count)
                {"_target_": "lightning.pytorch.callbacks.ModelCheckpoint", "dirpath": str(work),
                 "filename": "latest", "save_top_k": 1, "save_last": True},
            ],
        },
        "training_module": {
            "_target_": "nequip.train.EMALightningModule",
            "ema_decay": 0.99,
            "loss": loss,
            "val_metrics": val_metrics,
            "optimizer": {"_target_": "torch.optim.Adam", "lr": 0.01},
            "model": {
                "_target_": "nequip.model.NequIPGNNModel",
                "seed": SEED,
                "model_dtype": "float32",
                "type_names": types,
                "r_max": R_MAX,
                "num_layers": 3,
                "l_max": 1,
                "num_features": 32,
                "avg_num_neighbors": "${training_data_stats:num_neighbors_mean}",
                "per_type_energy_shifts": {names[z]: float(e0s[z]) for z in names},
                "per_type_energy_scales": "${training_data_stats:forces_rms}",
            },
        },
    }


def errors(reference: str, predicted: str) -> dict:
    """Energy (meV per structure) and force (meV/Å per component) RMSE and MAE of the predictions."""
    import ase.io

    ref = ase.io.read(reference, ":")
    pred = ase.io.read(predicted, ":")
    if len(ref) != len(pred):
        raise ValueError(f"{predicted}: {len(pred)} frames for {len(ref)} references")
    de = np.array([p.info["NequIP_energy"] - r.get_potential_energy() for r, p in zip(ref, pred)]) * 1000
    df = np.concatenate([(p.arrays["NequIP_forces"] - r.get_forces()).ravel() for r, p in zip(ref, pred)]) * 1000
    rms = lambda x: float(np.sqrt(np.mean(x**2)))
    return {"energy_rmse": rms(de), "energy_mae": float(np.abs(de).mean()), "forces_rmse": rms(df),
            "forces_mae": float(np.abs(df).mean())}


def log_tail(path: Path) -> str:
    """The last non-empty line of a log, shortened, for an error message."""
    lines = [line for line in path.read_text(errors="replace").splitlines() if line.strip()] if path.exists() else []
    return lines[-1].strip()[:160] if lines else "no output"


def train_nequip(python: Path, work: Path, train: Path, valid: Path, e0s: dict, tests: dict, budget_minutes: float,
                 threads: int, env: dict) -> dict:
    """Train NequIP (peers.md's recipe) for the budget; evaluate the best checkpoint on the tests.

    python: the NequIP venv's python (``nequip-train`` lies beside it); work: folder for the
    config, logs, checkpoints and predictions (created; an earlier run there is overwritten);
    train / valid: extxyz files (info ``energy`` in eV, arrays ``forces`` in eV/Å); e0s:
    {atomic number: isolated-atom energy in eV} for H, C, O; tests: {name: extxyz path}.

    Returns {"epochs", "train_wall_s", "tests": {name: {"energy_rmse", "energy_mae",
    "forces_rmse", "forces_mae"}}} (meV per structure, meV/Å per force component) plus "steps"
    and "checkpoint", or {"error": reason}. ``epochs`` counts completed passes over the training
    set (the budget usually ends one part-way); ``train_wall_s`` is the whole nequip-train run
    (reading the data and its statistics included, which max_time does not count).
    """
    import ase.io

    python, work = Path(python).absolute(), Path(work).absolute()
    work.mkdir(parents=True, exist_ok=True)
    trainer = python.parent / "nequip-train"
    if not trainer.exists():
        return {"error": f"no nequip-train beside {python}"}
    # a fresh start: Lightning would add -v1 suffixes to old checkpoints, and append to old logs
    for old in ["best.ckpt", "last.ckpt", "latest.ckpt"]:
        (work / old).unlink(missing_ok=True)
    shutil.rmtree(work / "metrics", ignore_errors=True)
    env = {**env, "OMP_NUM_THREADS": str(threads)}
    try:
        config = nequip_config(work, Path(train).absolute(), Path(valid).absolute(), e0s, budget_minutes)
    except ValueError as e:
        return {"error": str(e)}
    (work / "config.yaml").write_text(json.dumps(config, indent=2) + "\n")

    # Hydra: the config is read from `work`, its output folder kept in work/hydra (no chdir)
    cmd = [str(trainer), "--config-dir", str(work), "--config-name", "config",
           f"hydra.run.dir={work / 'hydra'}", "hydra.job.chdir=false"]
    start = time.time()
    with open(work / "train.log", "w") as log:
        try:
            done = subprocess.run(cmd, stdout=log, stderr=subprocess.STDOUT, env=env, cwd=work,
                                  timeout=60 * budget_minutes * 1.5 + 900)  # only if max_time failed
            failed = done.returncode != 0
        except subprocess.TimeoutExpired:
            failed = False  # killed long after the budget: evaluate whatever checkpoint there is
    wall = time.time() - start
    checkpoint = work / "best.ckpt" if (work / "best.ckpt").exists() else work / "last.ckpt"
    if failed or not (work / "last.ckpt").exists():
        return {"error": f"nequip-train failed: {log_tail(work / 'train.log')}" if failed else
                "no checkpoint within the budget"}

    # predictions through nequip's own calculator, in its venv
    preds = {name: (str(Path(path).absolute()), str(work / f"{name}_pred.xyz")) for name, path in tests.items()}
    spec = {"checkpoint": str(checkpoint), "threads": threads, "r_max": R_MAX,
            "type_names": list(type_names(e0s).values()), "tests": preds}
    (work / "evaluate.py").write_text(EVALUATE.lstrip())
    (work / "evaluate.json").write_text(json.dumps(spec, indent=2) + "\n")
    with open(work / "evaluate.log", "w") as log:
        done = subprocess.run([str(python), str(work / "evaluate.py"), str(work / "evaluate.json")],
                              stdout=subprocess.PIPE, stderr=log, text=True, env=env, cwd=work)
    lines = [line for line in done.stdout.splitlines() if line.startswith("{")]
    if done.returncode != 0 or not lines:
        return {"error": f"evaluation failed: {log_tail(work / 'evaluate.log')}"}
    # the optimizer steps done, from Lightning's CSV log (logged every few steps and at each validation)
    import csv

    logs = sorted((work / "metrics").glob("version_*/metrics.csv"))
    rows = list(csv.DictReader(open(logs[-1]))) if logs else []
    progress = {"global_step": max((int(r["step"]) + 1 for r in rows if r.get("step")), default=0)}

    steps_per_epoch = math.ceil(len(ase.io.read(str(train), ":")) / BATCH_SIZE)  # the loader keeps the last batch
    results = {"epochs": progress["global_step"] // steps_per_epoch, "train_wall_s": wall,
               "steps": progress["global_step"], "checkpoint": checkpoint.name, "tests": {}}
    for name, (reference, out) in preds.items():
        results["tests"][name] = errors(reference, out)
    return results
