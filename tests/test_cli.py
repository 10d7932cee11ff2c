"""The `equipot` command line, run in-process through equipot.cli.main (and once as a process)."""

import json
import os
import subprocess
import sys

import ase.io
import numpy as np
import pytest
import yaml
from ase import Atoms

from equipot.cli import main
from equipot.train import CHECKPOINT, LAST_MODEL, MODEL, load_checkpoint


def write_config(tmp_path, values, name="config.yaml"):
    path = tmp_path / name
    path.write_text(yaml.safe_dump(values))
    return str(path)


def test_train_resume_eval_md(io_config_dict, io_small_xyz, tmp_path, capsys):
    values = io_config_dict("cli_run", max_epochs=1)
    config = write_config(tmp_path, values)
    assert main(["train", config, "--quiet"]) == 0
    out = values["output_dir"]
    assert "training stopped (max_epochs) after 1 epochs" in capsys.readouterr().out
    assert load_checkpoint(os.path.join(out, CHECKPOINT))["epoch"] == 1

    values["training"]["max_epochs"] = 2
    config = write_config(tmp_path, values)
    assert main(["train", config, "--resume", "--quiet"]) == 0
    assert "after 2 epochs" in capsys.readouterr().out
    assert load_checkpoint(os.path.join(out, CHECKPOINT))["epoch"] == 2
    with open(os.path.join(out, "metrics.csv")) as f:
        assert len(f.read().strip().splitlines()) == 3  # header + the two epochs

    model = os.path.join(out, MODEL)
    metrics, eval_dir = tmp_path / "metrics.json", tmp_path / "eval"
    assert main(["eval", model, str(io_small_xyz), "--json", str(metrics), "--out", str(eval_dir),
                 "--batch-size", "5", "--threads", "1"]) == 0
    printed = capsys.readouterr().out
    assert "forces" in printed and "12 structures, 180 atoms" in printed
    summary = json.loads(metrics.read_text())
    assert summary["n_structures"] == 12 and summary["data"] == str(io_small_xyz)
    assert np.isfinite(summary["forces_rmse"]) and summary["forces_rmse"] > 0
    stem = "acac12"
    assert (eval_dir / f"{stem}_parity.png").stat().st_size > 0
    assert len(ase.io.read(str(eval_dir / f"{stem}_predictions.xyz"), ":")) == 12
    # a committee: the best and the last model, their mean and spread
    assert main(["eval", model, os.path.join(out, LAST_MODEL), str(io_small_xyz), "--json", str(metrics),
                 "--out", str(tmp_path / "committee")]) == 0
    capsys.readouterr()
    committee = json.loads(metrics.read_text())
    assert committee["n_models"] == 2 and np.isfinite(committee["mean_forces_std"])
    assert "pred_forces_std" in ase.io.read(str(tmp_path / "committee" / f"{stem}_predictions.xyz"), 0).arrays

    md_dir = tmp_path / "md"
    assert main(["md", model, str(io_small_xyz), "--steps", "10", "--interval", "5", "--dtype", "float64",
                 "--out", str(md_dir), "--threads", "1"]) == 0
    printed = capsys.readouterr().out
    assert "NVE energy drift" in printed
    assert len(ase.io.read(str(md_dir / "md.xyz"), ":")) == 3
    assert main(["md", model, str(io_small_xyz), "--steps", "5", "--interval", "5", "--ensemble", "nvt",
                 "--dtype", "float32", "--no-tabulate", "--out", str(tmp_path / "nvt")]) == 0
    assert "drift" not in capsys.readouterr().out
    # a committee drives the MD with its mean and logs its spread
    assert main(["md", model, os.path.join(out, LAST_MODEL), str(io_small_xyz), "--steps", "4", "--interval", "2",
                 "--out", str(tmp_path / "committee_md")]) == 0
    assert "committee: largest spread" in capsys.readouterr().out
    rows = np.loadtxt(tmp_path / "committee_md" / "md.log")
    assert rows.shape == (3, 6) and np.all(rows[:, 5] >= 0)
    frames = ase.io.read(str(tmp_path / "committee_md" / "md.xyz"), ":")
    assert [f.arrays["forces_std"].max() for f in frames] == pytest.approx(rows[:, 5], abs=1e-6)


def test_bad_config_key_exits_2(tmp_path, io_config_dict, capsys):
    values = io_config_dict("bad")
    values["training"]["max_epoch"] = 3
    config = write_config(tmp_path, values, "bad.yaml")
    assert main(["train", config]) == 2
    captured = capsys.readouterr()
    assert captured.err.startswith("equipot: error:")
    assert "'training.max_epoch'" in captured.err and config in captured.err
    assert "did you mean 'max_epochs'" in captured.err
    assert not os.path.exists(values["output_dir"])


def test_errors_exit_2_with_a_message(tmp_path, io_config_dict, io_tiny_model, capsys):
    # resume from a truncated checkpoint
    values = io_config_dict("trunc", max_epochs=1)
    config = write_config(tmp_path, values)
    assert main(["train", config, "--quiet"]) == 0
    path = os.path.join(values["output_dir"], CHECKPOINT)
    data = open(path, "rb").read()
    with open(path, "wb") as f:
        f.write(data[: len(data) // 3])
    capsys.readouterr()
    assert main(["train", config, "--resume", "--quiet"]) == 2
    err = capsys.readouterr().err
    assert "corrupt or truncated checkpoint" in err and path in err

    # misspelt data key
    values = io_config_dict("misspelt")
    values["data"]["keys"]["forces"] = "force"
    assert main(["train", write_config(tmp_path, values, "misspelt.yaml")]) == 2
    err = capsys.readouterr().err
    assert "frame 0" in err and "did you mean 'forces'" in err

    # missing data file, missing config, truncated model file
    missing = str(tmp_path / "missing.xyz")
    assert main(["eval", str(io_tiny_model), missing]) == 2
    assert missing in capsys.readouterr().err
    assert main(["train", str(tmp_path / "none.yaml")]) == 2
    assert "config file not found" in capsys.readouterr().err
    broken = tmp_path / "broken.safetensors"
    broken.write_bytes(io_tiny_model.read_bytes()[:200])
    assert main(["eval", str(broken), missing]) == 2
    assert str(broken) in capsys.readouterr().err

    # an element the model was not trained on
    nh3 = tmp_path / "nh3.xyz"
    ase.io.write(str(nh3), Atoms("NH3", positions=[[0, 0, 0], [1.0, 0, 0], [0, 1.0, 0], [0, 0, 1.0]]))
    assert main(["eval", str(io_tiny_model), str(nh3)]) == 2
    assert "element(s) N" in capsys.readouterr().err

    # atoms on top of each other
    close = tmp_path / "close.xyz"
    ase.io.write(str(close), Atoms("CO", positions=[[0, 0, 0], [0.02, 0, 0]]))
    assert main(["eval", str(io_tiny_model), str(close)]) == 2
    assert "0.0200 Å apart" in capsys.readouterr().err


def test_usage_errors_exit_2(capsys):
    with pytest.raises(SystemExit) as err:
        main([])
    assert err.value.code == 2
    with pytest.raises(SystemExit) as err:
        main(["md", "m.safetensors", "s.xyz", "--ensemble", "npt"])
    assert err.value.code == 2
    assert "invalid choice" in capsys.readouterr().err


def test_help_in_a_subprocess():
    # one process start (it imports torch): the installed console script if there is one
    script = os.path.join(os.path.dirname(sys.executable), "equipot")
    command = [script] if os.path.isfile(script) else [sys.executable, "-m", "equipot.cli"]
    result = subprocess.run(command + ["--help"], capture_output=True, text=True,
                            env={**os.environ, "OMP_NUM_THREADS": "1"}, timeout=120)
    assert result.returncode == 0, result.stderr
    assert result.stdout.startswith("usage: equipot")
    for name in ("train", "eval", "md", "demo"):
        assert name in result.stdout


def test_eval_by_a_key_gives_each_groups_errors(io_tiny_model, io_demo_frames, tmp_path, capsys):
    """--by config_type: each group's errors are those of its structures alone (a file of just
    them gives the same numbers); structures without the key form the group "(none)"."""
    frames = [a.copy() for a in io_demo_frames]
    for k, atoms in enumerate(frames):
        atoms.calc = io_demo_frames[k].calc
        atoms.info.pop("config_type", None)
        if k % 3:
            atoms.info["config_type"] = "hot" if k % 3 == 1 else "cold"
    path, metrics = tmp_path / "groups.xyz", tmp_path / "groups.json"
    ase.io.write(str(path), frames, format="extxyz")
    assert main(["eval", str(io_tiny_model), str(path), "--by", "config_type", "--json", str(metrics)]) == 0
    out = capsys.readouterr().out
    assert "by config_type" in out and "hot" in out and "(none)" in out
    summary = json.load(open(metrics))
    assert sorted(summary["groups"]) == ["(none)", "cold", "hot"]
    # forces per element (H, C, O of acac): their squared errors add up to the whole's
    counts = {"H": 8, "C": 5, "O": 2}
    total = sum(n * summary[f"forces[{el}]_rmse"] ** 2 for el, n in counts.items()) / sum(counts.values())
    assert total == pytest.approx(summary["forces_rmse"] ** 2, rel=1e-9)
    assert "forces[H]" in out
    hot = tmp_path / "hot.xyz"
    ase.io.write(str(hot), [a for a in frames if a.info.get("config_type") == "hot"], format="extxyz")
    assert main(["eval", str(io_tiny_model), str(hot), "--json", str(tmp_path / "hot.json")]) == 0
    alone = json.load(open(tmp_path / "hot.json"))
    for key in ("energy_mae", "forces_rmse", "n_structures"):
        assert summary["groups"]["hot"][key] == pytest.approx(alone[key], rel=1e-12)
    assert main(["eval", str(io_tiny_model), str(path), "--by", "nokey"]) == 2
    assert "no structure has the key 'nokey'" in capsys.readouterr().err
