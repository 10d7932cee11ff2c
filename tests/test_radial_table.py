"""Tabulated radial networks (RadialTable, EnergyModel.tabulate_radial), float64.

A table replaces a function of the edge length by cubic pieces: it must stay within its
tolerance of the function and of its slope, vanish beyond the cutoff, and, in a model, give the
energies, forces and stress of the networks it replaces, stay equivariant and conservative,
follow the weights when they change, stay out of training and out of model files.
"""

import copy

import numpy as np
import pytest
import torch

from equipot.config import ModelConfig
from equipot.data import Statistics, to_graph
from equipot.model import build_model, load_model, save_model
from equipot.nn import RadialEmbedding, RadialTable

from equivariance import check_potential_equivariance, random_structure, triclinic_cell

R_MAX = 3.0


@pytest.fixture(scope="module")
def model(float64_without_einsum_search):
    config = ModelConfig(r_max=R_MAX, num_layers=2, channels=4, lmax=2, parity="both", correlation=2,
                         num_basis=6, radial_hidden=[16], readout_hidden=4)
    stats = Statistics(species=[1, 6, 8], e0={1: -13.6, 6: -1029.5, 8: -2041.3}, energy_shift=-0.3,
                       energy_scale=0.8, avg_num_neighbors=6.0)
    torch.manual_seed(0)
    model = build_model(config, stats, torch.float64)
    model.model_config, model.statistics = config, stats
    return model.eval()


def _structures():
    rng = np.random.default_rng(7)
    return [random_structure(rng, 7, cell=triclinic_cell(rng, length=3.4)), random_structure(rng, 8, box=3.0)]


def _outputs(model, config):
    out = model(to_graph(config, R_MAX).to(dtype=model.dtype))
    return {k: v.detach() for k, v in out.items()}


def _radial_function():
    """A model-like radial function: Bessel basis with envelope, through a small random MLP."""
    torch.manual_seed(3)
    embedding = RadialEmbedding(R_MAX, 6).double()
    weights = torch.randn(6, 5, dtype=torch.float64)
    return lambda r: torch.tanh(embedding(r) @ weights)


def test_table_is_within_its_tolerance_of_the_function_and_its_slope():
    fn = _radial_function()
    coarse = RadialTable(fn, R_MAX, torch.float64, tolerance=1e-5)
    fine = RadialTable(fn, R_MAX, torch.float64, tolerance=1e-9)
    assert coarse.error <= 1e-5 and fine.error <= 1e-9
    assert fine.intervals > coarse.intervals
    r = torch.cat([torch.rand(2000, dtype=torch.float64) * R_MAX, torch.tensor([0.0, 1e-6, R_MAX * (1 - 1e-12)],
                                                                              dtype=torch.float64)])
    r.requires_grad_(True)
    exact = fn(r)
    exact_slope = torch.stack([torch.autograd.grad(exact[:, c].sum(), r, retain_graph=True)[0]
                               for c in range(exact.shape[1])], dim=1)
    knots = torch.linspace(0, R_MAX, 4097, dtype=torch.float64)[1:]
    scale = fn(knots).detach().abs().max()
    for table, tolerance in ((coarse, 1e-5), (fine, 1e-9)):
        value = table(r)
        slope = torch.stack([torch.autograd.grad(value[:, c].sum(), r, retain_graph=True)[0]
                             for c in range(value.shape[1])], dim=1)
        # checked between the knots at three points per piece: allow twice that here
        finite = torch.isfinite(exact).all(dim=1)  # the Bessel basis is 0/0 at r = 0 itself
        value, slope = value.detach(), slope.detach()
        assert float((value - exact.detach())[finite].abs().max()) <= 2 * tolerance * float(scale)
        slope_scale = exact_slope[finite].abs().max()
        assert float((slope - exact_slope)[finite].abs().max()) <= 2 * tolerance * float(slope_scale)
        assert torch.isfinite(value).all() and torch.isfinite(slope).all()
    # zero at and beyond the cutoff, as the networks are
    beyond = torch.tensor([R_MAX, R_MAX + 0.1, 2 * R_MAX], dtype=torch.float64)
    assert float(fine(beyond).abs().max()) == 0.0


def test_table_too_large_for_its_tolerance_is_refused():
    with pytest.raises(ValueError, match="needs more than"):
        RadialTable(_radial_function(), R_MAX, torch.float64, tolerance=1e-12, max_bytes=2**16)


def test_tables_over_their_size_limit_leave_the_networks(model):
    tabulated = copy.deepcopy(model)
    with pytest.raises(ValueError, match="needs more than"):
        tabulated.energy_model.tabulate_radial(1e-7, max_bytes=4096)
    assert not tabulated.energy_model.radial_tabulated
    assert all(layer.radial_table is None for layer in tabulated.energy_model.layers)


def test_tabulated_model_gives_the_networks_results(model):
    tabulated = copy.deepcopy(model)
    tabulated.energy_model.tabulate_radial(1e-9)
    assert tabulated.energy_model.radial_tabulated
    for config in _structures():
        want, got = _outputs(model, config), _outputs(tabulated, config)
        for key in ("energy", "energies", "forces", "stress"):
            scale = float(want[key].abs().max()) or 1.0
            torch.testing.assert_close(got[key], want[key], rtol=0, atol=1e-7 * scale, msg=key)
        assert not torch.equal(got["forces"], want["forces"])  # the table is in use


def test_tabulated_model_is_equivariant_and_conservative(model):
    tabulated = copy.deepcopy(model)
    tabulated.energy_model.tabulate_radial(1e-7)
    for config in _structures():
        check_potential_equivariance(tabulated, config, R_MAX)
    # forces are minus the gradient of the tabulated energy (finite differences of it)
    config = _structures()[1]
    forces = _outputs(tabulated, config)["forces"].numpy()
    step = 1e-5
    for atom, axis in [(0, 0), (3, 1), (6, 2)]:
        energies = []
        for sign in (1, -1):
            moved = copy.deepcopy(config)
            moved.positions = config.positions.copy()
            moved.positions[atom, axis] += sign * step
            energies.append(float(_outputs(tabulated, moved)["energy"][0]))
        assert abs(-(energies[0] - energies[1]) / (2 * step) - forces[atom, axis]) < 1e-6 * max(1.0, abs(forces).max())


def test_training_mode_uses_the_networks(model):
    tabulated = copy.deepcopy(model)
    tabulated.energy_model.tabulate_radial(1e-7)
    tabulated.train()
    assert not tabulated.energy_model.radial_tabulated
    config = _structures()[0]
    graph = to_graph(config, R_MAX)
    out = tabulated(graph, training=True)
    (out["forces"] ** 2).sum().backward()
    assert all(p.grad is not None and p.grad.abs().max() > 0 for p in tabulated.energy_model.layers[0].radial.parameters())
    want = model(graph, training=True)  # the networks' results, to rounding
    torch.testing.assert_close(out["forces"].detach(), want["forces"].detach(), rtol=1e-12, atol=1e-14)


def test_tables_follow_changed_weights(model):
    tabulated = copy.deepcopy(model)
    tabulated.energy_model.tabulate_radial(1e-9)
    first = tabulated.energy_model.layers[0].radial_table
    with torch.no_grad():
        for p in tabulated.energy_model.layers[0].radial.parameters():
            p.mul_(1.5)
    changed = copy.deepcopy(tabulated)
    changed.energy_model.untabulate_radial()
    config = _structures()[0]
    got, want = _outputs(tabulated, config), _outputs(changed, config)
    assert tabulated.energy_model.layers[0].radial_table is not first  # rebuilt at the call
    scale = float(want["forces"].abs().max())
    torch.testing.assert_close(got["forces"], want["forces"], rtol=0, atol=1e-7 * scale)
    # and a change of dtype
    tabulated.to(torch.float32)
    _outputs(tabulated, config)
    assert tabulated.energy_model.layers[0].radial_table.coeffs.dtype == torch.float32


def test_tables_stay_out_of_model_files(model, tmp_path):
    tabulated = copy.deepcopy(model)
    tabulated.energy_model.tabulate_radial(1e-7)
    assert tabulated.state_dict().keys() == model.state_dict().keys()
    path = str(tmp_path / "model.safetensors")
    save_model(path, tabulated, model.model_config, model.statistics)
    loaded = load_model(path)
    assert not loaded.energy_model.radial_tabulated


def test_calculator_tabulates_compiled_float32_models(model):
    from ase import Atoms

    from equipot import EquipotCalculator

    def tabulated(**kwargs):
        return EquipotCalculator(copy.deepcopy(model), **kwargs).model.energy_model.radial_tabulated

    # by default where the tables pay: compiled float32 (constructing compiles nothing)
    assert tabulated(dtype="float32", compile=True)
    assert not tabulated(dtype="float32", compile=True, tabulate=False)
    assert not tabulated(dtype="float32") and not tabulated() and not tabulated(compile=True)
    config = _structures()[1]
    atoms = Atoms(numbers=config.numbers, positions=config.positions)
    forces = EquipotCalculator(copy.deepcopy(model)).get_forces(atoms)
    for tabulate in (True, False):
        calc = EquipotCalculator(copy.deepcopy(model), dtype="float32", tabulate=tabulate)
        assert calc.model.energy_model.radial_tabulated == tabulate
        assert abs(calc.get_forces(atoms) - forces).max() < 1e-5 * abs(forces).max()
