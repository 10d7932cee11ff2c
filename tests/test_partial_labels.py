"""Data sets whose structures carry different labels: crystals with stress beside clusters
without, an isolated atom with an energy and no forces. Each label counts where it is known:
in the loss, its gradient, the metrics, the statistics, the store and `equipot eval`."""

import math

import ase.io
import numpy as np
import pytest
import torch
from ase import Atoms
from ase.build import bulk
from ase.calculators.emt import EMT
from ase.calculators.singlepoint import SinglePointCalculator

from equipot.config import config_from_dict
from equipot.data import DataError, make_batch, read_configurations
from equipot.data.store import ConfigurationStore, write_store
from equipot.evaluate import evaluate_file
from equipot.train import Trainer
from equipot.train.loss import squared_error_terms
from equipot.train.metrics import ErrorAccumulator
from equipot.train.setup import label_coverage

KEYS = {"energy": "energy", "forces": "forces", "stress": "stress"}


def labelled(atoms, keep):
    atoms.calc = EMT()
    results = {"energy": atoms.get_potential_energy(), "forces": atoms.get_forces()}
    if atoms.pbc.any():
        results["stress"] = atoms.get_stress()
    atoms.calc = SinglePointCalculator(atoms, **{k: v for k, v in results.items() if k in keep})
    return atoms


@pytest.fixture(scope="module")
def mixed_xyz(tmp_path_factory):
    """6 Cu crystals (energy, forces, stress), 6 open Cu clusters (energy, forces), 1 isolated
    Cu atom (energy only)."""
    rng = np.random.default_rng(4)
    frames = []
    for k in range(6):
        cell = bulk("Cu", "fcc", a=3.6, cubic=True).repeat((2, 1, 1))
        cell.set_cell(cell.cell * (1.0 + 0.02 * rng.standard_normal()), scale_atoms=True)
        cell.rattle(0.05, seed=k)
        frames.append(labelled(cell, ("energy", "forces", "stress")))
        cluster = Atoms("Cu5", positions=2.5 * np.array([[0, 0, 0], [1, 0, 0], [0, 1, 0], [0, 0, 1], [1, 1, 0]]))
        cluster.rattle(0.08, seed=10 + k)
        frames.append(labelled(cluster, ("energy", "forces")))
    frames.append(labelled(Atoms("Cu", positions=[[0, 0, 0]]), ("energy",)))
    path = tmp_path_factory.mktemp("partial") / "mixed.xyz"
    ase.io.write(str(path), frames, format="extxyz")
    return path


def test_each_structure_keeps_the_labels_it_has(mixed_xyz):
    configs = read_configurations(str(mixed_xyz), keys=KEYS, required=["energy", "forces", "stress"])
    assert len(configs) == 13
    assert label_coverage(configs, ["energy", "forces", "stress"]) == {"energy": 13, "forces": 12, "stress": 6}
    with pytest.raises(DataError, match="'forces' for forces not found"):  # every structure, as asked
        read_configurations(str(mixed_xyz), keys=KEYS, required=["forces"], every=True)


def test_loss_and_its_gradient_count_known_labels_only(mixed_xyz):
    configs = read_configurations(str(mixed_xyz), keys=KEYS)
    graph = make_batch(configs, 4.0)
    assert torch.isnan(graph.targets["stress"]).any() and torch.isnan(graph.targets["forces"]).any()
    rng = np.random.default_rng(0)
    pred = {name: torch.tensor(rng.standard_normal(graph.targets[name].shape), requires_grad=True)
            for name in ("energy", "forces", "stress")}
    weights = config_from_dict({"training": {"loss": {"energy": 1.0, "forces": 10.0, "stress": 5.0}}}).training.loss
    terms = squared_error_terms(pred, graph, weights)
    n_atoms = np.array([c.n_atoms for c in configs])
    e_ref = np.array([float(c.targets["energy"]) for c in configs])
    e_err = (pred["energy"].detach().numpy() - e_ref) / n_atoms
    assert math.isclose(float(terms["energy"][0].detach()), float((e_err**2).sum()), rel_tol=1e-12)
    assert float(terms["energy"][1]) == 13
    start, f_sum, f_count, s_sum, s_count = 0, 0.0, 0, 0.0, 0
    for k, c in enumerate(configs):
        if "forces" in c.targets:
            f_sum += float(((pred["forces"].detach().numpy()[start:start + c.n_atoms] - c.targets["forces"]) ** 2).sum())
            f_count += 3 * c.n_atoms
        if "stress" in c.targets:
            s_sum += float(((pred["stress"].detach().numpy()[k] - c.targets["stress"].reshape(3, 3)) ** 2).sum())
            s_count += 9
        start += c.n_atoms
    assert math.isclose(float(terms["forces"][0].detach()), f_sum, rel_tol=1e-12) and float(terms["forces"][1]) == f_count
    assert math.isclose(float(terms["stress"][0].detach()), s_sum, rel_tol=1e-12) and float(terms["stress"][1]) == s_count
    total = sum(weights.weight(n) * sq / count for n, (sq, count) in terms.items())
    total.backward()
    missing_forces = torch.isnan(graph.targets["forces"]).any(dim=1)
    assert torch.isfinite(pred["forces"].grad).all() and (pred["forces"].grad[missing_forces] == 0).all()
    assert (pred["stress"].grad[torch.isnan(graph.targets["stress"]).flatten(1).any(dim=1)] == 0).all()


def test_metrics_leave_out_missing_labels():
    acc = ErrorAccumulator()
    acc.add_batch({"energy": np.array([1.0, 2.0]), "forces": np.ones((3, 3))},
                  {"energy": np.array([0.5, np.nan]), "forces": np.vstack([np.zeros((2, 3)), np.full((1, 3), np.nan)])},
                  np.array([2, 1]))
    summary = acc.summary()
    assert acc.count["energy"] == 1 and acc.count["forces"] == 6
    assert math.isclose(summary["energy_mae"], 500.0) and math.isclose(summary["forces_rmse"], 1000.0)


def test_training_and_eval_on_mixed_labels(mixed_xyz, tmp_path):
    values = {
        "output_dir": str(tmp_path / "run"), "seed": 2,
        "data": {"train": str(mixed_xyz), "valid_fraction": 0.3, "keys": KEYS},
        "model": {"channels": 4, "lmax": 1, "num_layers": 1, "correlation": 2, "r_max": 4.0,
                  "radial_hidden": [8], "readout_hidden": 4},
        "training": {"batch_size": 4, "max_epochs": 2, "threads": 1, "dtype": "float64",
                     "loss": {"energy": 1.0, "forces": 10.0, "stress": 10.0}},
    }
    trainer = Trainer(config_from_dict(values, "test.yaml"), progress=False)
    result = trainer.run()
    assert result["epochs"] == 2
    last = trainer.history[-1]
    assert all(math.isfinite(float(last[k])) for k in ("train_loss", "valid_loss", "valid_forces_mae", "valid_stress_mae"))
    summary = evaluate_file(trainer.model, str(mixed_xyz), out_dir=str(tmp_path / "eval"), progress=False)
    assert all(math.isfinite(summary[k]) for k in ("energy_mae", "forces_mae", "stress_mae"))
    assert (tmp_path / "eval" / "mixed_parity.png").is_file()


def test_store_keeps_which_structures_are_labelled(mixed_xyz, tmp_path):
    configs = read_configurations(str(mixed_xyz), keys=KEYS)
    path = tmp_path / "mixed.h5"
    write_store(configs, str(path))
    store = ConfigurationStore(str(path))
    store.require(["energy", "forces", "stress"])  # some structures have each
    assert label_coverage(store, ["energy", "forces", "stress"]) == label_coverage(configs, ["energy", "forces", "stress"])
    graph = make_batch([store[k] for k in range(len(store))], 4.0)
    reference = make_batch(configs, 4.0)
    for name in ("energy", "forces", "stress"):
        assert torch.equal(torch.isnan(graph.targets[name]), torch.isnan(reference.targets[name]))
    with pytest.raises(DataError, match="no structure of the store"):
        store.require(["dipole"])


def test_a_crystal_without_a_dipole_beside_molecules_with_one(tmp_path):
    """The model's dipole of a periodic structure is NaN by design; where its label is missing
    the loss and its gradient stay finite."""
    from equipot.config import ModelConfig, OutputConfig
    from equipot.data import Statistics
    from equipot.model import build_model

    torch.manual_seed(0)
    config = ModelConfig(r_max=4.0, channels=4, lmax=1, num_basis=4, radial_hidden=[8], readout_hidden=4,
                         correlation=2, outputs={"dipole": OutputConfig("dipole")})
    stats = Statistics(species=[29], e0={29: 0.0}, energy_shift=0.0, energy_scale=1.0, avg_num_neighbors=8.0)
    model = build_model(config, stats).double()
    cluster = Atoms("Cu5", positions=2.4 * np.array([[0, 0, 0], [1, 0, 0], [0, 1, 0], [0, 0, 1], [1, 1, 0.3]]))
    cluster.info["dipole"] = np.array([0.1, -0.2, 0.05])
    crystal = bulk("Cu", "fcc", a=3.6, cubic=True)
    path = tmp_path / "dipoles.xyz"
    ase.io.write(str(path), [cluster, crystal], format="extxyz")
    fields = model.output_fields
    configs = read_configurations(str(path), keys={"dipole": "dipole"}, required=["dipole"], fields=fields)
    graph = make_batch(configs, 4.0, dtype=torch.float64)
    pred = model(graph, training=True)
    assert torch.isnan(pred["dipole"][1]).all() and torch.isnan(graph.targets["dipole"][1]).all()
    weights = config_from_dict({"model": {"lmax": 1, "outputs": {"dipole": "dipole"}},
                                "training": {"loss": {"energy": 0.0, "forces": 0.0, "outputs": {"dipole": 1.0}}}}).training.loss
    sq, count = squared_error_terms(pred, graph, weights)["dipole"]
    assert float(count) == 3 and torch.isfinite(sq)
    assert math.isclose(float(sq.detach()), float(((pred["dipole"][0].detach() - graph.targets["dipole"][0]) ** 2).sum()), rel_tol=1e-12)
    sq.backward()
    assert all(torch.isfinite(p.grad).all() for p in model.parameters() if p.grad is not None)


def test_isolated_atoms_always_train_and_metrics_without_labels_are_nan(mixed_xyz, tmp_path):
    from equipot.train.setup import read_splits

    for seed in range(6):
        values = {"seed": seed, "data": {"train": str(mixed_xyz), "valid_fraction": 0.3, "keys": KEYS}}
        splits = read_splits(config_from_dict(values))
        assert sum(c.n_atoms == 1 for c in splits.train) == 1 and all(c.n_atoms > 1 for c in splits.valid)
        assert len(splits.valid) == 4 and len(splits.train) == 9
    values["data"]["max_train"] = 2  # the isolated atom and two others
    assert [c.n_atoms for c in read_splits(config_from_dict(values)).train][0] == 1
    assert len(read_splits(config_from_dict(values)).train) == 3
    acc = ErrorAccumulator()
    acc.add_batch({"energy": np.zeros(1), "stress": np.zeros((1, 3, 3))},
                  {"energy": np.ones(1), "stress": np.full((1, 3, 3), np.nan)}, np.array([2]))
    summary = acc.summary()
    assert math.isnan(summary["stress_mae"]) and summary["energy_mae"] == 1000.0
