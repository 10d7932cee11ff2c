"""Typed outputs (issue 3): charges, dipoles, polarizabilities, pseudoscalars, SE(3) scalars.

Random weights, float64. Every output must transform as its field declares under proper and
improper rotations, translations and permutations; symmetry then dictates exact zeros and
sign flips that no training can break.
"""

from pathlib import Path

import ase.data
import ase.io
import numpy as np
import pytest
import torch
from ase import Atoms
from ase.build import molecule

from equipot.config import ConfigError, ModelConfig, OutputConfig, config_from_dict
from equipot.data import Configuration, DataError, Statistics, make_batch, read_configurations, to_graph
from equipot.fields import output_field
from equipot.model import build_model

from equivariance import check_equivariance, check_potential_equivariance, random_structure, triclinic_cell, Spec

SHARED_DATA = Path(__file__).resolve().parents[2] / "shared" / "data"
R_MAX = 3.0
SPECIES = [1, 6, 7, 8, 17]
ALL_OUTPUTS = {
    "charges": "charges", "dipole": "dipole", "polarizability": "polarizability", "chirality": "0o",
    "score": "se3_scalar", "vectors": ("1o", "node"), "tensor": "ij", "mixed": "0e+1e+2o",
    "born": "born_charges",
}


@pytest.fixture(scope="module", autouse=True)
def float64(float64_without_einsum_search):
    yield


def make_model(outputs, lmax=2, parity="both", seed=0, correlation=3, gate_odd=False, atomic_dipoles=True):
    torch.manual_seed(seed)
    declared = {k: OutputConfig(*v) if isinstance(v, tuple) else OutputConfig(v) for k, v in outputs.items()}
    config = ModelConfig(r_max=R_MAX, channels=4, lmax=lmax, parity=parity, correlation=correlation, num_basis=4,
                         radial_hidden=[8], readout_hidden=4, outputs=declared, gate_odd_outputs=gate_odd,
                         atomic_dipoles=atomic_dipoles)
    stats = Statistics(species=SPECIES, e0={z: 0.0 for z in SPECIES}, energy_shift=0.0, energy_scale=1.0,
                       avg_num_neighbors=6.0)
    return build_model(config, stats).double()


@pytest.fixture(scope="module")
def model(float64):
    return make_model(ALL_OUTPUTS)


def outputs(model, config):
    return {k: v.detach() for k, v in model(to_graph(config, R_MAX)).items()}


def from_atoms(atoms, total_charge=0.0):
    return Configuration(numbers=atoms.numbers, positions=atoms.positions, cell=np.array(atoms.cell),
                         pbc=atoms.pbc.copy(), total_charge=total_charge)


def mirrored(config):
    """The mirror image (x -> -x) of a structure: its enantiomer if it is chiral."""
    flip = np.diag([-1.0, 1.0, 1.0])
    return Configuration(numbers=config.numbers, positions=config.positions @ flip, cell=config.cell @ flip,
                         pbc=config.pbc, total_charge=config.total_charge)


def chiral_molecule():
    """CHFClBr-like: four different substituents (here H, N, O, Cl) on a tetrahedral carbon."""
    d = 1.1
    tet = np.array([[1, 1, 1], [1, -1, -1], [-1, 1, -1], [-1, -1, 1]]) / np.sqrt(3)
    atoms = Atoms("CHNOCl", positions=np.vstack([[0, 0, 0], d * tet * np.array([1.0, 1.3, 1.4, 1.6])[:, None]]))
    return from_atoms(atoms)


# ------------------------------------------------------------------------- equivariance
@pytest.mark.parametrize("total_charge", [-1.0, 0.0, 1.0])
def test_every_output_is_equivariant_open(model, total_charge):
    config = random_structure(np.random.default_rng(5), 8, box=3.4, symbols=SPECIES)
    config.total_charge = total_charge
    check_potential_equivariance(model, config, R_MAX, n_elements=4)


def test_every_output_is_equivariant_periodic(model):
    rng = np.random.default_rng(6)
    config = random_structure(rng, 6, cell=triclinic_cell(rng, length=3.8), symbols=SPECIES)
    check_potential_equivariance(model, config, R_MAX, n_elements=3)


def test_se3_scalar_is_invariant_under_rotations_but_not_reflections(model):
    config = random_structure(np.random.default_rng(8), 7, box=3.3, symbols=SPECIES)
    positions = torch.as_tensor(config.positions)

    def score(pos, numbers=config.numbers):
        moved = Configuration(numbers=numbers, positions=pos.numpy(), cell=config.cell, pbc=config.pbc)
        return outputs(model, moved)["score"]

    # proper rotations (and translations, permutations): exactly invariant
    reference = score(positions)
    rng = torch.Generator().manual_seed(3)
    from e3nn import o3

    for _ in range(3):
        R = o3.rand_matrix(dtype=torch.float64)
        shift = torch.randn(3, generator=rng, dtype=torch.float64)
        perm = torch.randperm(len(positions), generator=rng)
        moved = score((positions @ R.T + shift)[perm], config.numbers[perm.numpy()])
        assert torch.allclose(moved, reference, rtol=1e-10, atol=1e-12)
    # a reflection changes it: not E(3)-invariant, and not a mere sign flip either
    reflected = score(positions @ torch.diag(torch.tensor([-1.0, 1.0, 1.0])))
    assert (reflected - reference).abs().max() > 1e-8 * reference.abs().max()  # float64 noise is ~1e-15
    assert (reflected + reference).abs().max() > 1e-8 * reference.abs().max()


def test_gated_odd_heads_are_equivariant_and_flip_in_a_mirror():
    """model.gate_odd_outputs: a pseudoscalar unit times a sigmoid of invariants is still a
    pseudoscalar, open and periodic; the gates are used (the outputs differ from the plain head's)."""
    outputs_ = {"chirality": "0o", "mixed": "0e+0o+1e+2o", "charges": "charges"}
    gated = make_model(outputs_, lmax=2, seed=4, gate_odd=True)
    heads = gated.outputs.heads
    assert heads["chirality"].odd_gate is not None and heads["mixed"].odd_gate is not None
    assert gated.outputs.charges.odd_gate is None  # no 0o units to gate
    rng = np.random.default_rng(13)
    config = random_structure(rng, 8, box=3.4, symbols=SPECIES)
    check_potential_equivariance(gated, config, R_MAX, n_elements=3)
    periodic = random_structure(rng, 6, cell=triclinic_cell(rng, length=3.8), symbols=SPECIES)
    check_potential_equivariance(gated, periodic, R_MAX, n_elements=2)
    left = chiral_molecule()
    a, b = outputs(gated, left), outputs(gated, mirrored(left))
    assert a["chirality"].abs().max() > 1e-8
    assert torch.allclose(a["chirality"], -b["chirality"], rtol=1e-10, atol=0)
    # the plain head with the same other weights: shut gates (sigmoid(0) = 1/2) halve its 0o units
    plain = make_model(outputs_, lmax=2, seed=4)
    missing, unexpected = plain.load_state_dict(gated.state_dict(), strict=False)
    assert not missing and unexpected and all("odd_gate" in k for k in unexpected)
    p = outputs(plain, left)
    assert torch.allclose(p["energy"], a["energy"], rtol=1e-12, atol=0)
    assert not torch.allclose(p["chirality"], 2 * a["chirality"], rtol=1e-6, atol=0)  # the gates act
    with torch.no_grad():
        for head in heads.values():
            if head.odd_gate is not None:
                head.odd_gate.weight.zero_()
    assert torch.allclose(outputs(gated, left)["chirality"], 0.5 * p["chirality"], rtol=1e-10, atol=0)


# ------------------------------------------------------------------------- enantiomers
def enantiomer_pair():
    if (SHARED_DATA / "xtb" / "chirality" / "train.xyz").is_file():
        frames = ase.io.read(SHARED_DATA / "xtb" / "chirality" / "train.xyz", ":40")
        by_pair = {}
        for a in frames:
            by_pair.setdefault(a.info["pair_id"], []).append(a)
        pair = next(p for p in by_pair.values() if len(p) == 2)
        return [from_atoms(a) for a in pair], True
    config = chiral_molecule()
    return [config, mirrored(config)], False


def test_enantiomers_equal_energy_mirrored_forces_opposite_pseudoscalar(model):
    (left, right), from_data = enantiomer_pair()
    if from_data:  # the data set's partner is a mirror image in some orientation: compare to our own mirror
        right = mirrored(left)
    a, b = outputs(model, left), outputs(model, right)
    flip = torch.diag(torch.tensor([-1.0, 1.0, 1.0]))
    assert torch.allclose(a["energy"], b["energy"], rtol=1e-10, atol=0)
    assert torch.allclose(a["forces"] @ flip, b["forces"], rtol=1e-10, atol=1e-12 * a["forces"].abs().max())
    assert a["chirality"].abs().max() > 1e-8, "a chiral molecule must have a nonzero pseudoscalar"
    assert torch.allclose(a["chirality"], -b["chirality"], rtol=1e-10, atol=0)
    assert torch.allclose(a["charges"], b["charges"], rtol=1e-10, atol=1e-14)
    assert torch.allclose(a["dipole"] @ flip, b["dipole"], rtol=1e-10, atol=1e-14)


def test_data_set_enantiomers_have_equal_energy_and_opposite_pseudoscalar(model):
    path = SHARED_DATA / "xtb" / "chirality" / "train.xyz"
    if not path.is_file():
        pytest.skip("shared data not present")
    (left, right), _ = enantiomer_pair()
    a, b = outputs(model, left), outputs(model, right)
    # the file's coordinates are rounded to ~1e-8 Å, so the pair is a mirror image to that precision only
    assert torch.allclose(a["energy"], b["energy"], rtol=1e-6, atol=0)
    assert a["chirality"].abs().max() > 1e-6
    assert torch.allclose(a["chirality"], -b["chirality"], rtol=1e-4, atol=0)


# ------------------------------------------------------------------------- selection rules
def centrosymmetric_molecules():
    found = {"CO2": molecule("CO2"), "benzene": molecule("C6H6"), "C2H2": molecule("C2H2")}
    path = SHARED_DATA / "xtb" / "dipoles" / "reference.xyz"
    if path.is_file():
        found["dce_anti"] = next(a for a in ase.io.read(path, ":") if a.info.get("molecule") == "dce_anti")
    return found


@pytest.mark.parametrize("name", sorted(centrosymmetric_molecules()))
def test_centrosymmetric_molecule_has_zero_dipole(name):
    atoms = centrosymmetric_molecules()[name]
    model = make_model({"dipole": "dipole", "chirality": "0o"}, lmax=2, seed=1)
    big = Configuration(numbers=atoms.numbers, positions=atoms.positions + [0.3, -1.2, 2.0], cell=np.zeros((3, 3)),
                        pbc=np.zeros(3, bool))
    model.model_config.r_max = R_MAX
    out = {k: v.detach() for k, v in model(to_graph(big, R_MAX)).items()}
    assert float(out["dipole"].norm()) < 1e-10
    assert float(out["chirality"].abs().max()) < 1e-10  # these molecules have mirror planes too


@pytest.mark.parametrize("name", ["CH3OH", "H2O", "CH3CHO"])
def test_pseudoscalar_of_molecule_with_mirror_plane_is_zero(model, name):
    out = outputs(model, from_atoms(molecule(name)))
    scale = float(out["energies"].abs().max())
    assert float(out["chirality"].abs().max()) < 1e-12 * max(scale, 1.0)


def test_polar_molecule_has_a_dipole(model):
    out = outputs(model, from_atoms(molecule("H2O")))
    assert float(out["dipole"].norm()) > 1e-6


# ------------------------------------------------------------------------- charges
@pytest.mark.parametrize("total_charge", [-1.0, 0.0, 1.0])
def test_charges_sum_to_the_total_charge(model, total_charge):
    configs = [random_structure(np.random.default_rng(s), n, box=3.5, symbols=SPECIES) for s, n in ((1, 5), (2, 9))]
    for k, c in enumerate(configs):
        c.total_charge = total_charge if k == 0 else -total_charge
    graph = make_batch(configs, R_MAX)
    out = model(graph)
    sums = torch.zeros(2, dtype=torch.float64).index_add(0, graph.node_graph, out["charges"].detach())
    assert abs(float(sums[0]) - total_charge) < 1e-10 and abs(float(sums[1]) + total_charge) < 1e-10


def test_dipole_of_charged_molecule_is_about_the_centre_of_mass():
    """For Q != 0 the dipole depends on the origin: equipot takes the centre of mass."""
    model = make_model({"dipole": "dipole"}, lmax=0, parity="natural", seed=4)  # charges only, no atomic dipoles
    atoms = molecule("H2O")
    config = from_atoms(atoms, total_charge=1.0)
    out = outputs(model, config)
    g = to_graph(config, R_MAX)
    vec = g.positions[g.edge_src] - g.positions[g.edge_dst]  # an open structure: no image shifts
    _, features = model.energy_model(model.species_index(g.numbers), vec, g.edge_src, g.edge_dst)
    raw = model.outputs.charges(features).squeeze(-1).detach()
    q = raw + (1.0 - raw.sum()) / len(raw)
    centre = torch.as_tensor(atoms.get_center_of_mass())
    expected = (q[:, None] * (torch.as_tensor(atoms.positions) - centre)).sum(0)
    assert torch.allclose(out["dipole"][0], expected, atol=1e-12)
    shifted = outputs(model, from_atoms(Atoms(atoms.numbers, atoms.positions + 5.0), total_charge=1.0))
    assert torch.allclose(shifted["dipole"], out["dipole"], atol=1e-10)


def test_point_charge_dipole_is_the_sum_of_charges_times_positions():
    """atomic_dipoles: false: an equivariant model (vectors in its features) whose dipole is
    Σ q_i (r_i − r_c) of its charges alone, exactly, and still equivariant."""
    model = make_model({"dipole": "dipole", "charges": "charges"}, lmax=1, parity="natural", seed=5,
                       atomic_dipoles=False)
    assert model.outputs.atomic_dipoles is None
    structure = random_structure(np.random.default_rng(31), 7, box=3.3, symbols=SPECIES)
    out = outputs(model, structure)
    mass = torch.as_tensor(ase.data.atomic_masses[structure.numbers])
    positions = torch.as_tensor(structure.positions)
    centre = (mass[:, None] * positions).sum(0) / mass.sum()
    expected = (out["charges"][:, None] * (positions - centre)).sum(0)
    assert float(out["dipole"].norm()) > 1e-6
    assert torch.allclose(out["dipole"][0], expected, atol=1e-12)
    with_dipoles = make_model({"dipole": "dipole", "charges": "charges"}, lmax=1, parity="natural", seed=5)
    assert with_dipoles.outputs.atomic_dipoles is not None
    check_potential_equivariance(model, structure, R_MAX, n_elements=3)


def test_atomic_dipoles_switch_is_read_from_the_config_and_kept_in_the_model_file(tmp_path):
    from equipot.model import load_model, save_model

    config = config_from_dict({"model": {"lmax": 1, "channels": 4, "atomic_dipoles": False,
                                         "outputs": {"dipole": "dipole"}}})
    assert config.model.atomic_dipoles is False
    with pytest.raises(ConfigError, match="atomic_dipoles"):
        config_from_dict({"model": {"atomic_dipoles": "no"}})
    model = make_model({"dipole": "dipole"}, lmax=1, parity="natural", atomic_dipoles=False)
    save_model(str(tmp_path / "m.safetensors"), model, model.model_config, model.statistics)
    loaded = load_model(str(tmp_path / "m.safetensors"), dtype=torch.float64)
    assert loaded.model_config.atomic_dipoles is False and loaded.outputs.atomic_dipoles is None


# ------------------------------------------------------------------------- baselines and config
def test_invariant_baseline_cannot_tell_enantiomers_apart():
    model = make_model({"chirality": "0e"}, lmax=0, parity="natural", seed=2)
    left = chiral_molecule()
    a, b = outputs(model, left), outputs(model, mirrored(left))
    assert torch.allclose(a["chirality"], b["chirality"], rtol=1e-12, atol=1e-14)
    assert torch.allclose(a["energy"], b["energy"], rtol=1e-12, atol=0)


def test_dipole_of_invariant_baseline_comes_from_charges_alone():
    model = make_model({"dipole": "dipole"}, lmax=0, parity="natural")
    assert model.outputs.atomic_dipoles is None
    check_potential_equivariance(model, random_structure(np.random.default_rng(9), 6, box=3.2, symbols=SPECIES), R_MAX)


@pytest.mark.parametrize("outputs_, lmax, parity, message", [
    ({"chirality": "0o"}, 2, "natural", "parity: both"),
    ({"chirality": "0o"}, 0, "both", "lmax >= 1"),
    ({"polarizability": "polarizability"}, 1, "natural", "lmax >= 2"),
    ({"x": "spin"}, 1, "natural", "unknown type"),
    ({"energy": "0e"}, 1, "natural", "reserved"),
    ({"q": {"type": "charges", "level": "graph"}}, 1, "natural", "per atom"),
])
def test_impossible_outputs_fail_when_the_config_is_read(outputs_, lmax, parity, message):
    with pytest.raises(ConfigError, match=message):
        config_from_dict({"model": {"lmax": lmax, "parity": parity, "outputs": outputs_}}, "test.yaml")


def test_loss_on_an_undeclared_output_is_refused():
    with pytest.raises(ConfigError, match="model.outputs does not declare"):
        config_from_dict({"training": {"loss": {"outputs": {"dipole": 1.0}}}}, "test.yaml")
    with pytest.raises(ConfigError, match="data.keys may map"):
        config_from_dict({"data": {"keys": {"dipole": "dipole"}}}, "test.yaml")


def test_short_form_of_output_declaration():
    config = config_from_dict({"model": {"parity": "both", "outputs": {"mu": "dipole", "chi": {"type": "0o"}}}})
    assert config.model.outputs["mu"] == OutputConfig("dipole") and config.model.outputs["chi"].type == "0o"


def test_dipole_label_on_a_periodic_structure_is_refused(tmp_path):
    atoms = Atoms("H2O", positions=[[0, 0, 0], [0.96, 0, 0], [-0.24, 0.93, 0]], cell=[5, 5, 5], pbc=True)
    atoms.info["dipole"] = np.array([0.1, 0.2, 0.3])
    path = tmp_path / "pbc.xyz"
    ase.io.write(path, atoms, format="extxyz")
    fields = {"dipole": output_field("dipole", "dipole")}
    with pytest.raises(DataError, match=r"frame 0.*'dipole'.*periodic"):
        read_configurations(str(path), keys={"dipole": "dipole"}, fields=fields)


def test_polarizability_read_in_voigt_or_full_form(tmp_path):
    frames = []
    for values in ([1, 2, 3, 4, 5, 6], [[1, 6, 5], [6, 2, 4], [5, 4, 3]]):
        a = molecule("H2O")
        a.info["alpha"] = np.array(values, dtype=float).reshape(-1)
        a.info["total_charge"] = -1
        frames.append(a)
    ase.io.write(tmp_path / "p.xyz", frames, format="extxyz")
    fields = {"polarizability": output_field("polarizability", "polarizability")}
    configs = read_configurations(str(tmp_path / "p.xyz"), keys={"polarizability": "alpha"}, fields=fields)
    assert np.allclose(configs[0].targets["polarizability"], configs[1].targets["polarizability"])
    assert configs[0].total_charge == -1.0


# ------------------------------------------------------------------------- training and use
TOY_CHARGE = {1: 0.12, 6: -0.10, 8: -0.35}


@pytest.fixture(scope="module")
def labelled_xyz(tmp_path_factory):
    """acac structures with toy charges (per element, made neutral) and their dipoles."""
    demo = Path(__file__).resolve().parents[1] / "equipot" / "demo_data" / "acac_train.xyz"
    frames = ase.io.read(str(demo), index=":24")
    for a in frames:
        q = np.array([TOY_CHARGE[z] for z in a.numbers])
        q -= q.mean()
        a.arrays["toy_q"] = q
        a.info["toy_mu"] = (q[:, None] * (a.positions - a.get_center_of_mass())).sum(0)
    path = tmp_path_factory.mktemp("outputs_data") / "acac_dipoles.xyz"
    ase.io.write(str(path), frames, format="extxyz")
    return path


def test_training_with_dipole_and_charges_then_eval_and_calculator(labelled_xyz, tmp_path, io_config_dict):
    import csv
    import subprocess
    import sys

    from equipot import EquipotCalculator
    from equipot.model import load_model
    from equipot.train import MODEL, Trainer

    values = io_config_dict("dip", max_epochs=12)
    values["data"]["train"] = str(labelled_xyz)
    values["data"]["keys"].update({"dipole": "toy_mu", "charges": "toy_q"})
    values["model"]["outputs"] = {"dipole": "dipole", "charges": "charges"}
    values["training"]["loss"] = {"energy": 1.0, "forces": 10.0, "outputs": {"dipole": 10.0, "charges": 10.0}}
    values["training"]["dtype"] = "float64"
    result = Trainer(config_from_dict(values), progress=False).run()
    assert result["epochs"] == 12
    rows = list(csv.DictReader(open(tmp_path / "dip" / "metrics.csv")))
    assert {"valid_dipole_mae", "valid_dipole_r2", "valid_charges_rmse"} <= set(rows[0])
    assert float(rows[-1]["valid_dipole_mae"]) < 0.7 * float(rows[0]["valid_dipole_mae"])

    model_path = tmp_path / "dip" / MODEL
    frames = ase.io.read(str(labelled_xyz), ":3")
    calc = EquipotCalculator(str(model_path), dtype="float64")
    atoms = frames[0].copy()
    atoms.calc = calc
    mu, q = atoms.get_dipole_moment(), atoms.get_charges()
    assert mu.shape == (3,) and abs(q.sum()) < 1e-10
    atoms.info["total_charge"] = 1
    calc.reset()
    assert abs(atoms.get_charges().sum() - 1.0) < 1e-10
    # the model file rebuilds the same heads
    model = load_model(str(model_path), dtype=torch.float64)
    again = model(to_graph(from_atoms(frames[0]), model.model_config.r_max))
    assert np.allclose(again["dipole"][0].detach().numpy(), mu, atol=1e-12)

    out = tmp_path / "eval"
    run = subprocess.run(
        [sys.executable, "-m", "equipot", "eval", str(model_path), str(labelled_xyz), "--key", "dipole=toy_mu",
         "--key", "charges=toy_q", "--out", str(out), "--json", str(tmp_path / "e.json")],
        capture_output=True, text=True, timeout=300,
    )
    assert run.returncode == 0, run.stderr
    assert "dipole" in run.stdout and "e·Å" in run.stdout and "charges" in run.stdout
    import json

    summary = json.loads((tmp_path / "e.json").read_text())
    assert summary["dipole_r2"] > 0.0 and summary["charges_mae"] < 0.2
    predicted = ase.io.read(str(out / "acac_dipoles_predictions.xyz"), ":")
    assert predicted[0].info["pred_dipole"].shape == (3,) and predicted[0].arrays["pred_charges"].shape == (15,)
    assert (out / "acac_dipoles_parity.png").is_file()

    bad = subprocess.run([sys.executable, "-m", "equipot", "eval", str(model_path), str(labelled_xyz), "--key", "spin=s"],
                         capture_output=True, text=True, timeout=300)
    assert bad.returncode != 0 and "no output 'spin'" in bad.stderr


def test_periodic_structure_gives_no_dipole_through_the_calculator(labelled_xyz, tmp_path):
    from ase.calculators.calculator import PropertyNotImplementedError

    from equipot import EquipotCalculator

    model = make_model({"dipole": "dipole"}, lmax=1, parity="natural")
    atoms = Atoms("CHO", positions=[[0, 0, 0], [1.1, 0, 0], [0, 1.2, 0]], cell=[4, 4, 4], pbc=True)
    atoms.calc = EquipotCalculator(model)
    atoms.get_potential_energy()
    with pytest.raises(PropertyNotImplementedError, match="periodic"):
        atoms.get_dipole_moment()


@pytest.mark.parametrize("total_charge", [-1.0, 0.0, 1.0])
def test_learned_charge_weights_keep_the_total_charge_and_symmetry(total_charge):
    torch.manual_seed(3)
    config = ModelConfig(r_max=R_MAX, channels=4, lmax=1, num_basis=4, radial_hidden=[8], readout_hidden=4,
                         correlation=2, outputs={"charges": OutputConfig("charges"), "dipole": OutputConfig("dipole")},
                         charge_weights="learned")
    stats = Statistics(species=SPECIES, e0={z: 0.0 for z in SPECIES}, energy_shift=0.0, energy_scale=1.0,
                       avg_num_neighbors=6.0)
    model = build_model(config, stats).double()
    structure = random_structure(np.random.default_rng(12), 7, box=3.4, symbols=SPECIES)
    structure.total_charge = total_charge
    q = outputs(model, structure)["charges"]
    assert abs(float(q.sum()) - total_charge) < 1e-10
    check_potential_equivariance(model, structure, R_MAX, n_elements=3)


def test_born_charges_are_the_derivative_of_the_dipole_and_obey_the_sum_rule(model):
    """Z*_i = ∂μ/∂r_i by finite differences; translating the molecule leaves μ unchanged when it
    is neutral, so Σ_i Z*_i = 0 (the acoustic sum rule)."""
    config = random_structure(np.random.default_rng(21), 6, box=3.3, symbols=SPECIES)
    born = outputs(model, config)["born"]
    assert born.shape == (6, 3, 3) and born.abs().max() > 1e-6
    assert torch.allclose(born.sum(0), torch.zeros(3, 3), atol=1e-10)
    eps, atom, beta = 1e-5, 2, 1
    moved = []
    for sign in (1, -1):
        p = config.positions.copy()
        p[atom, beta] += sign * eps
        c = Configuration(numbers=config.numbers, positions=p, cell=config.cell, pbc=config.pbc)
        moved.append(outputs(model, c)["dipole"][0])
    numeric = (moved[0] - moved[1]) / (2 * eps)
    assert torch.allclose(born[atom, :, beta], numeric, atol=1e-8)


def test_born_charges_need_a_dipole():
    with pytest.raises(ConfigError, match="declare one dipole"):
        config_from_dict({"model": {"outputs": {"z": "born_charges"}}})


# ------------------------------------------------------------------------- classes by sign
def test_sign_form_of_the_loss_is_the_logistic_loss_of_the_sign():
    from equipot.config import LossConfig
    from equipot.train.loss import squared_error_terms

    configs = [chiral_molecule(), mirrored(chiral_molecule()), chiral_molecule()]
    for c, label in zip(configs, (1.0, -1.0, 0.0)):
        c.targets["chirality"] = np.array(label)
        c.fields["chirality"] = output_field("chirality", "0o")
    graph = make_batch(configs, R_MAX)
    f = torch.tensor([0.7, 0.4, -2.0], dtype=torch.float64, requires_grad=True)
    sign = LossConfig(energy=0.0, forces=0.0, outputs={"chirality": 1.0}, forms={"chirality": "sign"})
    total, count = squared_error_terms({"chirality": f}, graph, sign)["chirality"]
    # y = +1, -1, 0: log(1 + e^-0.7) + log(1 + e^0.4) + log 2
    assert np.isclose(float(total.detach()), np.log1p(np.exp(-0.7)) + np.log1p(np.exp(0.4)) + np.log(2.0), rtol=1e-12)
    assert float(count) == 3
    total.backward()
    assert f.grad[2] == 0.0 and f.grad[0] < 0.0 < f.grad[1]  # a zero label pulls nowhere
    mse = LossConfig(energy=0.0, forces=0.0, outputs={"chirality": 1.0})
    total, _ = squared_error_terms({"chirality": f.detach()}, graph, mse)["chirality"]
    assert np.isclose(float(total), 0.3**2 + 1.4**2 + 2.0**2, rtol=1e-12)


def test_sign_accuracy_only_for_scalar_outputs_labelled_plus_or_minus_one():
    from equipot.train.metrics import ErrorAccumulator

    acc = ErrorAccumulator()
    acc.add_batch({"chi": np.array([0.3, -2.0, 0.1, 5.0, 0.2]), "q": np.array([0.1, -0.2])},
                  {"chi": np.array([1.0, -1.0, -1.0, 1.0, 0.0]), "q": np.array([0.5, -0.5])}, np.array([3, 3, 3, 3, 3]),
                  scalars=("chi", "q"))
    summary = acc.summary()
    assert summary["chi_sign_accuracy"] == 0.75  # over the four labels ±1; 0 is no class
    zero = ErrorAccumulator()  # a prediction of exactly 0 has no sign: wrong; labels all 0: no accuracy
    zero.add_batch({"chi": np.array([0.0, 1.0]), "none": np.array([0.3, -0.2])},
                   {"chi": np.array([1.0, 1.0]), "none": np.array([0.0, 0.0])}, np.array([3, 3]), scalars=("chi", "none"))
    assert zero.summary()["chi_sign_accuracy"] == 0.5 and "none_sign_accuracy" not in zero.summary()
    assert "q_sign_accuracy" not in summary  # charges are not classes
    assert {"chi_mae", "chi_rmse", "chi_r2", "q_mae"} <= set(summary) and not any(":" in k for k in summary)
    vectors = ErrorAccumulator()
    vectors.add_batch({"mu": np.array([[1.0, -1.0, 1.0]])}, {"mu": np.array([[1.0, 1.0, 1.0]])}, np.array([3]))
    assert "mu_sign_accuracy" not in vectors.summary()


@pytest.mark.parametrize("forms, message", [
    ({"mu": "sign"}, "needs a scalar output"),
    ({"chirality": "hinge"}, "one of mse, sign"),
    ({"other": "sign"}, "which training.loss.outputs does not weigh"),
])
def test_bad_loss_forms_are_refused(forms, message):
    values = {"model": {"lmax": 1, "parity": "both", "outputs": {"chirality": "0o", "mu": "dipole"}},
              "training": {"loss": {"outputs": {"chirality": 1.0, "mu": 1.0}, "forms": forms}}}
    with pytest.raises(ConfigError, match=message):
        config_from_dict(values, "test.yaml")


def site_labelled(n_atoms, **info):
    atoms = Atoms("C" * n_atoms, positions=1.5 * np.arange(3 * n_atoms).reshape(n_atoms, 3))
    atoms.info.update(info)
    return atoms


def test_labels_at_sites_become_per_atom_arrays(tmp_path):
    """VALUE@SITE puts per-structure values on the indexed atoms and 0 elsewhere."""
    frames = [site_labelled(4, chirality=-1, stereocentre=2), site_labelled(5, cip=[1.0, -1.0], centres=[4, 0])]
    ase.io.write(str(tmp_path / "s.xyz"), frames, format="extxyz")
    fields = {"chirality": output_field("chirality", "0o", "node")}
    one, two = (read_configurations(str(tmp_path / "s.xyz"), index=str(k), keys={"chirality": key}, fields=fields,
                                    required=["chirality"])[0]
                for k, key in ((0, "chirality@stereocentre"), (1, "cip@centres")))
    assert np.array_equal(one.targets["chirality"], [0.0, 0.0, -1.0, 0.0])
    assert np.array_equal(two.targets["chirality"], [-1.0, 0.0, 0.0, 0.0, 1.0])


@pytest.mark.parametrize("info, key, level, message", [
    ({"chirality": 1, "stereocentre": 4}, "chirality@stereocentre", "node", "atom indices in 0..3"),
    ({"chirality": 1, "stereocentre": 1.5}, "chirality@stereocentre", "node", "atom indices"),
    ({"chirality": [1, -1], "stereocentre": 1}, "chirality@stereocentre", "node", "2 values for the 1 atoms"),
    ({"chirality": [1, -1], "stereocentre": [1, 1]}, "chirality@stereocentre", "node", "names an atom twice"),
    ({"chirality": "R", "stereocentre": 1}, "chirality@stereocentre", "node", "must be numbers"),
    ({"chirality": 1}, "chirality@stereocentre", "node", r"'stereocentre' \(of 'chirality@stereocentre'\) for chirality not found"),
    ({"chirality": 1, "stereocentre": 1}, "chirality@stereocentre", "graph", "must be one number per atom"),
])
def test_bad_site_labels_name_file_frame_and_key(tmp_path, info, key, level, message):
    path = tmp_path / "bad.xyz"
    ase.io.write(str(path), [site_labelled(4, **info)], format="extxyz")
    fields = {"chirality": output_field("chirality", "0o", level)}
    with pytest.raises(DataError, match=message) as err:
        read_configurations(str(path), keys={"chirality": key}, fields=fields, required=["chirality"])
    assert "bad.xyz, frame 0" in str(err.value)


def test_site_labels_are_refused_with_the_sign_form():
    """The zeros on the other atoms would carry no gradient in the sign form."""
    values = {"data": {"keys": {"chirality": "chirality@stereocentre"}},
              "model": {"lmax": 1, "parity": "both", "outputs": {"chirality": {"type": "0o", "level": "node"}}},
              "training": {"loss": {"outputs": {"chirality": 1.0}, "forms": {"chirality": "sign"}}}}
    with pytest.raises(ConfigError, match="leaves untrained"):
        config_from_dict(values, "test.yaml")
    del values["training"]["loss"]["forms"]
    config_from_dict(values, "test.yaml")


def test_site_keys_edge_cases(tmp_path):
    """A key the file holds as it is wins over VALUE@SITE; a per-structure number for a per-atom
    output points to VALUE@SITE; a missing part is named with its whole key."""
    atoms = site_labelled(3, chirality=1.0, stereocentre=1)
    atoms.arrays["chi@dft"] = np.array([0.5, -0.5, 0.0])
    path = tmp_path / "s.xyz"
    ase.io.write(str(path), [atoms], format="extxyz")
    fields = {"chirality": output_field("chirality", "0o", "node")}
    (c,) = read_configurations(str(path), keys={"chirality": "chi@dft"}, fields=fields, required=["chirality"])
    assert np.array_equal(c.targets["chirality"], [0.5, -0.5, 0.0])
    with pytest.raises(DataError, match="map chirality to chirality@SITE"):
        read_configurations(str(path), keys={"chirality": "chirality"}, fields=fields, required=["chirality"])
    with pytest.raises(DataError, match=r"key 'stereocentr' \(of 'chirality@stereocentr'\) for chirality not found"):
        read_configurations(str(path), keys={"chirality": "chirality@stereocentr"}, fields=fields, required=["chirality"])


@pytest.mark.parametrize("per_atom", [False, True], ids=["per-structure-sign-loss", "at-the-stereocentre"])
def test_training_a_pseudoscalar_then_eval(tmp_path, per_atom):
    """Rattled copies of one chiral molecule and its mirror image, labelled +1 / -1 per structure
    (with the sign loss) or at the stereocentre (the mse, VALUE@SITE): they are learnt, the
    metrics CSV has the sign accuracy, and eval prints it."""
    import csv

    from equipot.evaluate import evaluate_file, format_table
    from equipot.model import load_model
    from equipot.train import MODEL, Trainer

    rng = np.random.default_rng(0)
    base = chiral_molecule()
    frames = []
    for k in range(24):
        left = Atoms(numbers=base.numbers, positions=base.positions + 0.05 * rng.normal(size=base.positions.shape))
        for atoms, label in ((left, 1.0), (Atoms(numbers=left.numbers, positions=left.positions * [-1, 1, 1]), -1.0)):
            atoms.info["chi"] = label
            atoms.info["centre"] = 0
            frames.append(atoms)
    path = tmp_path / "chiral.xyz"
    ase.io.write(str(path), frames, format="extxyz")
    key = "chi@centre" if per_atom else "chi"
    values = {
        "output_dir": str(tmp_path / "run"), "seed": 1,
        "data": {"train": str(path), "valid_fraction": 0.25, "keys": {"chirality": key},
                 "e0s": {s: 0.0 for s in ("C", "H", "N", "O", "Cl")}},
        "model": {"r_max": R_MAX, "channels": 4, "lmax": 1, "parity": "both", "num_basis": 4, "radial_hidden": [8],
                  "readout_hidden": 4, "outputs": {"chirality": {"type": "0o", "level": "node"} if per_atom else "0o"}},
        "training": {"batch_size": 6, "max_epochs": 15, "lr": 0.02, "scheduler": "none", "threads": 1,
                     "dtype": "float64",
                     "loss": {"energy": 0.0, "forces": 0.0, "outputs": {"chirality": 5.0 if per_atom else 1.0},
                              **({} if per_atom else {"forms": {"chirality": "sign"}})}},
    }
    Trainer(config_from_dict(values), progress=False).run()
    rows = list(csv.DictReader(open(tmp_path / "run" / "metrics.csv")))
    assert float(rows[-1]["valid_chirality_sign_accuracy"]) == 1.0
    assert float(rows[-1]["valid_loss"]) < 0.5 * float(rows[0]["valid_loss"])
    model = load_model(str(tmp_path / "run" / MODEL), dtype=torch.float64)
    summary = evaluate_file(model, str(path), keys={"chirality": key}, progress=False)
    assert summary["chirality_sign_accuracy"] == 1.0
    assert "sign right for 100.0 %" in format_table(summary, {"chirality": ""})
    if per_atom:  # the centre and the other atoms (labels 0) alike: far below all-zero predictions' 1/sqrt(5)
        assert summary["chirality_rmse"] < 0.1, summary["chirality_rmse"]
