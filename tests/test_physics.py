"""Physics of the potential: derivatives, locality, cutoff, limits, precision and files.

All with a randomly initialised float64 model (H, C, O) and small random structures.
"""

import copy
import dataclasses
import json
import pickle
import struct
from pathlib import Path

import numpy as np
import pytest
import torch
from ase import Atoms
from ase.calculators.fd import calculate_numerical_forces, calculate_numerical_stress
from ase.neighborlist import neighbor_list as ase_neighbor_list

from equipot import EquipotCalculator
from equipot.config import ModelConfig
from equipot.data import Configuration, Statistics, make_batch, neighbor_list, to_graph
from equipot.geometry import apply_strain, edge_vectors, symmetric_strain
from equipot.model import build_model, load_model, save_model

from equivariance import random_structure, triclinic_cell

SHARED_DATA = Path(__file__).resolve().parents[2] / "shared" / "data"
R_MAX = 3.0
E0 = {1: -13.6, 6: -1029.5, 8: -2041.3}
ENERGY_SHIFT = -0.37


@pytest.fixture(scope="module", autouse=True)
def float64():
    dtype = torch.get_default_dtype()
    torch.set_default_dtype(torch.float64)
    yield
    torch.set_default_dtype(dtype)


@pytest.fixture(scope="module", params=["equivariant", "cartesian"])
def setup(float64, request):
    """(model, config, stats): a random float64 model whose shift is E0 + energy_shift; the
    equivariant network and the non-equivariant baseline pass the same physical checks."""
    config = ModelConfig(architecture=request.param, r_max=R_MAX, num_layers=2, channels=4, lmax=2, parity="both", correlation=3,
                         num_basis=6, radial_hidden=[16], readout_hidden=8)
    stats = Statistics(species=[1, 6, 8], e0=dict(E0), energy_shift=ENERGY_SHIFT, energy_scale=0.8,
                       avg_num_neighbors=6.0)
    torch.manual_seed(0)
    model = build_model(config, stats)
    model.model_config, model.statistics = config, stats
    assert model.dtype == torch.float64
    return model.eval(), config, stats


@pytest.fixture(scope="module")
def model(setup):
    return setup[0]


def run(model, config: Configuration):
    dtype = model.dtype
    return {k: v.detach() for k, v in model(to_graph(config, R_MAX).to(dtype=dtype)).items()}


def periodic_structure(seed, n_atoms=6, length=3.6):
    """Triclinic, every edge shorter than 2 r_max: each atom sees several images of the others."""
    rng = np.random.default_rng(seed)
    cell = triclinic_cell(rng, length=length)
    assert np.linalg.norm(cell, axis=1).max() < 2 * R_MAX
    return random_structure(rng, n_atoms, cell=cell)


def open_structure(seed, n_atoms=8, box=3.5):
    return random_structure(np.random.default_rng(seed), n_atoms, box=box)


def to_atoms(config: Configuration) -> Atoms:
    return Atoms(numbers=config.numbers, positions=config.positions, cell=config.cell, pbc=config.pbc)


def acac_molecule():
    path = SHARED_DATA / "acac" / "test_MD_300K.xyz"
    if not path.exists():
        pytest.skip(f"reference data not found: {path}")
    import ase.io

    atoms = ase.io.read(str(path), index=0)
    return Atoms(numbers=atoms.numbers, positions=atoms.positions)


# --------------------------------------------------------------------------------------
# Derivatives against finite differences (ASE)
# --------------------------------------------------------------------------------------


@pytest.mark.parametrize("kind", ["periodic", "open", "acac"])
def test_forces_and_stress_match_finite_differences(model, kind):
    if kind == "periodic":
        atoms = to_atoms(periodic_structure(1))
        assert len(ase_neighbor_list("i", atoms, R_MAX)) > 6 * len(atoms)  # many images
    elif kind == "open":
        atoms = to_atoms(open_structure(2))
    else:
        atoms = acac_molecule()
    atoms.calc = EquipotCalculator(model)
    forces = atoms.get_forces()
    assert np.abs(forces).max() > 1e-2, "forces too small for the comparison to mean anything"
    some = list(range(len(atoms))) if kind != "acac" else [0, 3, 5, 7, 12]  # C, O, O, H, H
    numerical = calculate_numerical_forces(atoms, eps=1e-4, iatoms=some)
    np.testing.assert_allclose(forces[some], numerical, rtol=0, atol=1e-6)
    if kind == "periodic":
        stress = atoms.get_stress()
        assert np.abs(stress).max() > 1e-4
        np.testing.assert_allclose(stress, calculate_numerical_stress(atoms, eps=1e-4), rtol=0, atol=1e-8)


def test_stress_is_symmetric_and_equals_minus_virial_over_volume(model):
    config = periodic_structure(3)
    out = run(model, config)
    stress, virial = out["stress"][0], out["virial"][0]
    volume = abs(np.linalg.det(config.cell))
    torch.testing.assert_close(stress, stress.T, rtol=0, atol=1e-14)
    torch.testing.assert_close(stress, -virial / volume, rtol=1e-12, atol=1e-15)
    # open structures: no volume, zero stress (virial is still defined)
    out = run(model, open_structure(3))
    assert torch.equal(out["stress"], torch.zeros_like(out["stress"]))
    assert out["virial"].abs().max() > 0


# --------------------------------------------------------------------------------------
# Batches: the same numbers as one structure at a time, no coupling between structures
# --------------------------------------------------------------------------------------


def batch_members():
    single = Configuration(numbers=np.array([8]), positions=np.array([[0.3, -0.2, 1.0]]),
                           cell=np.zeros((3, 3)), pbc=np.zeros(3, bool))
    return [periodic_structure(4), open_structure(5, n_atoms=6), single, periodic_structure(6, n_atoms=5, length=4.2)]


def test_batched_equals_unbatched(model):
    configs = batch_members()
    batch = model(make_batch(configs, R_MAX))
    assert batch["energy"].shape == (len(configs),)
    atom = 0
    for k, config in enumerate(configs):
        alone = run(model, config)
        n = config.n_atoms
        torch.testing.assert_close(batch["energy"][k : k + 1], alone["energy"], rtol=1e-13, atol=1e-10)
        torch.testing.assert_close(batch["energies"][atom : atom + n], alone["energies"], rtol=1e-13, atol=1e-10)
        torch.testing.assert_close(batch["forces"][atom : atom + n], alone["forces"], rtol=1e-10, atol=1e-12)
        torch.testing.assert_close(batch["stress"][k : k + 1], alone["stress"], rtol=1e-10, atol=1e-14)
        torch.testing.assert_close(batch["virial"][k : k + 1], alone["virial"], rtol=1e-10, atol=1e-12)
        atom += n
    # per-atom energies add up to the energy of each structure
    sums = torch.zeros(len(configs)).index_add(0, make_batch(configs, R_MAX).node_graph, batch["energies"])
    torch.testing.assert_close(sums, batch["energy"], rtol=1e-14, atol=1e-10)


def test_edge_order_does_not_matter(model):
    """Neighbour lists come in mirrored halves, which the model uses to compute functions of
    edge lengths once per pair; any other edge order must give the same results."""
    from equipot.graph import is_mirrored

    for config in (periodic_structure(11), open_structure(12)):
        graph = to_graph(config, R_MAX)
        assert is_mirrored(graph.edge_src, graph.edge_dst, graph.edge_shift)
        batch = make_batch([config, periodic_structure(13)], R_MAX)
        assert is_mirrored(batch.edge_src, batch.edge_dst, batch.edge_shift)
        order = torch.randperm(graph.edge_src.shape[0], generator=torch.Generator().manual_seed(0))
        shuffled = dataclasses.replace(graph, edge_src=graph.edge_src[order], edge_dst=graph.edge_dst[order],
                                       edge_shift=graph.edge_shift[order])
        assert not is_mirrored(shuffled.edge_src, shuffled.edge_dst, shuffled.edge_shift)
        a, b = model(graph), model(shuffled)
        for key in ("energy", "energies", "forces", "stress"):
            torch.testing.assert_close(b[key], a[key], rtol=1e-12, atol=1e-12)


def test_no_gradient_between_structures_of_a_batch(model):
    """d E_a / d r_b and d E_a / d strain_b are exactly zero for structures a != b."""
    graph = make_batch(batch_members(), R_MAX)
    species = model.species_index(graph.numbers)
    positions = graph.positions.clone().requires_grad_(True)
    displacement, strain = symmetric_strain(graph.n_graphs, positions.dtype)
    pos, cell = apply_strain(positions, graph.cell, strain, graph.node_graph)
    vec = edge_vectors(pos, cell, graph.node_graph, graph.edge_src, graph.edge_dst, graph.edge_shift)
    energies, _ = model.energy_model(species, vec, graph.edge_src, graph.edge_dst)
    energy = torch.zeros(graph.n_graphs).index_add(0, graph.node_graph, energies)
    for a in range(graph.n_graphs):
        g_pos, g_strain = torch.autograd.grad(energy[a], [positions, displacement], retain_graph=True)
        own = graph.node_graph == a
        assert torch.count_nonzero(g_pos[~own]) == 0, f"energy of structure {a} depends on other structures"
        others = torch.arange(graph.n_graphs) != a
        assert torch.count_nonzero(g_strain[others]) == 0
        if int(own.sum()) > 1:
            assert g_pos[own].abs().max() > 1e-3  # and it does depend on its own atoms


# --------------------------------------------------------------------------------------
# Locality: cutoff smoothness, isolated atoms, additivity
# --------------------------------------------------------------------------------------


def dimer(r, numbers=(6, 8)):
    direction = np.array([0.3, -0.5, 0.8])
    direction /= np.linalg.norm(direction)
    positions = np.array([[0.1, 0.2, -0.3], [0.1, 0.2, -0.3] + r * direction])
    return Configuration(numbers=np.array(numbers), positions=positions, cell=np.zeros((3, 3)),
                         pbc=np.zeros(3, bool))


def test_isolated_atom_energy_is_its_shift(model, setup):
    """One atom, no neighbours: exactly E0[z] + energy_shift (what build_model puts as shift)."""
    _, _, stats = setup
    for z in stats.species:
        for cell, pbc in ((np.zeros((3, 3)), False), (np.diag([8.0, 9.0, 7.5]), True)):
            config = Configuration(numbers=np.array([z]), positions=np.array([[1.0, 2.0, 3.0]]),
                                   cell=cell, pbc=np.full(3, pbc))
            out = run(model, config)
            assert float(out["energy"][0]) == pytest.approx(stats.e0[z] + stats.energy_shift, rel=0, abs=1e-12)
            assert torch.count_nonzero(out["forces"]) == 0
            assert torch.count_nonzero(out["stress"]) == 0


def test_smooth_at_the_cutoff(model):
    """A dimer crossing r_max: energy and forces go continuously to the isolated atoms.

    Just outside r_max the dimer is exactly two isolated atoms (forces exactly zero). Just
    inside, E - E(isolated) vanishes at least like δ³ and the forces at least like δ²
    (the envelope and its first two derivatives vanish at r_max).
    """
    zero_shift = copy.deepcopy(model)
    with torch.no_grad():
        zero_shift.energy_model.atomic_shift.zero_()  # energies relative to the isolated atoms
    isolated = sum(float(run(zero_shift, dimer(50.0))["energies"][k]) for k in range(2))
    assert isolated == 0.0
    outside = run(zero_shift, dimer(R_MAX + 1e-9))
    assert float(outside["energy"][0]) == isolated
    assert torch.count_nonzero(outside["forces"]) == 0

    deltas = [1e-1, 1e-2, 1e-3, 1e-4]
    de, f = [], []
    for delta in deltas:
        out = run(zero_shift, dimer(R_MAX - delta))
        de.append(abs(float(out["energy"][0]) - isolated))
        f.append(float(out["forces"].abs().max()))
    assert de[0] > 1e-12 and f[0] > 1e-10, "no interaction near the cutoff: the test would mean nothing"
    for k in range(len(deltas) - 1):
        # log-log slopes per decade: >= 2.9 for δ³ and >= 1.9 for δ² (δ² energies would give 2)
        assert de[k + 1] <= de[k] * 10 ** -2.9, f"energy not smooth at r_max: {de}"
        assert f[k + 1] <= f[k] * 10 ** -1.9, f"forces not smooth at r_max: {f}"
    assert de[-1] < 1e-12 and f[-1] < 1e-9
    # and the full model, with its shifts, converges to the isolated atoms too
    e_in = float(run(model, dimer(R_MAX - 1e-4))["energy"][0])
    e_iso = E0[6] + E0[8] + 2 * ENERGY_SHIFT
    assert e_in == pytest.approx(e_iso, rel=0, abs=1e-9)
    assert float(run(model, dimer(R_MAX + 1e-6))["energy"][0]) == pytest.approx(e_iso, rel=0, abs=1e-11)


def test_additivity_of_separated_molecules(model):
    a, b = open_structure(7, n_atoms=5, box=3.0), open_structure(8, n_atoms=6, box=3.0)
    gap = R_MAX + 0.5
    offset = np.array([a.positions[:, 0].max() - b.positions[:, 0].min() + gap, 0.0, 0.0])
    both = Configuration(numbers=np.concatenate([a.numbers, b.numbers]),
                         positions=np.concatenate([a.positions, b.positions + offset]),
                         cell=np.zeros((3, 3)), pbc=np.zeros(3, bool))
    src, dst, _ = neighbor_list(both.positions, both.cell, both.pbc, R_MAX)
    assert not np.any((src < a.n_atoms) != (dst < a.n_atoms)), "molecules are not separated"
    out, out_a, out_b = run(model, both), run(model, a), run(model, b)
    torch.testing.assert_close(out["energy"], out_a["energy"] + out_b["energy"], rtol=1e-14, atol=1e-10)
    torch.testing.assert_close(out["energies"], torch.cat([out_a["energies"], out_b["energies"]]),
                               rtol=1e-14, atol=1e-11)
    torch.testing.assert_close(out["forces"], torch.cat([out_a["forces"], out_b["forces"]]), rtol=1e-10,
                               atol=1e-12)
    # closer than the cutoff, the energy is not additive (the test above can fail)
    near = both.positions.copy()
    near[a.n_atoms :] -= np.array([gap - 1.5, 0.0, 0.0])
    closer = Configuration(both.numbers, near, both.cell, both.pbc)
    assert abs(float(run(model, closer)["energy"][0] - out_a["energy"][0] - out_b["energy"][0])) > 1e-6


# --------------------------------------------------------------------------------------
# Neighbour list, translations
# --------------------------------------------------------------------------------------


@pytest.mark.parametrize("seed", range(4))
@pytest.mark.parametrize("pbc", [(True, True, True), (True, False, True), (False, False, False)])
def test_neighbor_list_matches_ase(seed, pbc):
    """Same (centre, neighbour, image shift) triples as ASE, on small triclinic cells
    (several images, self-images included) with atoms partly outside the cell."""
    rng = np.random.default_rng(100 + seed)
    cell = triclinic_cell(rng, length=2.4 + 0.4 * seed, tilt=1.0)
    n = 3 + seed
    positions = rng.uniform(-0.4, 1.4, (n, 3)) @ cell
    cutoff = 3.0
    src, dst, shift = neighbor_list(positions, cell, np.array(pbc), cutoff)
    atoms = Atoms(positions=positions, cell=cell, pbc=pbc)
    i, j, S, d = ase_neighbor_list("ijSd", atoms, cutoff)
    ours = {(int(c), int(nb), tuple(int(x) for x in s)) for c, nb, s in zip(dst, src, shift)}
    theirs = {(int(c), int(nb), tuple(int(x) for x in s)) for c, nb, s in zip(i, j, S)}
    assert len(ours) == len(src), "duplicate edges"
    assert ours == theirs
    assert np.allclose(shift, np.round(shift))
    if any(pbc):
        assert len(ours) > n * n  # more edges than atom pairs: several images
    vec = positions[src] - positions[dst] + shift @ cell
    length = np.linalg.norm(vec, axis=1)
    assert length.max() < cutoff
    assert np.allclose(np.sort(length), np.sort(d))


def test_translation_invariance(model):
    config = periodic_structure(9)
    ref = run(model, config)
    rng = np.random.default_rng(9)
    # a rigid translation of every atom (then wrapped back into the cell)
    atoms = to_atoms(config)
    atoms.translate(rng.normal(size=3) * 5.0)
    atoms.wrap()
    moved = Configuration(config.numbers, atoms.positions, config.cell, config.pbc)
    # one atom moved by a lattice vector is the same crystal
    hopped = Configuration(config.numbers, config.positions.copy(), config.cell, config.pbc)
    hopped.positions[2] += config.cell.T @ np.array([1, -2, 1])
    for other in (moved, hopped):
        out = run(model, other)
        for key in ("energy", "energies", "forces", "stress", "virial"):
            torch.testing.assert_close(out[key], ref[key], rtol=1e-10, atol=1e-12, msg=key)
    # open structure
    config = open_structure(10)
    ref = run(model, config)
    shifted = Configuration(config.numbers, config.positions + np.array([12.3, -4.5, 7.0]), config.cell,
                            config.pbc)
    out = run(model, shifted)
    for key in ("energy", "energies", "forces"):
        torch.testing.assert_close(out[key], ref[key], rtol=1e-10, atol=1e-12, msg=key)


# --------------------------------------------------------------------------------------
# Precision and model files
# --------------------------------------------------------------------------------------


def test_float32_model_agrees_with_float64(model):
    model32 = copy.deepcopy(model).to(torch.float32)
    assert model32.dtype == torch.float32
    assert model32.energy_model.atomic_shift.dtype == torch.float64  # E0 kept in float64
    for config in (periodic_structure(11), open_structure(12)):
        ref, out = run(model, config), run(model32, config)
        assert out["forces"].dtype == torch.float32
        assert out["energy"].dtype == torch.float64
        n = config.n_atoms
        # the network part is float32; the shift (~10^3 eV) is added in float64
        assert abs(float(out["energy"][0] - ref["energy"][0])) < 1e-5 * n
        network = ref["energies"] - model.energy_model.atomic_shift[model.species_index(torch.as_tensor(config.numbers))]
        assert network.abs().max() > 1e-3
        torch.testing.assert_close(out["energies"], ref["energies"], rtol=0, atol=1e-5)
        scale = float(ref["forces"].abs().max())
        torch.testing.assert_close(out["forces"].double(), ref["forces"], rtol=0, atol=1e-5 * scale)
        scale = float(ref["stress"].abs().max()) or 1.0
        torch.testing.assert_close(out["stress"].double(), ref["stress"], rtol=0, atol=1e-5 * scale)
    # through the ASE calculator too
    atoms = to_atoms(periodic_structure(13))
    e64 = EquipotCalculator(model).get_potential_energy(atoms)
    e32 = EquipotCalculator(copy.deepcopy(model), dtype="float32").get_potential_energy(atoms)
    assert abs(e32 - e64) < 1e-5 * len(atoms)


def test_model_file_round_trip_without_pickle(model, setup, tmp_path, monkeypatch):
    _, config, stats = setup
    path = tmp_path / "model.safetensors"
    save_model(str(path), model, config, stats)
    # a safetensors file: an 8-byte header length, then a JSON header with our metadata
    raw = path.read_bytes()
    (header_len,) = struct.unpack("<Q", raw[:8])
    header = json.loads(raw[8 : 8 + header_len])
    assert header["__metadata__"]["format"] == "equipot-model"

    def forbidden(*args, **kwargs):
        raise AssertionError("loading a model file must not unpickle anything")

    monkeypatch.setattr(pickle, "load", forbidden)
    monkeypatch.setattr(pickle, "loads", forbidden)
    monkeypatch.setattr(pickle, "Unpickler", forbidden)
    monkeypatch.setattr(torch, "load", forbidden)
    loaded = load_model(str(path))
    monkeypatch.undo()

    assert loaded.dtype == torch.float64
    assert loaded.model_config == config
    assert loaded.statistics == stats
    assert loaded.species == model.species
    state, state_loaded = model.state_dict(), loaded.state_dict()
    assert state.keys() == state_loaded.keys()
    for key in state:
        assert torch.equal(state[key], state_loaded[key]), key
    for config_ in (periodic_structure(14), open_structure(15)):
        ref, out = run(model, config_), run(loaded, config_)
        for key in ("energy", "energies", "forces", "stress"):
            assert torch.equal(out[key], ref[key]), key
    # and through the calculator, from the path
    atoms = to_atoms(open_structure(16))
    assert EquipotCalculator(str(path)).get_potential_energy(atoms) == pytest.approx(
        EquipotCalculator(model).get_potential_energy(atoms), rel=0, abs=1e-12
    )
