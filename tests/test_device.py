"""The same numbers on a GPU as on the CPU: training, the calculator, long range, compile.

Every test here needs CUDA and is skipped without it (the project's CPU machines skip the whole
module); `bash scripts/device_check.sh` runs it on a machine with a GPU. float64 throughout,
except the compiled float32 check, so that agreement can be asked to near rounding.
"""

import ase.build
import numpy as np
import pytest
import torch

from equipot import EquipotCalculator
from equipot.config import config_from_dict
from equipot.train import Trainer

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")


def periodic_acac(frames, copies=2):
    """A periodic box of acac molecules, rattled (stress and images across the cell)."""
    atoms = frames[0].copy()
    atoms.set_cell(np.eye(3) * 9.0)
    atoms.pbc = True
    atoms = atoms.repeat((copies, 1, 1))
    atoms.rattle(0.02, seed=1)
    return atoms


def results(atoms, model, device, **kwargs):
    """Energy, forces and stress of ``atoms`` from ``model`` (a model file or a Potential), float64."""
    atoms = atoms.copy()
    model = model if isinstance(model, torch.nn.Module) else str(model)
    atoms.calc = EquipotCalculator(model, device=device, dtype="float64", **kwargs)
    return atoms.get_potential_energy(), atoms.get_forces(), atoms.get_stress()


def test_calculator_on_the_gpu_equals_the_cpu(io_tiny_model, io_demo_frames):
    atoms = periodic_acac(io_demo_frames)
    e_cpu, f_cpu, s_cpu = results(atoms, io_tiny_model, "cpu")
    e_gpu, f_gpu, s_gpu = results(atoms, io_tiny_model, "cuda")
    assert e_gpu == pytest.approx(e_cpu, rel=1e-10, abs=1e-10)
    np.testing.assert_allclose(f_gpu, f_cpu, rtol=1e-8, atol=1e-10)
    np.testing.assert_allclose(s_gpu, s_cpu, rtol=1e-8, atol=1e-10)


def test_training_on_the_gpu_follows_the_cpu(io_config_dict):
    """Two epochs in float64 from the same seed: the same weights' path, so the same metrics."""
    histories = {}
    for device in ("cpu", "cuda"):
        values = io_config_dict(f"run-{device}", device=device, dtype="float64", max_epochs=2)
        Trainer(config_from_dict(values, "test.yaml"), progress=False).run()
        histories[device] = open(f"{values['output_dir']}/metrics.csv").read().splitlines()
    header = histories["cpu"][0].split(",")
    for row_cpu, row_gpu in zip(histories["cpu"][1:], histories["cuda"][1:]):
        for name, a, b in zip(header, row_cpu.split(","), row_gpu.split(",")):
            if name != "wall_s":
                assert float(b) == pytest.approx(float(a), rel=1e-6, abs=1e-9), name


def test_long_range_model_on_the_gpu_equals_the_cpu():
    from test_long_range import lr_model  # the long-range model of its own tests (Ewald at this size)

    salt = ase.build.bulk("NaCl", "rocksalt", a=5.64, cubic=True).repeat(2)
    salt.rattle(0.05, seed=2)
    e_cpu, f_cpu, s_cpu = results(salt, lr_model(), "cpu")
    e_gpu, f_gpu, s_gpu = results(salt, lr_model(), "cuda")
    assert e_gpu == pytest.approx(e_cpu, rel=1e-9)
    np.testing.assert_allclose(f_gpu, f_cpu, rtol=1e-7, atol=1e-9)
    np.testing.assert_allclose(s_gpu, s_cpu, rtol=1e-7, atol=1e-9)


def test_compiled_float32_on_the_gpu_follows_the_eager_model(io_tiny_model, io_demo_frames):
    atoms = periodic_acac(io_demo_frames)
    forces = {}
    for compiled in (False, True):
        a = atoms.copy()
        a.calc = EquipotCalculator(str(io_tiny_model), device="cuda", dtype="float32", compile=compiled)
        forces[compiled] = a.get_forces()
    scale = np.abs(forces[False]).max()
    np.testing.assert_allclose(forces[True], forces[False], atol=1e-4 * scale)
