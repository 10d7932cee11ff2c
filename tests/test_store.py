"""The on-disk store: conversion, reading on demand, and training from it."""

import os

import numpy as np
import pytest
import torch
import yaml

from equipot.cli import main
from equipot.config import config_from_dict
from equipot.data import DataError, read_configurations
from equipot.data import store as store_module
from equipot.data.store import ConfigurationStore, Subset, write_store
from equipot.train import CHECKPOINT, Trainer, load_checkpoint


def assert_same_configuration(a, b):
    np.testing.assert_array_equal(a.numbers, b.numbers)
    for name in ("positions", "cell", "pbc"):
        np.testing.assert_array_equal(getattr(a, name), getattr(b, name))
    assert a.total_charge == b.total_charge
    assert sorted(a.targets) == sorted(b.targets)
    for name in a.targets:
        np.testing.assert_array_equal(np.asarray(a.targets[name]).reshape(-1), np.asarray(b.targets[name]).reshape(-1))


def test_convert_and_read_back(io_small_xyz, io_config_dict, tmp_path):
    values = io_config_dict("conv")
    cfg = tmp_path / "conv.yaml"
    cfg.write_text(yaml.safe_dump(values))
    out = tmp_path / "data.h5"
    assert main(["convert", str(cfg), str(out), "--quiet"]) == 0
    stored = ConfigurationStore(str(out))
    original = read_configurations(str(io_small_xyz))
    assert len(stored) == len(original) == 12
    for k in (0, 5, 11, -1):
        assert_same_configuration(stored[k], original[k])
    assert "structure 11" in stored[-1].source
    assert isinstance(stored[2:7], Subset) and len(stored[2:7]) == 5
    assert_same_configuration(stored[2:7][1], original[3])
    with pytest.raises(IndexError):
        stored[12]
    assert stored.species() == [1, 6, 8]


def test_labels_some_structures_lack(tmp_path, io_small_xyz, monkeypatch):
    """Chunks of 3: energy first met in the second chunk (written back as absent for the
    first), stress on some structures only and absent from the first chunk."""
    monkeypatch.setattr(store_module, "CHUNK", 3)
    configs = read_configurations(str(io_small_xyz))[:8]
    for k, c in enumerate(configs):
        if k < 3:
            c.targets.pop("energy")
        if k in (4, 5, 7):
            c.targets["stress"] = np.full((3, 3), 0.1 * k)
    path = tmp_path / "mixed.h5"
    assert write_store(configs, str(path)) == 8
    stored = ConfigurationStore(str(path))
    for a, b in zip(stored, configs):
        assert_same_configuration(a, b)
    assert "energy" not in stored[1].targets and "stress" not in stored[6].targets
    assert not os.path.exists(f"{path}.tmp")


def test_training_from_the_store_equals_training_from_the_file(io_config_dict, tmp_path):
    from_file = io_config_dict("from_file", dtype="float64")
    cfg = tmp_path / "a.yaml"
    cfg.write_text(yaml.safe_dump(from_file))
    store = tmp_path / "train.h5"
    assert main(["convert", str(cfg), str(store), "--quiet"]) == 0
    from_store = io_config_dict("from_store", dtype="float64")
    from_store["data"]["train"] = str(store)
    for values in (from_file, from_store):
        Trainer(config_from_dict(values, "test.yaml"), progress=False).run()
    a = load_checkpoint(os.path.join(from_file["output_dir"], CHECKPOINT))
    b = load_checkpoint(os.path.join(from_store["output_dir"], CHECKPOINT))
    assert a["statistics"] == b["statistics"]
    for key in a["model"]:
        assert torch.equal(a["model"][key], b["model"][key]), key


def test_store_errors(io_config_dict, io_small_xyz, tmp_path):
    with pytest.raises(DataError, match="not found"):
        ConfigurationStore(str(tmp_path / "missing.h5"))
    bad = tmp_path / "bad.h5"
    bad.write_bytes(b"not hdf5 at all")
    with pytest.raises(DataError, match="unreadable HDF5"):
        ConfigurationStore(str(bad))
    import h5py

    other = tmp_path / "other.h5"
    with h5py.File(other, "w") as f:
        f.create_dataset("x", data=[1, 2])
    with pytest.raises(DataError, match="not an equipot store"):
        ConfigurationStore(str(other))
    # a store without forces, for a run that needs them
    configs = read_configurations(str(io_small_xyz))
    for c in configs:
        c.targets.pop("forces")
    write_store(configs, str(tmp_path / "e.h5"))
    values = io_config_dict("needs_forces")
    values["data"]["train"] = str(tmp_path / "e.h5")
    with pytest.raises(DataError, match="forces labels"):
        Trainer(config_from_dict(values, "test.yaml"), progress=False).run()
