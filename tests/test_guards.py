"""Guards against silent mistakes: resume with another config, overwriting a run, weight decay
on the energy shift, labels rounded to float32, loss weights, cells."""

import numpy as np
import pytest
import torch
from ase import Atoms

from equipot.config import ConfigError, config_from_dict
from equipot.data import DataError, atoms_to_configuration, make_batch, neighbor_list
from equipot.train import CheckpointError, Trainer


def test_resume_refuses_a_changed_config(io_config_dict):
    Trainer(config_from_dict(io_config_dict("r", max_epochs=1)), progress=False).run()
    changed = io_config_dict("r", max_epochs=2, lr=0.002)
    with pytest.raises(CheckpointError, match="training.lr"):
        Trainer(config_from_dict(changed), progress=False).run(resume=True)
    # max_epochs alone may change
    result = Trainer(config_from_dict(io_config_dict("r", max_epochs=2)), progress=False).run(resume=True)
    assert result["epochs"] == 2


def test_resume_a_checkpoint_written_before_a_config_key_existed(io_config_dict, tmp_path):
    """A checkpoint whose saved config lacks a key added later (here model.product_mixing)
    resumes when the key has its default, and still refuses when it does not."""
    import json
    import os

    from equipot.train import CHECKPOINT
    from equipot.train.checkpoint import load_checkpoint, save_checkpoint

    values = io_config_dict("k", max_epochs=1)
    Trainer(config_from_dict(values), progress=False).run()
    path = os.path.join(values["output_dir"], CHECKPOINT)
    state = load_checkpoint(path)
    saved = json.loads(state["config"])
    del saved["model"]["product_mixing"]
    state["config"] = json.dumps(saved)
    save_checkpoint(path, state)
    result = Trainer(config_from_dict(io_config_dict("k", max_epochs=2)), progress=False).run(resume=True)
    assert result["epochs"] == 2
    mixing = io_config_dict("k", max_epochs=3)
    mixing["model"]["product_mixing"] = True
    with pytest.raises(CheckpointError, match="model.product_mixing"):
        Trainer(config_from_dict(mixing), progress=False).run(resume=True)


def test_resume_a_checkpoint_written_when_a_layer_used_e3nns_product(io_config_dict):
    """Checkpoints from before a layer's edge product became our kernel hold e3nn's constants
    (output mask, empty weight): they resume; a real unknown weight is refused clearly."""
    import os

    from equipot.train import CHECKPOINT
    from equipot.train.checkpoint import load_checkpoint, save_checkpoint

    values = io_config_dict("e3", max_epochs=1)
    Trainer(config_from_dict(values), progress=False).run()
    path = os.path.join(values["output_dir"], CHECKPOINT)
    state = load_checkpoint(path)
    state["model"]["energy_model.layers.1.conv.output_mask"] = torch.ones(8)
    state["model"]["energy_model.layers.1.conv.weight"] = torch.zeros(0)
    save_checkpoint(path, state)
    result = Trainer(config_from_dict(io_config_dict("e3", max_epochs=2)), progress=False).run(resume=True)
    assert result["epochs"] == 2
    state = load_checkpoint(path)
    state["model"]["energy_model.layers.1.conv.weight"] = torch.ones(3)
    save_checkpoint(path, state)
    with pytest.raises(CheckpointError, match="do not fit"):
        Trainer(config_from_dict(io_config_dict("e3", max_epochs=3)), progress=False).run(resume=True)


def test_a_new_run_does_not_overwrite_an_old_one(io_config_dict):
    Trainer(config_from_dict(io_config_dict("o", max_epochs=1)), progress=False).run()
    with pytest.raises(ConfigError, match="--resume"):
        Trainer(config_from_dict(io_config_dict("o", max_epochs=1)), progress=False).run()
    Trainer(config_from_dict(io_config_dict("o", max_epochs=1)), progress=False).run(overwrite=True)


def test_weight_decay_spares_the_energy_shift(io_config_dict):
    trainer = Trainer(config_from_dict(io_config_dict("wd", optimizer="adamw", weight_decay=0.5)), progress=False)
    trainer._setup(resume=False)
    shift = trainer.model.energy_model.atomic_shift
    groups = trainer.optimizer.param_groups
    assert any(any(p is shift for p in g["params"]) and g["weight_decay"] == 0.0 for g in groups)
    assert any(g["weight_decay"] == 0.5 and len(g["params"]) > 0 for g in groups)


def test_labels_stay_float64_when_the_model_is_float32(io_demo_frames):
    config = atoms_to_configuration(io_demo_frames[0], {"energy": "energy", "forces": "forces"}, ["energy"])
    graph = make_batch([config], 5.0).to(dtype=torch.float32)
    assert graph.positions.dtype == torch.float32
    assert graph.targets["energy"].dtype == torch.float64
    assert float(graph.targets["energy"][0]) == float(config.targets["energy"])


@pytest.mark.parametrize("loss, message", [({"energy": -1.0}, "negative"),
                                           ({"energy": 0.0, "forces": 0.0}, "at least one")])
def test_loss_weights_are_checked(loss, message):
    with pytest.raises(ConfigError, match=message):
        config_from_dict({"data": {"train": "x.xyz"}, "training": {"loss": loss}})


def test_unknown_unit_is_a_config_error():
    with pytest.raises(ConfigError, match="energy_unit"):
        config_from_dict({"data": {"train": "x.xyz", "energy_unit": "hartree"}})


def test_mixed_pbc_cell_is_judged_by_its_periodic_vectors():
    positions = np.array([[0.0, 0.0, 0.0], [0.0, 1.2, 0.0]])
    cell = np.array([[0.0, 5.0, 0.0], [0.0, 0.0, 0.0], [0.0, 0.0, 0.0]])  # periodic along y only
    src, dst, shift = neighbor_list(positions, cell, np.array([True, False, False]), 4.0)
    assert len(src) == 4  # the pair at 1.2 Å and its image at 3.8 Å along y
    atoms = Atoms("H2", positions=positions, pbc=True)  # periodic but no cell
    with pytest.raises(DataError, match="cell is missing"):
        atoms_to_configuration(atoms, {}, [], source="f.xyz, frame 0")


def test_e0_fit_warns_when_compositions_cannot_separate_elements(io_demo_frames):
    from equipot.data import fit_e0, species_of

    configs = [atoms_to_configuration(a, {"energy": "energy"}, ["energy"]) for a in io_demo_frames[:5]]
    with pytest.warns(UserWarning, match="do not determine one E0 per element"):
        fit_e0(configs, species_of(configs))
