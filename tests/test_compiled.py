"""The traced and compiled evaluation (equipot.model.compiled) against the eager model, float64.

One compiled graph must serve batches of other sizes (symbolic shapes), and give the same
energies, forces, stress and typed outputs, and the same gradients of a loss on forces and stress
(the trace turns the force pass into ordinary operations, so this checks the second derivatives).
"""

import copy
import dataclasses
import os

import numpy as np
import pytest
import torch

from equipot.config import ModelConfig, OutputConfig
from equipot.data import Statistics, make_batch, to_graph
from equipot.model import build_model
from equipot.model.compiled import CompiledPotential
from equipot.o3 import ChannelProduct

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


def _none_fell_back(compiled):
    """Every graph compiled: none was replaced by the eager model after a compiler failure."""
    assert compiled._graphs and all(function is not None for function, _ in compiled._graphs.values())


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
    _none_fell_back(compiled)


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
        for key in ("energy", "forces", "stress", "energies", "chirality"):
            np.testing.assert_allclose(compiled.results[key], eager.results[key], rtol=1e-10, atol=1e-12)
    atoms.pbc = False  # open: a dipole, through the same graph (a lone structure padded to two)
    compiled.calculate(atoms.copy(), ["energy", "forces", "dipole", "chirality"])
    eager.calculate(atoms.copy(), ["energy", "forces", "dipole", "chirality"])
    for key in ("energy", "forces", "dipole", "chirality"):
        np.testing.assert_allclose(compiled.results[key], eager.results[key], rtol=1e-10, atol=1e-12)
    assert len(compiled.evaluate._graphs) == 1
    _none_fell_back(compiled.evaluate)


def test_training_compile_option(io_config_dict):
    from equipot.config import config_from_dict
    from equipot.train import Trainer

    trainer = Trainer(config_from_dict(io_config_dict(compile=True), "test"), progress=False)
    trainer._setup(resume=False)
    assert isinstance(trainer.evaluate, CompiledPotential) and trainer.evaluate.potential is trainer.model


def test_long_range_models_are_refused():
    from equipot.config import ConfigError, config_from_dict

    class LongRange:
        long_range = object()

    with pytest.raises(ValueError, match="long-range"):
        CompiledPotential(LongRange())
    with pytest.raises(ConfigError, match="training.compile"):
        config_from_dict({"model": {"long_range": {"smearing": 0.8}}, "training": {"compile": True}})


def test_traced_graph_for_other_layouts(model):
    """What the trace itself must get right, through the cheapest backend (Dynamo only; the
    tests above take AOTAutograd and Inductor through the usual layout, mirrored edges without
    rows, not through these): edges not in
    mirrored halves, atoms without neighbours (rows of the neighbour table), weights changed in
    place between calls, and a batch with one atom with neighbours (a size-1 dimension the trace
    fixes), which must take a graph of its own."""
    import dataclasses

    rng = np.random.default_rng(6)
    compiled = CompiledPotential(model, backend="eager")

    def check(graph):
        got, got_grads = _loss_and_gradients(compiled, model, graph)
        want, want_grads = _loss_and_gradients(model, model, graph)
        for key in ("energy", "forces", "stress", "chirality"):
            torch.testing.assert_close(got[key], want[key], rtol=1e-10, atol=1e-12, msg=key)
        for g, w in zip(got_grads, want_grads):
            torch.testing.assert_close(g, w, rtol=1e-8, atol=1e-10)

    check(_batch(rng, [6, 8], periodic=False))
    with torch.no_grad():  # the optimizer and the EMA swap change the weights in place
        for p in model.parameters():
            p.mul_(1.01)
    check(_batch(rng, [7, 5], periodic=False))  # the same kind of batch: the same graph, new weights
    assert len(compiled._graphs) == 1
    graph = _batch(rng, [6, 8], periodic=False)
    order = torch.as_tensor(rng.permutation(graph.edge_src.shape[0]))  # no longer mirrored halves
    shuffled = dataclasses.replace(graph, edge_src=graph.edge_src[order], edge_dst=graph.edge_dst[order],
                                   edge_shift=graph.edge_shift[order])
    assert not model.layout(shuffled).edges.mirrored
    check(shuffled)
    lone = random_structure(rng, 1)  # an open lone atom has no neighbours: the table gets rows
    rows_batch = make_batch([random_structure(rng, 6), lone, random_structure(rng, 5)], R_MAX)
    assert model.layout(rows_batch).edges.table.rows.shape[0] >= 2
    check(rows_batch)
    assert len(compiled._graphs) == 3
    # one atom in a small periodic cell (neighbours: its own images) beside a lone one: one row
    crystal = random_structure(rng, 1, cell=np.eye(3) * 2.5)
    one_row = make_batch([crystal, lone], R_MAX)
    assert model.layout(one_row).edges.table.rows.shape[0] == 1
    check(one_row)
    assert len(compiled._graphs) == 4
    _none_fell_back(compiled)


def test_one_species_model_compiled_with_two_threads(float64_without_einsum_search):
    """A one-element model (a species axis of size 1) compiled by Inductor with two threads, whose
    CPU code generation has failed on size-1 dimensions before: the compiled forces equal eager.
    (Inference, so with Inductor's SIMD loops; the training graphs above are compiled without.)"""
    config = ModelConfig(r_max=R_MAX, num_layers=1, channels=4, lmax=1, correlation=2, num_basis=4,
                         radial_hidden=[8], readout_hidden=4)
    stats = Statistics(species=[14], e0={14: -100.0}, energy_shift=0.0, energy_scale=1.0, avg_num_neighbors=8.0)
    torch.manual_seed(1)
    silicon = build_model(config, stats, torch.float64)
    rng = np.random.default_rng(5)
    configs = [random_structure(rng, n, cell=triclinic_cell(rng), symbols=(14,)) for n in (6, 8)]
    graph = make_batch(configs, R_MAX)
    threads = torch.get_num_threads()
    torch.set_num_threads(2)
    compiled = CompiledPotential(silicon, inference=True)
    try:
        got = compiled(graph)
    finally:
        torch.set_num_threads(threads)
    _none_fell_back(compiled)  # a failed compile would give the eager values, with only a warning
    want = silicon(graph)
    for key in ("energy", "forces", "stress"):
        torch.testing.assert_close(got[key], want[key], rtol=1e-10, atol=1e-12, msg=key)


def test_inductor_cache_outlives_temporary_files(monkeypatch, tmp_path):
    from torch._inductor.runtime.cache_dir_utils import default_cache_dir

    from equipot.model.compiled import _cpu_fingerprint, use_persistent_cache

    cpu = _cpu_fingerprint()
    # torch's own default (it writes it into the variable when it first reads it) is replaced
    monkeypatch.setenv("TORCHINDUCTOR_CACHE_DIR", default_cache_dir())
    monkeypatch.delenv("EQUIPOT_CACHE_DIR", raising=False)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    want = str(tmp_path / "xdg" / "equipot" / "inductor" / cpu)
    assert use_persistent_cache() == want and os.environ["TORCHINDUCTOR_CACHE_DIR"] == want
    assert os.path.isdir(want)
    monkeypatch.delenv("TORCHINDUCTOR_CACHE_DIR")
    monkeypatch.setenv("EQUIPOT_CACHE_DIR", str(tmp_path / "eq"))
    assert use_persistent_cache() == str(tmp_path / "eq" / "inductor" / cpu)
    # a folder that cannot be made (a file is in the way): torch's default stays
    (tmp_path / "blocked").write_text("")
    monkeypatch.delenv("TORCHINDUCTOR_CACHE_DIR")
    monkeypatch.setenv("EQUIPOT_CACHE_DIR", str(tmp_path / "blocked"))
    assert use_persistent_cache() == default_cache_dir()
    # a folder the user chose is kept
    monkeypatch.setenv("TORCHINDUCTOR_CACHE_DIR", str(tmp_path / "mine"))
    assert use_persistent_cache() == str(tmp_path / "mine")
    assert os.environ["TORCHINDUCTOR_CACHE_DIR"] == str(tmp_path / "mine")


def test_simd_loops_off_for_training_on_for_inference(model):
    assert CompiledPotential(model).options == {"cpp.simdlen": 1}
    assert CompiledPotential(model, inference=True).options is None
    assert CompiledPotential(model, vectorize=True).options is None
    assert CompiledPotential(model, inference=True, vectorize=False).options == {"cpp.simdlen": 1}
    assert CompiledPotential(model, backend="eager").options is None


def _energy_of(evaluate, graph, layout):
    def energy(named, positions):
        moved = dataclasses.replace(graph, positions=positions)
        return torch.func.functional_call(evaluate, named, (moved, layout))["energy"]
    return energy


@pytest.mark.parametrize("architecture", ["equivariant", "cartesian"])
def test_data_statistics_are_inputs_of_the_trace(float64_without_einsum_search, architecture):
    """Two models of one architecture fitted to different data (average neighbour count, energy
    scale and shifts) trace to the same graph, so a compiled graph, and Inductor's cache of it,
    serves both: the statistics reach the graph as inputs, not as constants baked into it."""
    from torch.fx.experimental.proxy_tensor import make_fx

    from equipot.model.compiled import _Evaluate

    config = ModelConfig(architecture=architecture, r_max=R_MAX, num_layers=2, channels=4, lmax=1, correlation=2,
                         num_basis=4, radial_hidden=[8], readout_hidden=4)
    graph = _batch(np.random.default_rng(1), [5, 6], True)
    traced, weights, energies = [], [], []
    for avg, scale, shift in ((6.0, 0.8, -0.3), (11.5, 0.25, 0.7)):
        stats = Statistics(species=[1, 6, 8], e0={1: -13.6, 6: -1029.5, 8: -2041.3}, energy_shift=shift,
                           energy_scale=scale, avg_num_neighbors=avg)
        torch.manual_seed(0)  # the same weights: only the statistics differ
        model = build_model(config, stats, torch.float64)
        evaluate, layout = _Evaluate(model), model.layout(graph)
        named = {k: v.detach() for k, v in [*evaluate.named_parameters(), *evaluate.named_buffers()]}

        with torch.enable_grad():
            traced.append(make_fx(_energy_of(evaluate, graph, layout), tracing_mode="real")(named, graph.positions))
        weights.append(named)
        energies.append(model(graph)["energy"].detach())
    assert not torch.allclose(energies[0], energies[1])  # the statistics matter
    assert traced[0].code == traced[1].code
    constants = [{k: v for k, v in gm.state_dict().items()} for gm in traced]
    assert constants[0].keys() == constants[1].keys()
    for key in constants[0]:
        torch.testing.assert_close(constants[0][key], constants[1][key], rtol=0, atol=0, msg=key)
    # and the first model's graph, given the second model's weights and statistics, is the second model
    with torch.enable_grad():
        torch.testing.assert_close(traced[0](weights[1], graph.positions), energies[1], rtol=1e-12, atol=1e-12)


def test_compiled_trace_with_radial_tables(model):
    """Tabulated radial networks (EnergyModel.tabulate_radial) in the trace: a graph of their own."""
    tabulated = copy.deepcopy(model).eval()  # tables are for eval mode
    compiled = CompiledPotential(tabulated, inference=True, backend="eager")
    rng = np.random.default_rng(5)
    graph = to_graph(random_structure(rng, 7, cell=triclinic_cell(rng, length=3.4)), R_MAX)
    networks = compiled(graph)
    tabulated.energy_model.tabulate_radial(1e-9)
    tables = compiled(graph)
    assert len(compiled._graphs) == 2  # a graph of its own once tabulated
    want = tabulated(graph)
    torch.testing.assert_close(tables["forces"], want["forces"], rtol=1e-10, atol=1e-12)
    scale = float(networks["forces"].abs().max())
    torch.testing.assert_close(tables["forces"], networks["forces"], rtol=0, atol=1e-7 * scale)
    assert not torch.equal(tables["forces"], networks["forces"])


@pytest.mark.parametrize("inference", [True, False])
def test_compiled_graph_with_node_products_as_sums_of_terms(float64_without_einsum_search, inference):
    """The node products of a traced graph as sums of their nonzero terms (the default for
    inference, ChannelProduct under sparse_products): forces, stress and, for training, the
    gradients of a force loss equal the eager model's. Two layers with edge harmonics to l = 2,
    so that the first layer's products into vectors and l = 2 take the outer (not the trace) form."""
    config = ModelConfig(r_max=R_MAX, num_layers=2, channels=2, lmax=1, sh_lmax=2, correlation=3,
                         product_mixing=True, num_basis=4, radial_hidden=[8], readout_hidden=4)
    stats = Statistics(species=[1, 6, 8], e0={1: -13.6, 6: -1029.5, 8: -2041.3}, energy_shift=-0.3,
                       energy_scale=0.8, avg_num_neighbors=6.0)
    torch.manual_seed(3)
    model = build_model(config, stats, torch.float64)
    products = [m for m in model.modules() if isinstance(m, ChannelProduct) and not m.trace]
    assert products and all(m.num_terms < m.coupling.numel() for m in products)
    compiled = CompiledPotential(model, inference=inference, backend="eager", sparse=True)
    graph = _batch(np.random.default_rng(8), [6, 8], periodic=True)
    if inference:
        got, want = compiled(graph), model(graph)
        for key in ("energy", "forces", "stress"):
            torch.testing.assert_close(got[key], want[key], rtol=1e-10, atol=1e-12, msg=key)
        return

    def loss_and_gradients(evaluate):
        model.zero_grad(set_to_none=True)
        out = evaluate(graph, training=True)
        ((out["forces"] ** 2).sum() + (out["stress"] ** 2).sum() + out["energy"].sum()).backward()
        return out, [torch.zeros_like(p) if p.grad is None else p.grad.clone() for p in model.parameters()]

    (got, got_grads), (want, want_grads) = loss_and_gradients(compiled), loss_and_gradients(model)
    torch.testing.assert_close(got["forces"], want["forces"], rtol=1e-10, atol=1e-12)
    for a, b in zip(got_grads, want_grads):
        torch.testing.assert_close(a, b, rtol=1e-8, atol=1e-10)
