"""The traced and compiled evaluation (equipot.model.compiled) against the eager model, float64.

One compiled graph must serve batches of other sizes (symbolic shapes), and give the same
energies, forces, stress and typed outputs, and the same gradients of a loss on forces and stress
(the trace turns the force pass into ordinary operations, so this checks the second derivatives).
"""

import numpy as np
import pytest
import torch

from equipot.config import ModelConfig, OutputConfig
from equipot.data import Statistics, make_batch
from equipot.model import build_model
from equipot.model.compiled import CompiledPotential

from equivariance import random_structure, triclinic_cell

R_MAX = 3.0


@pytest.fixture(scope="module")
def model(float64_without_einsum_search):
    outputs = {"dipole": OutputConfig("dipole"), "chirality": OutputConfig("0o")}
    # one layer: each compile of a two-layer model costs minutes here, and one layer has every
    # kind of operation (edge kernel, node products, gate, readout, heads, the derivative pass)
    config = ModelConfig(r_max=R_MAX, num_layers=1, channels=4, lmax=1, parity="both", correlation=2,
                         num_basis=4, radial_hidden=[8], readout_hidden=4, outputs=outputs)
    stats = Statistics(species=[1, 6, 8], e0={1: -13.6, 6: -1029.5, 8: -2041.3}, energy_shift=-0.3,
                       energy_scale=0.8, avg_num_neighbors=6.0)
    torch.manual_seed(0)
    return build_model(config, stats, torch.float64)


def _batch(rng, sizes, periodic):
    configs = [random_structure(rng, n, cell=triclinic_cell(rng) if periodic else None) for n in sizes]
    return make_batch(configs, R_MAX)


def _loss_and_gradients(evaluate, model, graph):
    model.zero_grad(set_to_none=True)
    out = evaluate(graph, training=True)
    loss = (out["forces"] ** 2).sum() + (out["stress"] ** 2).sum() + out["energy"].sum() + out["chirality"].sum()
    loss.backward()
    return out, [torch.zeros_like(p) if p.grad is None else p.grad.clone() for p in model.parameters()]


def test_compiled_equals_eager_for_batches_of_other_sizes(model):
    rng = np.random.default_rng(4)
    compiled = CompiledPotential(model)
    batches = [([5, 7, 6], True), ([9, 4, 6, 3], True), ([6, 9], False), ([8, 5], True)]
    for sizes, periodic in batches:
        graph = _batch(rng, sizes, periodic)
        got, got_grads = _loss_and_gradients(compiled, model, graph)
        want, want_grads = _loss_and_gradients(model, model, graph)
        keys = ["energy", "energies", "forces", "virial", "stress", "chirality"] + ([] if periodic else ["dipole"])
        for key in keys:
            torch.testing.assert_close(got[key], want[key], rtol=1e-10, atol=1e-12, msg=key)
        for g, w in zip(got_grads, want_grads):
            torch.testing.assert_close(g, w, rtol=1e-8, atol=1e-10)
    # every batch (2 to 4 structures; other atom, edge and slot counts; open or periodic) took one trace
    assert len(compiled._graphs) == 1


def test_compiled_calculator_equals_eager(model):
    from ase.build import molecule

    from equipot import EquipotCalculator

    eager = EquipotCalculator(model)
    compiled = EquipotCalculator(model, compile=True)
    atoms = molecule("CH3CH2OH")
    atoms.center(vacuum=3.0)
    atoms.pbc = True
    for step in range(2):  # a second geometry takes the same compiled graph
        atoms.positions += 0.05 * np.random.default_rng(step).normal(size=atoms.positions.shape)
        compiled.calculate(atoms.copy(), ["energy", "forces", "stress"])
        eager.calculate(atoms.copy(), ["energy", "forces", "stress"])
        for key in ("energy", "forces", "stress", "energies"):
            np.testing.assert_allclose(compiled.results[key], eager.results[key], rtol=1e-10, atol=1e-12)
    assert len(compiled.evaluate._graphs) == 1


def test_training_compile_option(io_config_dict):
    from equipot.config import config_from_dict
    from equipot.train import Trainer

    trainer = Trainer(config_from_dict(io_config_dict(compile=True), "test"), progress=False)
    trainer._setup(resume=False)
    assert isinstance(trainer.evaluate, CompiledPotential) and trainer.evaluate.potential is trainer.model


def test_long_range_models_are_refused():
    class LongRange:
        long_range = object()

    with pytest.raises(ValueError, match="long-range"):
        CompiledPotential(LongRange())
