"""The baselines of the data-efficiency benchmark: the non-equivariant Cartesian network and
the random-rotation augmentation it is trained with (float64)."""

import copy
import os

import numpy as np
import pytest
import torch

from equivariance import random_structure, triclinic_cell
from test_training import assert_same_state, train

from equipot.config import ConfigError, ModelConfig, config_from_dict
from equipot.data import Configuration, to_graph
from equipot.data.statistics import Statistics
from equipot.graph import batch_graphs
from equipot.model import build_model, load_model, save_model
from equipot.train import CHECKPOINT, MODEL, load_checkpoint
from equipot.train.augment import random_rotations, rotate_graph

R_MAX = 3.0


@pytest.fixture(scope="module")
def models(float64_without_einsum_search):
    stats = Statistics(species=[1, 6, 8], e0={1: -13.6, 6: -1029.5, 8: -2041.3}, energy_shift=-0.3,
                       energy_scale=0.9, avg_num_neighbors=5.0)
    out = {}
    for architecture in ("equivariant", "cartesian"):
        torch.manual_seed(1)
        config = ModelConfig(architecture=architecture, r_max=R_MAX, num_layers=2, channels=4, lmax=1,
                             num_basis=5, radial_hidden=[8], readout_hidden=4)
        out[architecture] = (build_model(config, stats).to(torch.float64).eval(), config, stats)
    return out


def structures():
    rng = np.random.default_rng(5)
    return [random_structure(rng, 6, cell=triclinic_cell(rng, length=3.6)), random_structure(rng, 7, box=3.0)]


def rotated(config: Configuration, rotation: np.ndarray) -> Configuration:
    return Configuration(config.numbers, config.positions @ rotation.T, config.cell @ rotation.T, config.pbc)


def test_random_rotations_are_proper_and_seeded():
    r = random_rotations(50, torch.Generator().manual_seed(3))
    eye = torch.eye(3, dtype=r.dtype).expand(50, 3, 3)
    torch.testing.assert_close(r @ r.transpose(1, 2), eye, rtol=0, atol=1e-12)
    torch.testing.assert_close(torch.linalg.det(r), torch.ones(50, dtype=r.dtype), rtol=0, atol=1e-12)
    assert torch.equal(r, random_rotations(50, torch.Generator().manual_seed(3)))
    # spread over SO(3): the mean of a uniform sample of rotation matrices is zero
    assert float(random_rotations(4000, torch.Generator().manual_seed(4)).mean(0).abs().max()) < 0.05


def test_cartesian_model_is_not_rotation_invariant_but_the_equivariant_one_is(models):
    rotation = random_rotations(1, torch.Generator().manual_seed(7))[0].numpy()
    for config in structures():
        energies = {}
        for name, (model, _, _) in models.items():
            shift = model.energy_model.atomic_shift.detach()[model.species_index(torch.as_tensor(config.numbers))].sum()
            energies[name] = [float(model(to_graph(c, R_MAX).to(dtype=torch.float64))["energy"][0].detach() - shift)
                              for c in (config, rotated(config, rotation))]
        a, b = energies["equivariant"]
        assert abs(a - b) <= 1e-10 * abs(a)
        a, b = energies["cartesian"]
        assert abs(a - b) > 1e-3 * abs(a), "the baseline must see orientations (it learns invariance from data)"


@pytest.mark.parametrize("architecture", ["equivariant", "cartesian"])
def test_rotate_graph_moves_positions_cell_and_labels_together(models, architecture):
    """With labels that are a model's own predictions, the rotated batch's labels are exactly
    the equivariant model's predictions on the rotated structures; for any model, rotating
    the inputs by hand and through rotate_graph gives the same predictions."""
    model = models["equivariant"][0]
    graphs = []
    for config in structures():
        g = to_graph(config, R_MAX).to(dtype=torch.float64)
        out = model(g)
        g.targets = {"energy": out["energy"].detach(), "forces": out["forces"].detach(),
                     "stress": out["stress"].detach()}
        graphs.append(g)
    batch = batch_graphs(graphs)
    rotations = random_rotations(2, torch.Generator().manual_seed(11))
    moved = rotate_graph(batch, rotations)
    out = model(moved)
    for key in ("energy", "forces", "stress"):
        torch.testing.assert_close(out[key].detach(), moved.targets[key], rtol=1e-9, atol=1e-11, msg=key)
    assert not torch.allclose(moved.targets["forces"], batch.targets["forces"])
    # by hand: rotate each structure's coordinates and cell, build its neighbour list again
    test_model = models[architecture][0]
    by_hand = batch_graphs([to_graph(rotated(c, r.numpy()), R_MAX).to(dtype=torch.float64)
                            for c, r in zip(structures(), rotations)])
    a, b = test_model(moved), test_model(by_hand)
    torch.testing.assert_close(a["energy"], b["energy"], rtol=1e-10, atol=1e-10)


def test_rotation_augmentation_refuses_labels_it_cannot_rotate(models):
    g = to_graph(structures()[1], R_MAX)
    g.targets = {"energy": torch.zeros(1), "dipole": torch.zeros(1, 3)}
    with pytest.raises(ValueError, match="dipole"):
        rotate_graph(g, torch.eye(3)[None])


def test_cartesian_model_file_round_trip(models, tmp_path):
    model, config, stats = models["cartesian"]
    save_model(str(tmp_path / "m.safetensors"), model, config, stats)
    loaded = load_model(str(tmp_path / "m.safetensors"), dtype=torch.float64)
    assert loaded.model_config.architecture == "cartesian"
    g = to_graph(structures()[0], R_MAX).to(dtype=torch.float64)
    torch.testing.assert_close(loaded(g)["forces"], model(g)["forces"], rtol=0, atol=0)


def test_config_errors_name_the_conflict(io_config_dict):
    values = io_config_dict()
    values["model"]["architecture"] = "cartesan"
    with pytest.raises(ConfigError, match="architecture"):
        config_from_dict(values, "c.yaml")
    values = io_config_dict()
    values["model"].update(architecture="cartesian", outputs={"dipole": "dipole"})
    with pytest.raises(ConfigError, match="cartesian.*energies, forces and stress only"):
        config_from_dict(values, "c.yaml")
    values = io_config_dict(augment_rotations=True)
    values["model"]["outputs"] = {"dipole": "dipole"}
    with pytest.raises(ConfigError, match="augment_rotations"):
        config_from_dict(values, "c.yaml")


def test_augmented_cartesian_training_learns_and_resumes_exactly(io_config_dict):
    def values(name, epochs):
        v = io_config_dict(name, max_epochs=epochs, augment_rotations=True)
        v["model"]["architecture"] = "cartesian"
        return v

    straight, result = train(values("straight", 3))
    history = load_checkpoint(os.path.join(straight.output_dir, CHECKPOINT))
    train(values("resumed", 1))
    resumed, _ = train(values("resumed", 3), resume=True)
    a = load_checkpoint(os.path.join(straight.output_dir, CHECKPOINT))
    b = load_checkpoint(os.path.join(resumed.output_dir, CHECKPOINT))
    assert_same_state(a, b)
    # augmentation is on: the same run without it follows another path
    plain = io_config_dict("plain", max_epochs=3)
    plain["model"]["architecture"] = "cartesian"
    config, _ = train(plain)
    c = load_checkpoint(os.path.join(config.output_dir, CHECKPOINT))
    assert any(not torch.equal(a["model"][k], c["model"][k]) for k in a["model"])
    assert load_model(os.path.join(straight.output_dir, MODEL)).model_config.architecture == "cartesian"
    assert history["epoch"] == 3
