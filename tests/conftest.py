# ---------------------------------------------------------------------------
# Fixtures for the data / config / training / model-file / CLI tests (prefix io_).
# ---------------------------------------------------------------------------
import copy as _io_copy
import os as _os
from pathlib import Path as _IoPath

import pytest as _io_pytest

IO_SHARED_DATA = _IoPath(__file__).resolve().parents[2] / "shared" / "data"
IO_DEMO_DATA = _IoPath(__file__).resolve().parents[1] / "equipot" / "demo_data"

# A model small enough to train for a few epochs in about a second on one core.
IO_TINY_MODEL = {
    "r_max": 4.0, "num_layers": 1, "channels": 4, "lmax": 1, "correlation": 2,
    "num_basis": 4, "radial_hidden": [8], "readout_hidden": 4,
}


@_io_pytest.fixture(scope="session")
def io_demo_frames():
    """The first 12 acetylacetone structures of the shipped demo data (ase.Atoms)."""
    import ase.io

    return ase.io.read(str(IO_DEMO_DATA / "acac_train.xyz"), index=":12")


@_io_pytest.fixture(scope="session")
def io_small_xyz(tmp_path_factory, io_demo_frames):
    """extxyz file with 12 labelled acac structures (energy, forces)."""
    import ase.io

    path = tmp_path_factory.mktemp("io_data") / "acac12.xyz"
    ase.io.write(str(path), io_demo_frames, format="extxyz")
    return path


@_io_pytest.fixture
def io_config_dict(io_small_xyz, tmp_path):
    """Factory: a config dict for a tiny training run writing into tmp_path/<name>."""

    def make(name="run", **training):
        values = {
            "output_dir": str(tmp_path / name),
            "seed": 3,
            "data": {"train": str(io_small_xyz), "valid_fraction": 0.25,
                     "keys": {"energy": "energy", "forces": "forces"}},
            "model": _io_copy.deepcopy(IO_TINY_MODEL),
            "training": {"batch_size": 4, "valid_batch_size": 10, "max_epochs": 2, "lr": 0.01,
                         "scheduler": "plateau", "ema_decay": 0.99, "threads": 1},
        }
        values["training"].update(training)
        return values

    return make


@_io_pytest.fixture(scope="session")
def io_tiny_model(tmp_path_factory, io_small_xyz):
    """An untrained float64 model file for H, C, O (statistics from the acac structures)."""
    import torch

    from equipot.config import ModelConfig
    from equipot.data import compute_statistics, fit_e0, read_configurations, species_of
    from equipot.model import build_model, save_model

    torch.manual_seed(0)
    configs = read_configurations(str(io_small_xyz))
    species = species_of(configs)
    config = ModelConfig(**IO_TINY_MODEL)
    stats = compute_statistics(configs, config.r_max, fit_e0(configs, species), species)
    model = build_model(config, stats).to(torch.float64)
    path = tmp_path_factory.mktemp("io_model") / "model.safetensors"
    save_model(str(path), model, config, stats)
    return path


@_io_pytest.fixture(scope="module")
def float64_without_einsum_search():
    """float64 default dtype for a module, without the search for einsum contraction orders
    (e3nn's and torch's: they only reorder contractions, the same functions, and cost most
    of the time on tiny test models)."""
    import e3nn
    import torch

    dtype, optimization = torch.get_default_dtype(), e3nn.get_optimization_defaults()
    opt_einsum = torch.backends.opt_einsum.enabled
    torch.set_default_dtype(torch.float64)
    e3nn.set_optimization_defaults(optimize_einsums=False)
    torch.backends.opt_einsum.enabled = False
    yield
    torch.set_default_dtype(dtype)
    e3nn.set_optimization_defaults(**optimization)
    torch.backends.opt_einsum.enabled = opt_einsum


def pytest_configure(config):
    # under pytest-xdist (scripts/test.sh runs two workers on two cores) each worker computes on
    # one thread; tests that need more threads set them themselves
    if _os.environ.get("PYTEST_XDIST_WORKER"):
        import torch

        torch.set_num_threads(1)


@_io_pytest.fixture(scope="session", autouse=True)
def _fresh_inductor_cache(tmp_path_factory):
    """Compiled tests build their code afresh, in a folder of this run, not in the user's cache."""
    import os

    saved = {k: os.environ.get(k) for k in ("EQUIPOT_CACHE_DIR", "TORCHINDUCTOR_CACHE_DIR")}
    os.environ["EQUIPOT_CACHE_DIR"] = str(tmp_path_factory.mktemp("equipot-cache"))
    os.environ.pop("TORCHINDUCTOR_CACHE_DIR", None)
    yield
    for key, value in saved.items():
        if value is None:
            os.environ.pop(key, None)
        else:
            os.environ[key] = value
