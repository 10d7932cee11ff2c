"""Long-range electrostatics (issue 4): solvers against closed forms, each other and references;
the long-range model's derivatives, charge constraint and symmetry. float64 throughout."""

import json
import math
from pathlib import Path

import ase.io
import numpy as np
import pytest
import torch
from ase import Atoms
from ase.build import bulk, molecule

from equipot.config import ConfigError, LongRangeConfig, ModelConfig, config_from_dict
from equipot.data import Configuration, Statistics, make_batch, neighbor_list, to_graph
from equipot.electrostatics import Electrostatics, LongRangeError
from equipot.electrostatics.coulomb import MeshPME, fft_size, half_sphere_kvectors
from torchpme import CoulombPotential
from equipot.geometry import apply_strain, edge_vectors, symmetric_strain
from equipot.model import build_model

from equivariance import check_potential_equivariance, random_structure, triclinic_cell

SHARED_DATA = Path(__file__).resolve().parents[2] / "shared" / "data"
K_E = 14.399645478425667  # eV Å / e², torch-pme's eV_A


@pytest.fixture(scope="module", autouse=True)
def float64(float64_without_einsum_search):
    yield


def energy(solver, charges, positions, cell, pbc=True, pair_cutoff=None):
    """Total energy of one structure and its gradient wrt positions and strain.

    With ``pair_cutoff``, the solver gets every pair within it (vesin, images included), as a
    model passes its neighbour list.
    """
    n = len(charges)
    positions = torch.as_tensor(positions, dtype=torch.float64).clone().requires_grad_(True)
    cell = torch.as_tensor(np.asarray(cell), dtype=torch.float64).reshape(1, 3, 3)
    node_graph = torch.zeros(n, dtype=torch.long)
    displacement, strain = symmetric_strain(1, torch.float64, "cpu")
    pos, cell = apply_strain(positions, cell, strain, node_graph)
    pairs = None
    if pair_cutoff is not None:
        src, dst, shift = neighbor_list(positions.detach().numpy(), cell[0].detach().numpy(), np.full(3, pbc), pair_cutoff)
        src, dst, shift = torch.as_tensor(src), torch.as_tensor(dst), torch.as_tensor(shift, dtype=torch.float64)
        pairs = (src, dst, edge_vectors(pos, cell, node_graph, src, dst, shift))
    e = solver(torch.as_tensor(charges, dtype=torch.float64), pos, cell, torch.full((1, 3), pbc), node_graph, 1,
               pairs).sum()
    grad_pos, grad_strain = torch.autograd.grad(e, [positions, displacement])
    return float(e.detach()), -grad_pos.numpy(), -grad_strain[0].numpy()


# ------------------------------------------------------------------------- Madelung constants
CRYSTALS = {  # structure, nearest-neighbour distance factor (× a), Madelung constant per ion pair (nn units)
    "NaCl": (lambda: bulk("NaCl", "rocksalt", a=5.64, cubic=True), 0.5, 1.747564594633),
    "CsCl": (lambda: bulk("CsCl", "cesiumchloride", a=4.12), np.sqrt(3) / 2, 1.762674773070),
    "ZnS": (lambda: bulk("ZnS", "zincblende", a=5.41, cubic=True), np.sqrt(3) / 4, 1.638055053388),
}


@pytest.mark.parametrize("method", ["ewald", "pme"])
@pytest.mark.parametrize("crystal", sorted(CRYSTALS))
def test_madelung_constants(crystal, method):
    make, nn, madelung = CRYSTALS[crystal]
    atoms = make()
    a = atoms.cell.lengths()[0]
    charges = np.where(np.isin(atoms.numbers, [11, 55, 30]), 1.0, -1.0)
    r0 = nn * a
    # a smearing well below the nearest-neighbour distance: smeared = point charges to 1e-9
    solver = Electrostatics(smearing=r0 / 9, method=method, accuracy=1e-10)
    e, _, _ = energy(solver, charges, atoms.positions, atoms.cell)
    pairs = len(atoms) / 2
    assert e / pairs == pytest.approx(-madelung * K_E / r0, rel=2e-6 if method == "pme" else 1e-9)


# ------------------------------------------------------------------------- torch-pme reference frames
def test_torchpme_reference_frames():
    path = SHARED_DATA / "torchpme-reference-frames" / "coulomb_test_frames.xyz"
    if not path.is_file():
        pytest.skip("shared data not present")
    for atoms in ase.io.read(str(path), ":"):
        solver = Electrostatics(smearing=0.3, method="ewald", accuracy=1e-7)  # closest pair 1.8 Å: smeared = point
        e, forces, virial = energy(solver, atoms.get_initial_charges(), atoms.positions, atoms.cell)
        assert e == pytest.approx(atoms.get_potential_energy(), rel=2e-5)  # as torch-pme tests them
        assert np.abs(forces - atoms.get_forces()).max() < 1e-3  # the references come from GROMACS PME
        # the file's "stress" is GROMACS's virial Ξ = −W/2 (eV); W = −∂E/∂ε
        assert np.allclose(-virial / 2, atoms.get_stress(voigt=False), atol=1e-3)


# ------------------------------------------------------------------------- solvers agree
def test_ewald_tends_to_the_direct_sum_for_a_molecule_in_a_growing_box():
    mol = molecule("CH3CH2OH")
    charges = np.array([-0.3, 0.1, 0.2, -0.4, 0.1, 0.1, 0.05, 0.1, 0.05])
    charges -= charges.mean()
    direct, _, _ = energy(Electrostatics(1.0, "direct"), charges, mol.positions, np.zeros((3, 3)), pbc=False)
    mu = (charges[:, None] * mol.positions).sum(0)
    errors, corrected = [], []
    for box in (10.0, 20.0, 40.0):
        e, _, _ = energy(Electrostatics(1.0, "ewald", accuracy=1e-8), charges, mol.positions + box / 2, np.eye(3) * box)
        errors.append(abs(e - direct))
        # Ewald's conducting boundary vs vacuum: the dipole term 2π k_e μ² / (3V)
        corrected.append(abs(e + 2 * np.pi * K_E * (mu @ mu) / (3 * box**3) - direct))
    # the difference is the interaction with the periodic images, dipolar: it falls as 1/L³
    assert 6 < errors[0] / errors[1] < 10 and 6 < errors[1] / errors[2] < 10
    assert corrected[2] < 2e-6 and corrected[2] < 0.02 * errors[2]


def random_cell(rng, n=64, length=12.0):
    positions = rng.uniform(0, length, (n, 3))
    charges = rng.normal(size=n)
    charges -= charges.mean()
    cell = np.eye(3) * length + rng.uniform(-1, 1, (3, 3))
    return charges, positions, cell


def test_ewald_and_pme_agree_within_the_stated_accuracy():
    charges, positions, cell = random_cell(np.random.default_rng(1))
    results = {m: energy(Electrostatics(1.0, m, accuracy=1e-5), charges, positions, cell) for m in ("ewald", "pme")}
    (e1, f1, w1), (e2, f2, w2) = results["ewald"], results["pme"]
    assert abs(e1 - e2) / len(charges) < 1e-4  # < 0.1 meV/atom
    assert np.abs(f1 - f2).max() < 1e-3  # < 1 meV/Å
    assert np.abs(w1 - w2).max() / np.abs(w1).max() < 1e-3


def rattled_salt(seed=0):
    """A 216-ion rattled, sheared rock-salt cell with partial charges ±0.8 e (a learnt model's range)."""
    atoms = bulk("NaCl", "rocksalt", a=5.64, cubic=True).repeat((3, 3, 3))
    rng = np.random.default_rng(seed)
    atoms.positions += rng.normal(0, 0.15, atoms.positions.shape)
    atoms.set_cell(atoms.cell[:] + rng.uniform(-0.2, 0.2, (3, 3)), scale_atoms=True)
    charges = np.where(atoms.numbers == 11, 0.8, -0.8) + rng.normal(0, 0.05, len(atoms))
    return charges - charges.mean(), atoms.positions, atoms.cell[:]


def test_switching_solver_at_the_default_accuracy_changes_little():
    """The promise to users: at the default accuracy, Ewald, PME and the range-split Ewald and
    PME of a model (and ``auto`` on either side of ``pme_min_atoms``) differ by < 0.1 meV/atom in energy
    and < 1 meV/Å in forces."""
    charges, positions, cell = rattled_salt()
    n = len(charges)
    runs = {
        "ewald": energy(Electrostatics(1.0, "ewald"), charges, positions, cell),
        "pme": energy(Electrostatics(1.0, "pme"), charges, positions, cell),
        "split": energy(Electrostatics(1.0, "pme", pair_cutoff=5.0), charges, positions, cell, pair_cutoff=5.0),
        "ewald-split": energy(Electrostatics(1.0, "ewald", pair_cutoff=5.0), charges, positions, cell, pair_cutoff=5.0),
        "auto-ewald": energy(Electrostatics(1.0, "auto", pme_min_atoms=n + 1, pair_cutoff=5.0), charges, positions,
                             cell, pair_cutoff=5.0),
        "auto-pme": energy(Electrostatics(1.0, "auto", pme_min_atoms=n, pair_cutoff=5.0), charges, positions, cell,
                           pair_cutoff=5.0),
    }
    assert runs["auto-ewald"][0] == runs["ewald-split"][0] and runs["auto-pme"][0] == runs["split"][0]
    e0, f0, w0 = runs["ewald"]
    assert np.abs(f0).max() > 0.3  # forces of the size the limits are about
    for name, (e, f, w) in runs.items():
        assert abs(e - e0) / n < 1e-4, name  # eV/atom
        assert np.abs(f - f0).max() < 1e-3, name  # eV/Å
        assert np.abs(w - w0).max() < 1e-3 * np.abs(w0).max(), name


@pytest.mark.parametrize("accuracy", [1e-3, 1e-4, 1e-5])
def test_ewald_meets_the_stated_accuracy(accuracy):
    charges, positions, cell = random_cell(np.random.default_rng(5), n=50, length=10.0)
    e0, f0, w0 = energy(Electrostatics(1.0, "ewald", accuracy=1e-10), charges, positions, cell)
    e, f, w = energy(Electrostatics(1.0, "ewald", accuracy=accuracy), charges, positions, cell)
    assert np.sqrt(((f - f0) ** 2).mean() / (f0**2).mean()) < accuracy
    assert abs(e - e0) < accuracy * abs(e0)
    assert np.abs(w - w0).max() < accuracy * np.abs(w0).max()


def test_batched_ewald_equals_torchpme_ewald():
    """Our batched reciprocal sum (half ball of k) against torch-pme's EwaldCalculator (its box
    of ±k), structure by structure: triclinic cells of different sizes, charged ones included,
    potentials and their gradients with respect to positions and cell."""
    rng = np.random.default_rng(21)
    solver = Electrostatics(0.9, "ewald", accuracy=1e-9)
    structures = []
    for n, length, total in ((6, 5.0, 0.0), (20, 8.0, 1.0), (11, 6.5, -2.0)):
        q = rng.normal(size=n)
        q += (total - q.sum()) / n
        cell = np.eye(3) * length + rng.uniform(-0.8, 0.8, (3, 3))
        structures.append((torch.tensor(q), torch.tensor(rng.uniform(0, length, (n, 3)), requires_grad=True),
                           torch.tensor(cell, requires_grad=True)))
    node_graph = torch.repeat_interleave(torch.arange(3), torch.tensor([len(s[0]) for s in structures]))
    charges = torch.cat([s[0] for s in structures])
    ours = solver(charges, torch.cat([s[1] for s in structures]), torch.stack([s[2] for s in structures]),
                  torch.ones(3, 3, dtype=torch.bool), node_graph, 3)
    weights = torch.tensor(rng.normal(size=len(charges)))
    grads = torch.autograd.grad((ours * weights).sum(), [t for s in structures for t in s[1:]])
    empty_idx, empty_dist = torch.zeros((0, 2), dtype=torch.long), torch.zeros(0)
    start = 0
    for b, (q, pos, cell) in enumerate(structures):
        phi = solver.ewald(q[:, None], cell, pos, empty_idx, empty_dist)[:, 0]
        theirs = q * phi
        part = slice(start, start + len(q))
        assert torch.allclose(ours[part], theirs, rtol=1e-9, atol=1e-10)
        g_pos, g_cell = torch.autograd.grad((theirs * weights[part]).sum(), [pos, cell])
        assert torch.allclose(grads[2 * b], g_pos, rtol=1e-8, atol=1e-9)
        assert torch.allclose(grads[2 * b + 1], g_cell, rtol=1e-8, atol=1e-9)
        start += len(q)


def test_batched_ewald_double_backward():
    """Forces in a loss differentiate once more, through positions, cells and charges, with two
    cells of different sizes in one batch (the smaller one's k-vectors padded with k = 0)."""
    rng = np.random.default_rng(22)
    solver = Electrostatics(1.0, "ewald", accuracy=1e-3)
    cells = np.stack([np.eye(3) * 3.5 + rng.uniform(-0.3, 0.3, (3, 3)), np.eye(3) * 4.5 + rng.uniform(-0.3, 0.3, (3, 3))])
    assert len(half_sphere_kvectors(solver.wavelength, torch.tensor(cells[:1]))[1][0]) < len(
        half_sphere_kvectors(solver.wavelength, torch.tensor(cells[1:]))[1][0])
    args = (torch.tensor(rng.normal(size=5), requires_grad=True), torch.tensor(rng.uniform(0, 3.5, (5, 3)), requires_grad=True),
            torch.tensor(cells, requires_grad=True))
    node_graph = torch.tensor([0, 0, 1, 1, 1])

    def energy_of(q, pos, cell):
        return solver(q, pos, cell, torch.ones(2, 3, dtype=torch.bool), node_graph, 2).sum()

    assert torch.autograd.gradgradcheck(energy_of, args)


def test_half_sphere_kvectors_are_exactly_one_of_each_pair_inside_the_ball():
    """Brute force on strongly skewed cells (one batch, different sizes): every k with
    0 < |k| < k_max, one of each ±k, nothing else."""
    cells = torch.tensor([[[4.0, 0.0, 0.0], [3.6, 1.2, 0.0], [-1.5, 2.5, 0.9]],
                          [[9.0, 0.5, 0.0], [0.0, 7.0, 0.0], [4.0, 3.0, 6.0]]], dtype=torch.float64)
    wavelength = 0.9
    k_max = math.pi / wavelength
    k, mask = half_sphere_kvectors(wavelength, cells)
    for b in range(len(cells)):
        reciprocal = 2 * math.pi * torch.linalg.inv(cells[b]).T
        r = 40  # far beyond any n the ball can need for these cells
        n = torch.stack(torch.meshgrid(*[torch.arange(-r, r + 1)] * 3, indexing="ij"), -1).reshape(-1, 3).double()
        all_k = n @ reciprocal
        inside = all_k[(all_k.norm(dim=1) < k_max) & (all_k.norm(dim=1) > 0)]
        got = k[b][mask[b]]
        assert not bool((k[b][~mask[b]] != 0).any())
        assert 2 * len(got) == len(inside)
        both = torch.cat([got, -got])  # with their partners: exactly the ball
        key = lambda x: sorted(map(tuple, torch.round(x * 1e6).long().tolist()))
        assert key(both) == key(inside)


def test_fft_sizes():
    assert [fft_size(n) for n in (1, 7, 11, 14, 97, 127, 129, 178)] == [1, 8, 12, 15, 100, 128, 135, 180]


def test_metric_k_squared_equals_torchpme():
    from torchpme.lib.kvectors import generate_kvectors_for_mesh

    from equipot.electrostatics.coulomb import MetricKSpaceFilter

    _, _, cell = random_cell(np.random.default_rng(5), n=2, length=7.0)
    cell = torch.as_tensor(cell, dtype=torch.float64)
    for mesh in ([8, 9, 10], [15, 16, 7]):
        ns = torch.tensor(mesh)
        k = generate_kvectors_for_mesh(cell, ns)
        ours = MetricKSpaceFilter(cell, ns, kernel=CoulombPotential(smearing=1.0))._k_sq
        assert ours.shape == k.shape[:3]
        assert torch.allclose(ours, (k**2).sum(-1), rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("nodes", [4, 5, 7])
def test_mesh_pme_equals_torchpme_on_the_same_mesh(nodes):
    """Our mesh choice, |k|² and separable interpolation around torch-pme's weights and kernel
    change nothing else: potentials and their gradients (forces, stress) to rounding."""
    from torchpme import PMECalculator
    from torchpme.lib.kvectors import get_ns_mesh

    charges, positions, cell = random_cell(np.random.default_rng(3), n=30, length=9.0)
    q, c = (torch.as_tensor(x, dtype=torch.float64) for x in (charges[:, None], cell))
    empty = (torch.zeros((0, 2), dtype=torch.long), torch.zeros(0, dtype=torch.float64))
    potential = CoulombPotential(smearing=1.0)
    results = []
    for solver in (PMECalculator(potential, mesh_spacing=0.7, interpolation_nodes=nodes),
                   MeshPME(potential, lambda cell: get_ns_mesh(cell, 0.7), interpolation_nodes=nodes)):
        pos = torch.as_tensor(positions, dtype=torch.float64).requires_grad_(True)
        box = c.clone().requires_grad_(True)
        phi = solver(q, box, pos, *empty)
        grads = torch.autograd.grad((phi * q).sum(), [pos, box])
        results.append((phi.detach(), *grads))
    (theirs, f_theirs, c_theirs), (ours, f_ours, c_ours) = results
    assert torch.allclose(ours, theirs, rtol=1e-12, atol=1e-14)
    assert torch.allclose(f_ours, f_theirs, rtol=1e-12, atol=1e-13)
    assert torch.allclose(c_ours, c_theirs, rtol=1e-12, atol=1e-13)


@pytest.mark.parametrize("accuracy", [1e-3, 1e-4, 1e-5])
@pytest.mark.parametrize("smearing", [0.8, 1.5])
def test_pme_meets_the_stated_accuracy(accuracy, smearing):
    """Relative RMS error of the forces (and of energy and virial) against a converged Ewald sum."""
    charges, positions, cell = random_cell(np.random.default_rng(4), n=60, length=11.0)
    e0, f0, w0 = energy(Electrostatics(smearing, "ewald", accuracy=1e-10), charges, positions, cell)
    e, f, w = energy(Electrostatics(smearing, "pme", accuracy=accuracy), charges, positions, cell)
    assert np.sqrt(((f - f0) ** 2).mean() / (f0**2).mean()) < accuracy
    assert abs(e - e0) < accuracy * abs(e0)
    assert np.abs(w - w0).max() < accuracy * np.abs(w0).max()


@pytest.mark.parametrize("accuracy", [1e-3, 1e-4, 1e-5])
@pytest.mark.parametrize("cutoff", [4.0, 6.0])
@pytest.mark.parametrize("total_charge", [0.0, 5.0])
@pytest.mark.parametrize("method", ["pme", "ewald"])
def test_range_split_meets_the_stated_accuracy(accuracy, cutoff, total_charge, method):
    """PME on the coarser mesh of σ_k (Ewald on fewer k-vectors) plus the pair sum within the
    cutoff, against converged Ewald."""
    rng = np.random.default_rng(9)
    charges, positions, cell = random_cell(rng, n=100, length=10.0)  # 0.1 charges per Å³
    charges = charges + total_charge / len(charges)
    split = Electrostatics(0.7, method, accuracy=accuracy, pair_cutoff=cutoff)
    assert split.mesh_smearing > 1.1 * split.smearing  # the split is on, its mesh is coarser
    e0, f0, w0 = energy(Electrostatics(0.7, "ewald", accuracy=1e-10), charges, positions, cell)
    e, f, w = energy(split, charges, positions, cell, pair_cutoff=cutoff)
    assert np.sqrt(((f - f0) ** 2).mean() / (f0**2).mean()) < accuracy
    assert abs(e - e0) < accuracy * abs(e0)
    assert np.abs(w - w0).max() < accuracy * np.abs(w0).max()
    # without the pairs the same solver falls back to σ (the fine mesh, more k-vectors)
    e1, f1, _ = energy(split, charges, positions, cell)
    assert np.abs(f1 - f).max() > 1e-4 * accuracy * np.abs(f0).max()  # the split did run: its errors differ
    assert np.sqrt(((f1 - f0) ** 2).mean() / (f0**2).mean()) < accuracy and abs(e1 - e0) < accuracy * abs(e0)


def test_range_split_is_exact_when_the_pairs_reach_far_enough():
    """With every pair where v_σ − v_σk matters, the split equals converged Ewald to the fine
    mesh's error: its self and background terms are right (charged cell)."""
    rng = np.random.default_rng(10)
    charges, positions, cell = random_cell(rng, n=40, length=9.0)
    charges = charges + 0.05
    e0, f0, w0 = energy(Electrostatics(0.6, "ewald", accuracy=1e-10), charges, positions, cell)
    solver = Electrostatics(0.6, "pme", accuracy=1e-6)
    solver.pair_cutoff, solver.mesh_smearing = 8.0, 1.2  # erfc(8 / (√2 · 1.2)) ≈ 2e-11
    solver.mesh_potential = type(solver.potential)(smearing=1.2, prefactor=solver.potential.prefactor)
    solver.pme_split = MeshPME(solver.mesh_potential, lambda c: torch.tensor([64, 64, 64]))  # h/σ_k ≈ 0.12
    e, f, w = energy(solver, charges, positions, cell, pair_cutoff=8.0)
    assert abs(e - e0) < 1e-8 * abs(e0)
    assert np.abs(f - f0).max() < 1e-6 * np.abs(f0).max()
    assert np.abs(w - w0).max() < 1e-6 * np.abs(w0).max()


def test_range_split_energy_is_continuous_when_a_pair_crosses_the_cutoff():
    solver = Electrostatics(1.0, "pme", accuracy=1e-4, pair_cutoff=5.0)
    cell = np.eye(3) * 13.0
    jump = 0.5 * K_E * abs(float(solver.potential.lr_from_dist(torch.tensor([5.0]))
                                 - solver.mesh_potential.lr_from_dist(torch.tensor([5.0]))))
    assert jump > 1e-5  # what an unshifted pair term would jump by (eV, unit charges)
    energies = [energy(solver, [1.0, -1.0], [[1.0, 2.0, 3.0], [1.0 + r, 2.0, 3.0]], cell, pair_cutoff=5.0)[0]
                for r in (5.0 - 1e-7, 5.0 + 1e-7)]
    assert abs(energies[1] - energies[0]) < 1e-7


def test_auto_picks_pme_for_large_cells_and_agrees_with_ewald():
    charges, positions, cell = random_cell(np.random.default_rng(2), n=40)
    auto = Electrostatics(1.0, "auto", pme_min_atoms=30)
    e_auto, _, _ = energy(auto, charges, positions, cell)
    e_ewald, _, _ = energy(Electrostatics(1.0, "ewald"), charges, positions, cell)
    assert abs(e_auto - e_ewald) / len(charges) < 1e-4


def test_batched_mixed_open_and_periodic_equals_one_by_one():
    rng = np.random.default_rng(3)
    solver = Electrostatics(1.0)
    structures = []
    for n, periodic in ((5, False), (7, True), (3, False), (9, True)):
        q = rng.normal(size=n)
        cell = np.eye(3) * 6 + rng.uniform(-0.5, 0.5, (3, 3)) if periodic else np.zeros((3, 3))
        structures.append((q, rng.uniform(0, 6, (n, 3)), cell, periodic))
    alone = [solver(torch.as_tensor(q), torch.as_tensor(p), torch.as_tensor(c)[None], torch.full((1, 3), per),
                    torch.zeros(len(q), dtype=torch.long), 1) for q, p, c, per in structures]
    counts = [len(s[0]) for s in structures]
    node_graph = torch.repeat_interleave(torch.arange(4), torch.tensor(counts))
    together = solver(torch.as_tensor(np.concatenate([s[0] for s in structures])),
                      torch.as_tensor(np.concatenate([s[1] for s in structures])),
                      torch.as_tensor(np.stack([s[2] for s in structures])),
                      torch.tensor([[s[3]] * 3 for s in structures]), node_graph, 4)
    assert torch.allclose(together, torch.cat(alone), rtol=1e-12, atol=1e-12)


def test_batched_mixed_batch_with_pme_and_the_range_split_equals_one_by_one():
    """Open molecules, small cells (Ewald, padded k-vectors of different sizes) and large cells
    (range-split PME, pairs given) in one batch: each structure as if alone."""
    rng = np.random.default_rng(13)
    solver = Electrostatics(0.8, "auto", pme_min_atoms=30, pair_cutoff=4.0)
    structures = []
    for n, length in ((5, None), (8, 5.0), (40, 11.0), (3, None), (12, 15.0), (35, 9.0)):
        q = rng.normal(size=n)
        cell = np.eye(3) * length + rng.uniform(-0.5, 0.5, (3, 3)) if length else np.zeros((3, 3))
        structures.append((q, rng.uniform(0, length or 6.0, (n, 3)), cell, length is not None))

    def pairs_of(positions, cell, pbc, offset):
        src, dst, shift = neighbor_list(positions, cell, np.full(3, pbc), 4.0)
        vec = positions[dst] - positions[src] + shift @ cell
        return torch.as_tensor(src + offset), torch.as_tensor(dst + offset), torch.as_tensor(vec)

    alone = [solver(torch.as_tensor(q), torch.as_tensor(p), torch.as_tensor(c)[None], torch.full((1, 3), per),
                    torch.zeros(len(q), dtype=torch.long), 1, pairs_of(p, c, per, 0))
             for q, p, c, per in structures]
    counts = [len(s[0]) for s in structures]
    offsets = np.cumsum([0] + counts[:-1])
    parts = [pairs_of(p, c, per, o) for (q, p, c, per), o in zip(structures, offsets)]
    pairs = tuple(torch.cat([part[k] for part in parts]) for k in range(3))
    node_graph = torch.repeat_interleave(torch.arange(len(structures)), torch.tensor(counts))
    together = solver(torch.as_tensor(np.concatenate([s[0] for s in structures])),
                      torch.as_tensor(np.concatenate([s[1] for s in structures])),
                      torch.as_tensor(np.stack([s[2] for s in structures])),
                      torch.tensor([[s[3]] * 3 for s in structures]), node_graph, len(structures), pairs)
    assert torch.allclose(together, torch.cat(alone), rtol=1e-10, atol=1e-12)


def test_direct_sum_closed_form():
    solver = Electrostatics(smearing=0.7, method="direct")
    from math import erf, sqrt

    for r in (0.5, 3.0, 12.0):
        e, f, _ = energy(solver, [1.0, -1.0], [[0, 0, 0], [r, 0, 0]], np.zeros((3, 3)), pbc=False)
        assert e == pytest.approx(-K_E * erf(r / (sqrt(2) * 0.7)) / r, rel=1e-12)


def test_solver_errors_are_clear():
    with pytest.raises(LongRangeError, match="method"):
        Electrostatics(1.0, "p3m")
    slab = Electrostatics(1.0)
    with pytest.raises(LongRangeError, match="slabs"):
        slab(torch.ones(2), torch.zeros(2, 3), torch.eye(3)[None], torch.tensor([[True, True, False]]),
             torch.zeros(2, dtype=torch.long), 1)
    with pytest.raises(LongRangeError, match="periodic"):
        Electrostatics(1.0, "direct")(torch.ones(2), torch.rand(2, 3), torch.eye(3)[None] * 5,
                                      torch.ones(1, 3, dtype=bool), torch.zeros(2, dtype=torch.long), 1)


# ------------------------------------------------------------------------- the long-range model
SPECIES = [1, 8, 11, 17]


def lr_model(method="auto", seed=0, smearing=1.0, accuracy=1e-8):
    torch.manual_seed(seed)
    config = ModelConfig(r_max=3.0, channels=4, lmax=1, num_basis=4, radial_hidden=[8], readout_hidden=4,
                         correlation=2, long_range=LongRangeConfig(method=method, smearing=smearing, accuracy=accuracy))
    stats = Statistics(species=SPECIES, e0={z: 0.0 for z in SPECIES}, energy_shift=0.0, energy_scale=1.0,
                       avg_num_neighbors=5.0)
    return build_model(config, stats).double()


def test_long_range_model_adds_charges_and_the_energy_split():
    model = lr_model()
    assert "charges" in model.output_fields
    config = random_structure(np.random.default_rng(4), 6, box=6.0, symbols=SPECIES)
    out = model(to_graph(config, 3.0))
    assert torch.allclose(out["energy"], out["energies"].sum() * torch.ones(1))
    assert float(out["energy_long_range"].detach().abs()) > 1e-6
    assert torch.allclose(out["energy_long_range"], out["energies_long_range"].sum() * torch.ones(1))


@pytest.mark.parametrize("total_charge", [-1.0, 0.0, 1.0])
def test_long_range_model_is_equivariant_and_conserves_charge(total_charge):
    model = lr_model()
    config = random_structure(np.random.default_rng(5), 7, box=5.0, symbols=SPECIES)
    config.total_charge = total_charge
    check_potential_equivariance(model, config, 3.0, n_elements=3)
    q = model(to_graph(config, 3.0))["charges"].detach()
    assert abs(float(q.sum()) - total_charge) < 1e-10


def test_long_range_model_is_equivariant_periodic():
    model = lr_model()
    rng = np.random.default_rng(6)
    config = random_structure(rng, 6, cell=triclinic_cell(rng, length=4.5), symbols=SPECIES)
    check_potential_equivariance(model, config, 3.0, n_elements=3)


@pytest.mark.parametrize("periodic", [False, True])
def test_long_range_forces_and_stress_match_finite_differences(periodic):
    from ase.calculators.fd import calculate_numerical_forces, calculate_numerical_stress

    from equipot import EquipotCalculator

    model = lr_model()
    rng = np.random.default_rng(7)
    cell = triclinic_cell(rng, length=4.5) if periodic else None
    config = random_structure(rng, 6, cell=cell, symbols=SPECIES, box=5.0)
    atoms = Atoms(numbers=config.numbers, positions=config.positions, cell=config.cell, pbc=periodic)
    atoms.info["total_charge"] = 1.0
    atoms.calc = EquipotCalculator(model, dtype="float64")
    assert abs(atoms.calc.get_property("energy_long_range", atoms)) > 1e-3
    np.testing.assert_allclose(atoms.get_forces(), calculate_numerical_forces(atoms, eps=1e-4), rtol=0, atol=1e-6)
    if periodic:
        np.testing.assert_allclose(atoms.get_stress(), calculate_numerical_stress(atoms, eps=1e-5), rtol=0, atol=1e-7)


def test_long_range_model_with_the_range_split():
    """A PME model passes its neighbour list: the split is on, its forces and stress are the
    derivatives of its energy, and it agrees with the unsplit solver to the stated accuracy."""
    from ase.calculators.fd import calculate_numerical_forces, calculate_numerical_stress

    from equipot import EquipotCalculator

    model = lr_model(method="pme", smearing=0.4, accuracy=1e-5)
    assert model.long_range.mesh_smearing > 0.6  # r_max 3 Å: σ_k = 0.62 Å
    rng = np.random.default_rng(11)
    config = random_structure(rng, 8, cell=triclinic_cell(rng, length=5.0), symbols=SPECIES)
    atoms = Atoms(numbers=config.numbers, positions=config.positions, cell=config.cell, pbc=True)
    atoms.info["total_charge"] = 1.0
    atoms.calc = EquipotCalculator(model, dtype="float64")
    e_long = atoms.calc.get_property("energy_long_range", atoms)
    assert abs(e_long) > 1e-3
    forces, stress = atoms.get_forces(), atoms.get_stress()
    np.testing.assert_allclose(forces, calculate_numerical_forces(atoms, eps=1e-4), rtol=0, atol=1e-6)
    np.testing.assert_allclose(stress, calculate_numerical_stress(atoms, eps=1e-5), rtol=0, atol=1e-7)
    model.long_range.mesh_smearing = model.long_range.smearing  # the same model without the split
    unsplit = EquipotCalculator(model, dtype="float64")
    assert abs(unsplit.get_property("energy_long_range", atoms) - e_long) < 1e-5 * abs(e_long)
    assert np.abs(unsplit.get_property("forces", atoms) - forces).max() < 1e-5 * np.abs(forces).max() + 1e-6


def test_range_split_model_trains_with_forces_in_the_loss():
    """Training differentiates the forces again (double backward) through the split PME: the
    gradient of a force loss with respect to a weight matches a finite difference."""
    model = lr_model(method="pme", smearing=0.4, accuracy=1e-5)
    assert model.long_range.mesh_smearing > model.long_range.smearing
    rng = np.random.default_rng(12)
    config = random_structure(rng, 6, cell=triclinic_cell(rng, length=5.0), symbols=SPECIES)
    graph = to_graph(config, 3.0)
    weight = model.outputs.charges.out.weight

    def loss():
        return (model(graph, training=True)["forces"] ** 2).sum()

    (grad,) = torch.autograd.grad(loss(), weight)
    eps, values = 1e-6, []
    for step in (eps, -2 * eps, eps):
        with torch.no_grad():
            weight.view(-1)[0] += step
        values.append(float(loss().detach()))
    up, down = values[0], values[1]
    assert abs(float(grad.view(-1)[0])) > 1e-6
    assert float(grad.view(-1)[0]) == pytest.approx((up - down) / (2 * eps), rel=1e-5, abs=1e-9)


def test_long_range_config():
    config = config_from_dict({"model": {"long_range": {"smearing": 0.8}}})
    assert config.model.long_range.smearing == 0.8 and config.model.long_range.method == "auto"
    with pytest.raises(ConfigError, match="long_range.method"):
        config_from_dict({"model": {"long_range": {"method": "fmm"}}})
    with pytest.raises(ConfigError, match="did you mean 'smearing'"):
        config_from_dict({"model": {"long_range": {"smear": 0.8}}})


def test_long_range_model_file_round_trip(tmp_path):
    from equipot.model import load_model, save_model

    model = lr_model(seed=3)
    rng = np.random.default_rng(8)
    structures = [random_structure(rng, 6, box=5.0, symbols=SPECIES),
                  random_structure(rng, 5, cell=triclinic_cell(rng, length=4.5), symbols=SPECIES)]
    path = str(tmp_path / "lr.safetensors")
    save_model(path, model, model.model_config, model.statistics)
    again = load_model(path, dtype=torch.float64)
    assert again.model_config.long_range == model.model_config.long_range
    graph = make_batch(structures, 3.0)
    a, b = model(graph), again(graph)
    for key in ("energy", "forces", "stress", "charges", "energy_long_range"):
        assert torch.allclose(a[key], b[key], rtol=1e-12, atol=1e-12), key


def test_long_range_model_through_train_eval_calculator_and_md(tmp_path, io_config_dict, capsys):
    """A user's path with a long-range model: train (latent charges plus a dipole loss) from the
    CLI, eval (charges, the short/long split), the calculator's total charge, MD."""
    import yaml

    from equipot import EquipotCalculator
    from equipot.cli import main
    from equipot.train import MODEL

    source = SHARED_DATA / "xtb" / "dimers_lr" / "train.xyz"
    if not source.exists():
        pytest.skip("../shared/data/xtb/dimers_lr is not there")
    frames = ase.io.read(str(source), index=":16")
    data = tmp_path / "dimers.xyz"
    ase.io.write(str(data), frames, format="extxyz")
    values = io_config_dict("lr", max_epochs=2)
    values["data"]["train"] = str(data)
    values["data"]["keys"]["dipole"] = "dipole"
    values["model"].update({"outputs": {"dipole": "dipole"}, "long_range": {"smearing": 1.0}})
    values["training"]["loss"] = {"energy": 1.0, "forces": 10.0, "outputs": {"dipole": 1.0}}
    config = tmp_path / "lr.yaml"
    config.write_text(yaml.safe_dump(values))
    assert main(["train", str(config), "--quiet"]) == 0
    assert "valid_dipole_mae" in (tmp_path / "lr" / "metrics.csv").read_text().splitlines()[0]
    model = str(tmp_path / "lr" / MODEL)
    capsys.readouterr()

    assert main(["eval", model, str(data), "--out", str(tmp_path / "eval"), "--json", str(tmp_path / "e.json")]) == 0
    printed = capsys.readouterr().out
    assert "short range" in printed and "long range (electrostatic)" in printed and "dipole" in printed
    predicted = ase.io.read(str(tmp_path / "eval" / "dimers_predictions.xyz"), ":")
    for atoms, reference in zip(predicted, frames):
        predicted_energy = atoms.get_potential_energy()  # the predictions ride as the frame's results
        assert predicted_energy != pytest.approx(reference.get_potential_energy(), abs=1e-6)
        assert atoms.info["pred_energy_long_range"] + atoms.info["pred_energy_short_range"] == pytest.approx(
            predicted_energy, abs=1e-9)
        assert abs(atoms.arrays["pred_charges"].sum() - reference.info["total_charge"]) < 1e-4  # float32

    atoms = frames[0].copy()
    atoms.info["total_charge"] = -1
    atoms.calc = EquipotCalculator(model, dtype="float64", total_charge=1.0)  # the argument wins over atoms.info
    assert abs(atoms.get_charges().sum() - 1.0) < 1e-10
    assert np.isfinite(atoms.calc.results["energy_long_range"])

    assert main(["md", model, str(data), "--steps", "6", "--interval", "3", "--dtype", "float64",
                 "--total-charge", "0", "--out", str(tmp_path / "md"), "--threads", "1"]) == 0
    assert "NVE energy drift" in capsys.readouterr().out
    assert len(ase.io.read(str(tmp_path / "md" / "md.xyz"), ":")) == 3


def test_format_2_long_range_model_file_loads(tmp_path):
    """Format 2 files held every buffer, those of the solver's shared potential under each of
    its names (ewald.potential, pme.potential, ...): they are constants and still load."""
    from safetensors.torch import load_file, save_file

    from equipot.model import load_model, save_model

    model = lr_model(seed=4)
    path = str(tmp_path / "lr.safetensors")
    save_model(path, model, model.model_config, model.statistics)
    with open(path, "rb") as f:
        header = json.loads(f.read(int.from_bytes(f.read(8), "little")))
    metadata = {**header["__metadata__"], "format_version": "2"}
    old = {k: v.contiguous() for k, v in model.state_dict(keep_vars=False).items()}
    assert "long_range.ewald.potential.smearing" in old and "long_range.pme.potential.smearing" in old
    save_file({k: v.clone() for k, v in old.items()}, str(tmp_path / "v2.safetensors"), metadata=metadata)
    again = load_model(str(tmp_path / "v2.safetensors"), dtype=torch.float64)
    for name, value in model.named_parameters():
        assert torch.equal(dict(again.named_parameters())[name], value)
    assert set(load_file(path)) == {name for name, _ in model.named_parameters()}


def test_born_charges_with_the_long_range_term():
    """A long-range model with a dipole and Born charges: Z*_i = ∂μ/∂r_i (finite differences),
    Σ_i Z*_i = 0 when neutral, and the charges still sum to the total charge."""
    from equipot.config import OutputConfig

    torch.manual_seed(5)
    config = ModelConfig(r_max=3.0, channels=4, lmax=1, num_basis=4, radial_hidden=[8], readout_hidden=4,
                         correlation=2, long_range=LongRangeConfig(smearing=1.0),
                         outputs={"dipole": OutputConfig("dipole"), "born": OutputConfig("born_charges")})
    stats = Statistics(species=SPECIES, e0={z: 0.0 for z in SPECIES}, energy_shift=0.0, energy_scale=1.0,
                       avg_num_neighbors=5.0)
    model = build_model(config, stats).double()
    structure = random_structure(np.random.default_rng(31), 6, box=4.0, symbols=SPECIES)
    out = model(to_graph(structure, 3.0))
    born, charges = out["born"].detach(), out["charges"].detach()
    assert born.abs().max() > 1e-6 and torch.allclose(born.sum(0), torch.zeros(3, 3), atol=1e-10)
    eps, atom, beta = 1e-5, 3, 2
    moved = []
    for sign in (1, -1):
        p = structure.positions.copy()
        p[atom, beta] += sign * eps
        c = Configuration(numbers=structure.numbers, positions=p, cell=structure.cell, pbc=structure.pbc)
        moved.append(model(to_graph(c, 3.0))["dipole"][0].detach())
    assert torch.allclose(born[atom, :, beta], (moved[0] - moved[1]) / (2 * eps), atol=1e-8)
    assert float(charges.abs().max()) > 1e-6 and abs(float(charges.sum())) < 1e-10
