"""Data-parallel training under torchrun: two processes train the model one process trains, and
a stopped two-process run resumes without losing anything."""

import csv
import json
import os
import shutil
import subprocess
import sys

import pytest
import torch
import yaml

from equipot.train import CHECKPOINT, load_checkpoint

TORCHRUN = shutil.which("torchrun", path=os.path.dirname(sys.executable)) or shutil.which("torchrun")


def run_training(values: dict, tmp_path, processes: int, *extra: str) -> dict:
    path = tmp_path / f"{os.path.basename(values['output_dir'])}.yaml"
    path.write_text(yaml.safe_dump(values))
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    if processes == 1:
        cmd = [sys.executable, "-m", "equipot", "train", str(path), "--quiet", *extra]
    else:
        cmd = [TORCHRUN, "--standalone", f"--nproc_per_node={processes}", "-m", "equipot", "train", str(path), "--quiet",
               *extra]
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=300, env=env)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    return load_checkpoint(os.path.join(values["output_dir"], CHECKPOINT))


@pytest.mark.skipif(TORCHRUN is None, reason="torchrun not installed")
def test_two_processes_train_the_same_model_as_one(io_config_dict, tmp_path):
    """9 training structures in batches of 4: the last batch (1 structure) leaves the second
    process without data, which must neither hang nor change the result. float64, so the
    summed gradients of the two halves equal the whole batch's to rounding."""
    one = io_config_dict("one", dtype="float64", max_epochs=3)
    two = io_config_dict("two", dtype="float64", max_epochs=3)
    a = run_training(one, tmp_path, 1)
    b = run_training(two, tmp_path, 2)
    assert a["epoch"] == b["epoch"] == 3
    for key, value in a["model"].items():
        torch.testing.assert_close(b["model"][key], value, rtol=1e-9, atol=1e-11, msg=key)
    rows = [list(csv.DictReader(open(os.path.join(v["output_dir"], "metrics.csv")))) for v in (one, two)]
    for ra, rb in zip(*rows):
        for k in ("train_loss", "valid_loss", "valid_forces_rmse", "valid_energy_rmse"):
            assert float(rb[k]) == pytest.approx(float(ra[k]), rel=1e-8), k
    # only the first process writes: one checkpoint, one metrics file, no stray files
    assert sorted(os.listdir(two["output_dir"])) == sorted(os.listdir(one["output_dir"]))


@pytest.mark.skipif(TORCHRUN is None, reason="torchrun not installed")
def test_two_processes_stopped_and_resumed_lose_nothing(io_config_dict, tmp_path):
    """A two-process run stopped after its first epoch (the wall-clock limit; a kill leaves the
    same last checkpoint, which is written atomically) and resumed on two processes ends with
    the weights, optimiser state and history of an uninterrupted two-process run."""
    straight = io_config_dict("ddp_straight", dtype="float64", max_epochs=2)
    a = run_training(straight, tmp_path, 2)
    cut = io_config_dict("ddp_cut", dtype="float64", max_epochs=2, max_minutes=1e-9)
    assert run_training(cut, tmp_path, 2)["epoch"] == 1
    b = run_training(io_config_dict("ddp_cut", dtype="float64", max_epochs=2), tmp_path, 2, "--resume")
    assert a["epoch"] == b["epoch"] == 2
    for key, value in a["model"].items():
        torch.testing.assert_close(b["model"][key], value, rtol=1e-12, atol=1e-14, msg=key)
    for (key, value), other in zip(a["optimizer"]["state"].items(), b["optimizer"]["state"].values()):
        for name in ("exp_avg", "exp_avg_sq"):
            torch.testing.assert_close(other[name], value[name], rtol=1e-12, atol=1e-14, msg=f"{key} {name}")
    rows_a, rows_b = json.loads(a["history"]), json.loads(b["history"])
    assert len(rows_a) == len(rows_b) == 2
    for ra, rb in zip(rows_a, rows_b):
        ra.pop("wall_s"), rb.pop("wall_s")
        assert rb == pytest.approx(ra, rel=1e-12)
