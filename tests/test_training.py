"""Training runs: outputs, exact resume, stopping rules, splits, statistics and loss checks."""

import csv
import json
import os
import re

import ase.io
import numpy as np
import pytest
import torch

from hostile import Payload

from equipot.config import ConfigError, config_from_dict, load_config
from equipot.data import CloseAtomsError, DataError, compute_statistics, fit_e0, make_batch, species_of
from equipot.data import read_configurations
from equipot.model import load_model
from equipot.train import CHECKPOINT, LAST_MODEL, MODEL, CheckpointError, Trainer, load_checkpoint
from equipot.train.checkpoint import save_checkpoint
from equipot.train import loop as loop_module
from equipot.train.loss import squared_error_terms
from equipot.train.setup import read_splits

PNG = b"\x89PNG\r\n\x1a\n"


def train(values, resume=False):
    config = config_from_dict(values, "test.yaml")
    return config, Trainer(config, progress=False).run(resume=resume)


def history_without_time(history):
    return [{k: v for k, v in row.items() if k != "wall_s"} for row in history]


def assert_same_state(a, b):
    """Two checkpoints hold bit-identical weights, EMA, optimiser state and history."""
    assert a["model"].keys() == b["model"].keys()
    for key in a["model"]:
        assert torch.equal(a["model"][key], b["model"][key]), key
    for key in a["ema"]["shadow"]:
        assert torch.equal(a["ema"]["shadow"][key], b["ema"]["shadow"][key]), key
    for k, state in a["optimizer"]["state"].items():
        for name, value in state.items():
            other = b["optimizer"]["state"][k][name]
            assert torch.equal(torch.as_tensor(value), torch.as_tensor(other)), (k, name)
    assert torch.equal(a["train_loader"]["generator"], b["train_loader"]["generator"])
    assert history_without_time(json.loads(a["history"])) == history_without_time(json.loads(b["history"]))
    assert (a["epoch"], a["best_loss"], a["bad_epochs"]) == (b["epoch"], b["best_loss"], b["bad_epochs"])


@pytest.fixture
def io_straight_run(io_config_dict):
    values = io_config_dict("straight")
    config, result = train(values)
    return values, config, result


def test_run_writes_model_checkpoint_metrics_and_plot(io_straight_run):
    values, config, result = io_straight_run
    out = config.output_dir
    assert result["stop_reason"] == "max_epochs" and result["epochs"] == 2
    assert np.isfinite(result["best_valid_loss"])
    for name in (MODEL, LAST_MODEL, CHECKPOINT, "metrics.csv", "learning_curve.png", "config.yaml"):
        assert os.path.getsize(os.path.join(out, name)) > 0, name
    model = load_model(os.path.join(out, MODEL))
    assert model.species == [1, 6, 8]
    assert model.model_config.channels == values["model"]["channels"]
    state = load_checkpoint(os.path.join(out, CHECKPOINT))
    assert state["epoch"] == 2
    # the last model holds the averaged weights after the final epoch, whatever the validation loss did
    last = dict(load_model(os.path.join(out, LAST_MODEL)).named_parameters())
    averaged = state["ema"]["shadow"] if state["ema"] else state["model"]
    assert last.keys() == averaged.keys()
    assert all(torch.equal(last[k].detach(), averaged[k]) for k in last)
    with open(os.path.join(out, "metrics.csv")) as f:
        rows = list(csv.DictReader(f))
    assert [int(r["epoch"]) for r in rows] == [1, 2]
    for column in ("train_loss", "valid_loss", "lr", "valid_energy_per_atom_rmse", "valid_forces_rmse"):
        assert all(np.isfinite(float(r[column])) for r in rows), column
    assert float(rows[-1]["valid_loss"]) == pytest.approx(json.loads(state["history"])[-1]["valid_loss"])
    with open(os.path.join(out, "learning_curve.png"), "rb") as f:
        assert f.read(8) == PNG
    assert load_config(os.path.join(out, "config.yaml")).to_dict() == config.to_dict()
    # no temporary files left behind by the atomic writes
    assert not [n for n in os.listdir(out) if ".tmp" in n]


def test_resume_gives_the_same_model_as_an_uninterrupted_run(io_straight_run, io_config_dict):
    _, straight, _ = io_straight_run
    first = io_config_dict("interrupted", max_epochs=1)
    _, result = train(first)
    assert result["epochs"] == 1
    second = io_config_dict("interrupted", max_epochs=2)
    config, result = train(second, resume=True)
    assert result == {"stop_reason": "max_epochs", "epochs": 2,
                      "best_valid_loss": load_checkpoint(os.path.join(straight.output_dir, CHECKPOINT))["best_loss"]}
    a = load_checkpoint(os.path.join(straight.output_dir, CHECKPOINT))
    b = load_checkpoint(os.path.join(config.output_dir, CHECKPOINT))
    assert_same_state(a, b)
    ma = load_model(os.path.join(straight.output_dir, MODEL)).state_dict()
    mb = load_model(os.path.join(config.output_dir, MODEL)).state_dict()
    assert all(torch.equal(ma[k], mb[k]) for k in ma)
    # the model actually trained: the weights moved away from the initial ones
    initial = Trainer(config_from_dict(io_config_dict("fresh"), "x"), progress=False)
    initial._setup(resume=False)
    assert any(not torch.equal(v, a["model"][k]) for k, v in initial.model.state_dict().items())


def test_resume_after_wall_clock_stop_with_cosine_schedule(io_config_dict):
    straight_values = io_config_dict("cos_straight", scheduler="cosine", max_epochs=3)
    straight, result = train(straight_values)
    assert result["epochs"] == 3
    # the same configuration, killed by a (tiny) wall-clock limit after its first epoch
    config, result = train(io_config_dict("cos_cut", scheduler="cosine", max_epochs=3, max_minutes=1e-9))
    assert result["stop_reason"] == "wall_clock" and result["epochs"] == 1
    # as if the first run had trained for 1000 s: the resumed run's wall-clock column goes on from there
    path = os.path.join(config.output_dir, CHECKPOINT)
    state = load_checkpoint(path)
    state["history"] = json.dumps([{**row, "wall_s": 1000.0} for row in json.loads(state["history"])])
    save_checkpoint(path, state)
    config, result = train(io_config_dict("cos_cut", scheduler="cosine", max_epochs=3), resume=True)
    assert result["epochs"] == 3
    a = load_checkpoint(os.path.join(straight.output_dir, CHECKPOINT))
    b = load_checkpoint(os.path.join(config.output_dir, CHECKPOINT))
    assert_same_state(a, b)
    lrs = [row["lr"] for row in json.loads(b["history"])]
    assert lrs[0] > lrs[1] > lrs[2]  # the cosine schedule continued, not restarted
    walls = [float(row["wall_s"]) for row in csv.DictReader(open(os.path.join(config.output_dir, "metrics.csv")))]
    assert walls[0] == 1000.0 and 1000.0 < walls[1] < walls[2] < 1000.0 + 600


STAGE_TWO = {"start": 0.3, "loss": {"energy": 1000.0, "forces": 1000.0}, "lr": 0.002}


def test_stage_two_trains_the_end_with_its_own_weights_and_picks_its_best_model(io_config_dict):
    values = io_config_dict("stage_two", max_epochs=3, stage_two=STAGE_TWO)
    config, result = train(values)
    state = load_checkpoint(os.path.join(config.output_dir, CHECKPOINT))
    history = json.loads(state["history"])
    # epoch 1 starts at 0 of 3 epochs, epoch 2 at 1/3 >= 0.3
    assert [row["stage"] for row in history] == [1, 2, 2] and state["stage_two"] is True
    assert [row["lr"] for row in history[1:]] == [0.002, 0.002]  # its own rate, the scheduler stopped
    # each validation loss is the weighted sum of the mean squares with the weights of its stage
    for row, (we, wf) in zip(history, [(1.0, 100.0), (1000.0, 1000.0), (1000.0, 1000.0)]):
        expected = we * (row["valid_energy_per_atom_rmse"] / 1000) ** 2 + wf * (row["valid_forces_rmse"] / 1000) ** 2
        assert row["valid_loss"] == pytest.approx(expected, rel=1e-6)
    # the best model is the best of stage two, although stage one's loss (other weights) was lower
    assert history[0]["valid_loss"] < min(row["valid_loss"] for row in history[1:])
    assert result["best_valid_loss"] == min(row["valid_loss"] for row in history[1:])
    with open(os.path.join(config.output_dir, "metrics.csv")) as f:
        assert [r["stage"] for r in csv.DictReader(f)] == ["1", "2", "2"]


def test_stage_two_resumes_exactly_on_both_sides_of_its_start(io_config_dict):
    _, result = train(io_config_dict("stage_straight", max_epochs=3, stage_two=STAGE_TWO))
    assert result["epochs"] == 3
    # the same run killed by a (tiny) wall-clock limit after each epoch: before and after the switch
    for k in range(3):
        config, result = train(io_config_dict("stage_cut", max_epochs=3, max_minutes=1e-9, stage_two=STAGE_TWO),
                               resume=k > 0)
        assert result["epochs"] == k + 1
    a = load_checkpoint(os.path.join(str(config.output_dir).replace("stage_cut", "stage_straight"), CHECKPOINT))
    b = load_checkpoint(os.path.join(config.output_dir, CHECKPOINT))
    assert_same_state(a, b)
    assert a["stage_two"] is b["stage_two"] is True


@pytest.mark.parametrize("stage, message", [
    ({"loss": {"energie": 10.0}}, "did you mean 'energy'"),
    ({"loss": {"stress": 1.0}}, "cannot be switched on in stage two"),
    ({"loss": {"forces": -1.0}}, "must not be negative"),
    ({"loss": {"energy": 0.0, "forces": 0.0}}, "at least one weight must stay positive"),
    ({"start": 1.0}, "stage_two.start must be in (0, 1)"),
    ({"lr": 0.0}, "stage_two.lr must be positive"),
])
def test_stage_two_config_errors(io_config_dict, stage, message):
    with pytest.raises(ConfigError, match=re.escape(message)):
        config_from_dict(io_config_dict("bad_stage", stage_two=stage), "test.yaml")


def test_early_stopping(io_config_dict, monkeypatch):
    losses = iter([3.0, 2.0, 2.5, 2.6, 1.0, 1.0, 1.0, 1.0])
    monkeypatch.setattr(Trainer, "_validate", lambda self: {"valid_loss": next(losses)})
    saved_at = []
    real_save = loop_module.save_model

    def counting_save(path, model, *args):
        saved_at.append((os.path.basename(path), len(trainer.history)))  # epochs finished before this one
        real_save(path, model, *args)

    monkeypatch.setattr(loop_module, "save_model", counting_save)
    config = config_from_dict(io_config_dict("early", patience=2, max_epochs=8, scheduler="none"), "x")
    trainer = Trainer(config, progress=False)
    result = trainer.run()
    assert result["stop_reason"] == "early_stopping"
    assert result["epochs"] == 4  # best at epoch 2, then two epochs without improvement
    assert result["best_valid_loss"] == 2.0
    # the model file holds the best epoch, not the last; the last model file every epoch
    assert [epoch for name, epoch in saved_at if name == MODEL] == [0, 1]
    assert [epoch for name, epoch in saved_at if name == LAST_MODEL] == [0, 1, 2, 3]
    state = load_checkpoint(os.path.join(config.output_dir, CHECKPOINT))
    assert state["bad_epochs"] == 2 and state["epoch"] == 4


def test_wall_clock_limit(io_config_dict):
    config, result = train(io_config_dict("clock", max_epochs=50, max_minutes=1e-9))
    assert result["stop_reason"] == "wall_clock"
    assert result["epochs"] == 1
    assert os.path.isfile(os.path.join(config.output_dir, CHECKPOINT))


class TickingClock:
    """time.time() that moves on by one second at every call: wall-clock rules run the same
    way on any machine."""

    def __init__(self):
        self.now = 0.0

    def time(self):
        self.now += 1.0
        return self.now


def test_budget_schedule_decays_over_the_wall_clock_budget(io_config_dict, monkeypatch):
    monkeypatch.setattr(loop_module, "time", TickingClock())
    values = io_config_dict("budget", scheduler="budget", max_epochs=100, max_minutes=12 / 60, lr=0.01)
    config, result = train(values)
    assert result["stop_reason"] == "wall_clock" and 3 <= result["epochs"] < 12
    lrs = [float(row["lr"]) for row in csv.DictReader(open(os.path.join(config.output_dir, "metrics.csv")))]
    assert all(a > b for a, b in zip(lrs, lrs[1:]))  # cosine over the budget, step by step
    assert lrs[0] > 0.7 * 0.01 and lrs[-1] < 0.2 * 0.01
    # the budget covers every run of the training: resuming a finished one trains no further
    config, again = train(values, resume=True)
    assert again["epochs"] == result["epochs"]
    with pytest.raises(ConfigError, match="max_minutes"):
        config_from_dict(io_config_dict("budget2", scheduler="budget", max_minutes=None), "x")
    with pytest.raises(ConfigError, match="max_minutes must be positive"):
        config_from_dict(io_config_dict("budget3", max_minutes=0), "x")


def test_seeded_validation_split(io_config_dict, io_small_xyz):
    def split(seed, fraction=0.25):
        values = io_config_dict("split")
        values["seed"] = seed
        values["data"]["valid_fraction"] = fraction
        return read_splits(config_from_dict(values, "x"))

    def energies(configs):
        return [float(c.targets["energy"]) for c in configs]

    a, b, c = split(7), split(7), split(8)
    assert energies(a.valid) == energies(b.valid) and energies(a.train) == energies(b.train)
    assert energies(a.valid) != energies(c.valid)
    everything = sorted(energies(read_configurations(str(io_small_xyz))))
    assert len(a.valid) == 3 and len(a.train) == 9
    assert sorted(energies(a.train) + energies(a.valid)) == everything
    with pytest.raises(DataError, match="too few"):
        values = io_config_dict("split")
        values["data"]["train"] = str(io_small_xyz)
        values["data"]["valid_fraction"] = 0.99
        read_splits(config_from_dict(values, "x"))


def test_statistics_use_the_training_split_only(io_config_dict, tmp_path):
    from equipot.demo import demo_data_dir

    held_out = ase.io.read(os.path.join(demo_data_dir(), "acac_test.xyz"), ":6")

    def setup_with_valid(frames, name):
        path = tmp_path / name
        ase.io.write(str(path), frames)
        values = io_config_dict("stats")
        values["data"]["valid"] = str(path)
        trainer = Trainer(config_from_dict(values, "x"), progress=False)
        trainer._setup(resume=False)
        return trainer.splits, trainer.stats.to_dict()

    splits_a, stats_a = setup_with_valid(held_out[:2], "valid_a.xyz")
    splits_b, stats_b = setup_with_valid(held_out[2:6], "valid_b.xyz")
    assert len(splits_a.valid) == 2 and len(splits_b.valid) == 4
    assert stats_a == stats_b
    # they are the statistics of the training split...
    train = splits_a.train
    species = species_of(train)
    expected = compute_statistics(train, 4.0, fit_e0(train, species), species).to_dict()
    assert stats_a["energy_scale"] == pytest.approx(expected["energy_scale"], rel=1e-12)
    assert stats_a["avg_num_neighbors"] == pytest.approx(expected["avg_num_neighbors"], rel=1e-12)
    # ...which differ from those of training + validation data
    both = train + splits_b.valid
    pooled = compute_statistics(both, 4.0, fit_e0(both, species), species).to_dict()
    assert stats_a["energy_scale"] != pytest.approx(pooled["energy_scale"], rel=1e-9)


def test_misspelt_forces_key_stops_training(io_config_dict, io_small_xyz):
    values = io_config_dict("misspelt")
    values["data"]["keys"] = {"energy": "energy", "forces": "force"}
    with pytest.raises(DataError) as err:
        train(values)
    message = str(err.value)
    assert str(io_small_xyz) in message and "frame 0" in message and "did you mean 'forces'" in message
    assert not os.path.exists(os.path.join(values["output_dir"], CHECKPOINT))


def test_loss_term_without_labels_is_refused(io_config_dict, io_small_xyz, tmp_path):
    # a positive weight on forces but no entry for forces in the key map
    values = io_config_dict("nokey")
    values["data"]["keys"] = {"energy": "energy"}
    with pytest.raises(ConfigError, match="training.loss.forces"):
        train(values)
    # stress weight on data that carry no stress at all
    values = io_config_dict("nostress")
    values["data"]["keys"] = {"energy": "energy", "forces": "forces", "stress": "stress"}
    values["training"]["loss"] = {"energy": 1.0, "forces": 10.0, "stress": 1.0}
    with pytest.raises(DataError, match="'stress' for stress not found") as err:
        train(values)
    assert "frame 0" in str(err.value)
    # ...while a zero weight needs no labels
    values = io_config_dict("energy_only", max_epochs=1)
    values["data"]["keys"] = {"energy": "energy"}
    values["training"]["loss"] = {"energy": 1.0, "forces": 0.0}
    assert train(values)[1]["epochs"] == 1
    # the loss itself refuses a batch without the labels a weighted term needs
    configs = read_configurations(str(io_small_xyz), keys={"energy": "energy"})[:2]
    graph = make_batch(configs, 4.0)
    pred = {"energy": graph.targets["energy"], "forces": torch.zeros(graph.n_atoms, 3)}
    weights = config_from_dict({}).training.loss
    with pytest.raises(ValueError, match="loss term 'forces' has weight 100"):
        squared_error_terms(pred, graph, weights)


def test_close_atoms_in_training_data_name_the_frame(io_config_dict, io_small_xyz, tmp_path):
    frames = ase.io.read(str(io_small_xyz), ":8")
    frames[5].positions[2] = frames[5].positions[0] + [0.0, 0.03, 0.0]
    path = tmp_path / "close.xyz"
    ase.io.write(str(path), frames)
    values = io_config_dict("close")
    values["data"]["train"] = str(path)
    with pytest.raises(CloseAtomsError) as err:
        train(values)
    assert f"{path}, frame 5" in str(err.value)


def test_resume_from_bad_checkpoints(io_config_dict, io_straight_run):
    _, straight, _ = io_straight_run
    good = open(os.path.join(straight.output_dir, CHECKPOINT), "rb").read()
    values = io_config_dict("bad_ckpt", max_epochs=3)
    out = values["output_dir"]
    with pytest.raises(CheckpointError, match="no checkpoint to resume from"):
        train(values, resume=True)
    os.makedirs(out)
    path = os.path.join(out, CHECKPOINT)
    for damaged in (good[: len(good) // 2], good[:100], b"", b"not a checkpoint at all"):
        with open(path, "wb") as f:
            f.write(damaged)
        with pytest.raises(CheckpointError, match="corrupt or truncated") as err:
            train(values, resume=True)
        assert path in str(err.value)
    torch.save({"format": "something-else"}, path)
    with pytest.raises(CheckpointError, match="not an equipot training checkpoint"):
        train(values, resume=True)


def test_checkpoint_loading_executes_nothing(tmp_path):
    marker = str(tmp_path / "executed")
    path = tmp_path / CHECKPOINT
    torch.save({"format": "equipot-checkpoint", "payload": Payload(marker)}, str(path))
    with pytest.raises(CheckpointError):
        load_checkpoint(str(path))
    assert not os.path.exists(marker)


def fine_tuning(io_config_dict, base_model, name, **training):
    """A run that starts from ``base_model`` (training.init_from), its model section left out."""
    values = io_config_dict(name, init_from=str(base_model), **training)
    del values["model"]
    return values


def test_fine_tuning_starts_from_the_model_file(io_straight_run, io_config_dict):
    _, straight, _ = io_straight_run
    base = os.path.join(straight.output_dir, MODEL)
    values = fine_tuning(io_config_dict, base, "tuned")
    config = config_from_dict(values, "tune.yaml")
    assert config.model == load_model(base).model_config  # the file's architecture, the section left out
    trainer = Trainer(config, progress=False)
    trainer._setup(resume=False)
    start = dict(trainer.model.named_parameters())
    assert all(torch.equal(v.detach(), start[k].detach()) for k, v in load_model(base).named_parameters())
    assert trainer.stats == load_model(base).statistics  # E0s, scale and neighbour count of the file
    _, result = train(values)
    assert result["epochs"] == 2
    tuned = dict(load_model(os.path.join(config.output_dir, LAST_MODEL)).named_parameters())
    assert any(not torch.equal(v.detach(), tuned[k].detach()) for k, v in start.items())  # it trained on
    # and it resumes like any run: the config is re-read against the same file
    more = fine_tuning(io_config_dict, base, "tuned", max_epochs=3)
    _, result = train(more, resume=True)
    assert result["epochs"] == 3


def test_fine_tuning_model_section_must_agree_with_the_file(io_straight_run, io_config_dict):
    _, straight, _ = io_straight_run
    base = os.path.join(straight.output_dir, MODEL)
    values = io_config_dict("tuned", init_from=base)  # the model section as it was written: agrees
    assert config_from_dict(values, "tune.yaml").model == load_model(base).model_config
    values["model"]["channels"] = 8
    with pytest.raises(ConfigError, match=r"tune.yaml: training.init_from: .* model.channels = 4, .* \(8\)"):
        config_from_dict(values, "tune.yaml")
    values = io_config_dict("tuned", init_from=base + ".missing")
    with pytest.raises(ConfigError, match="init_from: model file not found"):
        config_from_dict(values, "tune.yaml")
    with pytest.raises(ConfigError, match="init_e0s.*set init_from"):
        config_from_dict(io_config_dict("x", init_e0s="data"), "tune.yaml")
    values = io_config_dict("tuned", init_from=base)
    values["data"]["e0s"] = {"H": -13.0, "C": -1030.0, "O": -2040.0}  # would be ignored: refused
    with pytest.raises(ConfigError, match="data.e0s is given.*init_e0s: data"):
        config_from_dict(values, "tune.yaml")


def test_fine_tuning_refuses_new_elements(io_straight_run, io_config_dict, io_demo_frames, tmp_path):
    _, straight, _ = io_straight_run
    frames = [a.copy() for a in io_demo_frames[:6]]
    for a in frames:
        a.calc = None
        a.info["energy"], a.arrays["forces"] = -100.0, np.zeros((len(a), 3))
    frames[2].numbers[0] = 7  # nitrogen, which the model has no weights for
    path = tmp_path / "with_n.xyz"
    ase.io.write(path, frames, format="extxyz")
    values = fine_tuning(io_config_dict, os.path.join(straight.output_dir, MODEL), "tuned")
    values["data"]["train"] = str(path)
    with pytest.raises(ConfigError, match="trained on H, C, O; the training data also holds N"):
        train(values)


def test_fine_tuning_with_new_e0s_moves_the_energy_shifts(io_straight_run, io_config_dict):
    _, straight, _ = io_straight_run
    base = os.path.join(straight.output_dir, MODEL)
    old = load_model(base)
    new_e0 = {"H": -13.0, "C": -1030.0, "O": -2040.0}
    values = fine_tuning(io_config_dict, base, "tuned", init_e0s="data")
    values["data"]["e0s"] = new_e0
    trainer = Trainer(config_from_dict(values, "tune.yaml"), progress=False)
    trainer._setup(resume=False)
    assert trainer.stats.e0 == {1: -13.0, 6: -1030.0, 8: -2040.0}
    moved = trainer.model.energy_model.atomic_shift.detach() - old.energy_model.atomic_shift.detach()
    expected = torch.tensor([new_e0[s] - old.statistics.e0[z] for s, z in (("H", 1), ("C", 6), ("O", 8))],
                            dtype=moved.dtype)
    torch.testing.assert_close(moved, expected, rtol=0, atol=1e-9)
    # the energy of a structure moves by exactly Σ ΔE0 over its atoms; forces do not change
    graph = make_batch(read_configurations(values["data"]["train"])[:1], old.model_config.r_max, dtype=torch.float32)
    a, b = old(graph), trainer.model.eval()(graph)
    delta = sum(new_e0[s] - old.statistics.e0[z] for s, z in (("H", 1), ("C", 6), ("O", 8))
                for _ in range(int((graph.numbers == z).sum())))
    assert float((b["energy"] - a["energy"]).detach()) == pytest.approx(delta, abs=1e-6 * abs(delta))
    torch.testing.assert_close(b["forces"], a["forces"])


def test_test_files_are_evaluated_with_the_best_model(io_config_dict, io_small_xyz):
    """data.test: after the last epoch each file is evaluated with model.safetensors (the numbers
    equipot eval gives), its parity plot and predictions under output_dir/test."""
    from equipot.evaluate import evaluate_file

    values = io_config_dict("with_test", max_epochs=2)
    values["data"]["test"] = str(io_small_xyz)  # one file as a string, or a list
    train(values)
    out = values["output_dir"]
    results = json.load(open(os.path.join(out, "test_metrics.json")))
    summary = results[str(io_small_xyz)]
    again = evaluate_file(load_model(os.path.join(out, MODEL)), str(io_small_xyz), progress=False)
    assert summary["forces_mae"] == pytest.approx(again["forces_mae"], rel=1e-9) and summary["n_structures"] == 12
    assert os.path.isfile(os.path.join(out, "test", "acac12_parity.png"))
    values = io_config_dict("missing_test")
    values["data"]["test"] = ["nowhere/test.xyz"]
    with pytest.raises(ConfigError, match="data.test: file not found: nowhere/test.xyz"):
        train(values)
    assert not os.path.exists(os.path.join(values["output_dir"], CHECKPOINT))


@pytest.mark.parametrize("name", ["fast", "accurate"])
def test_example_configs_train(name, io_small_xyz, tmp_path):
    """examples/configs: valid, and their models train (one eager epoch on 12 structures)."""
    path = os.path.join(os.path.dirname(__file__), os.pardir, "examples", "configs", f"{name}.yaml")
    values = load_config(path).to_dict()
    values["output_dir"] = str(tmp_path / name)
    values["data"].update(train=str(io_small_xyz), valid_fraction=0.25)
    values["training"].update(max_epochs=1, compile=False)
    config, result = train(values)
    assert result["epochs"] == 1 and np.isfinite(result["best_valid_loss"])
    assert load_model(os.path.join(config.output_dir, MODEL)).model_config == load_config(path).model
