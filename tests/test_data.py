"""Reading labelled data: clear errors, unit conversion, cells, batching, E0 and statistics."""

from pathlib import Path

import ase.io
import numpy as np
import pytest
import torch
from ase import Atoms, units
from ase.calculators.singlepoint import SinglePointCalculator
from ase.neighborlist import neighbor_list as ase_neighbor_list
from ase.stress import voigt_6_to_full_3x3_stress

from equipot.config import ConfigError, config_from_dict
from equipot.data import (
    CloseAtomsError, DataError, GraphLoader, atoms_to_configuration, compute_statistics, fit_e0,
    make_batch, read_configurations, to_graph,
)
from equipot.data.statistics import average_neighbors
from equipot.train.setup import read_e0s

SHARED_DATA = Path(__file__).resolve().parents[2] / "shared" / "data"

H, C, O = 1, 6, 8


def molecule(seed=0, symbols="CH4O", spread=1.2):
    """A labelled open structure with well separated atoms."""
    rng = np.random.default_rng(seed)
    n = len(Atoms(symbols))
    base = np.array([[i * spread, (i % 2) * 0.5, (i % 3) * 0.4] for i in range(n)])
    atoms = Atoms(symbols, positions=base + 0.05 * rng.standard_normal((n, 3)))
    atoms.info["energy"] = float(rng.normal(-50, 1))
    atoms.arrays["forces"] = rng.normal(size=(n, 3))
    return atoms


def crystal(seed=0, triclinic=True):
    """A labelled small periodic structure (cell well below twice a 4 Å cutoff)."""
    rng = np.random.default_rng(seed)
    cell = np.array([[3.1, 0.0, 0.0], [0.7, 2.9, 0.0], [0.4, 0.6, 3.3]]) if triclinic else 3.0 * np.eye(3)
    frac = np.array([[0.0, 0.0, 0.0], [0.5, 0.5, 0.5]])
    atoms = Atoms("CO", scaled_positions=frac + 0.01 * rng.standard_normal((2, 3)), cell=cell, pbc=True)
    atoms.info["energy"] = float(rng.normal(-20, 1))
    atoms.arrays["forces"] = rng.normal(size=(2, 3))
    atoms.info["stress"] = rng.normal(scale=0.01, size=6)
    return atoms


def write(path, frames):
    ase.io.write(str(path), frames, format="extxyz")
    return str(path)


# ----------------------------------------------------------------------------- errors


def test_misspelt_key_names_key_frame_file_and_suggests(tmp_path):
    path = write(tmp_path / "train.xyz", [molecule(k) for k in range(3)])
    with pytest.raises(DataError) as err:
        read_configurations(path, keys={"energy": "energy", "forces": "force"}, required=["energy", "forces"])
    message = str(err.value)
    assert path in message
    assert "frame 0" in message
    assert "'force'" in message
    assert "did you mean 'forces'" in message


def test_missing_key_in_a_later_frame(tmp_path):
    frames = [molecule(k) for k in range(4)]
    del frames[2].info["energy"]
    path = write(tmp_path / "gap.xyz", frames)
    with pytest.raises(DataError) as err:  # asked for on every structure
        read_configurations(path, required=["energy", "forces"], every=True)
    assert f"{path}, frame 2" in str(err.value)
    assert "'energy'" in str(err.value)
    # required on some structures (training's default) or optional: the frame just carries no such label
    for required in (["energy", "forces"], ["forces"]):
        configs = read_configurations(path, required=required)
        assert "energy" not in configs[2].targets and "energy" in configs[1].targets


@pytest.mark.parametrize("where, value", [("energy", np.nan), ("energy", np.inf), ("forces", np.nan), ("forces", -np.inf)])
def test_non_finite_labels(tmp_path, where, value):
    frames = [molecule(k) for k in range(3)]
    if where == "energy":
        frames[1].info["energy"] = value
    else:
        frames[1].arrays["forces"][2, 1] = value
    path = write(tmp_path / "nonfinite.xyz", frames)
    with pytest.raises(DataError) as err:
        read_configurations(path, required=["energy", "forces"])
    message = str(err.value)
    assert f"{path}, frame 1" in message and f"'{where}'" in message and "NaN or inf" in message


def test_forces_with_too_few_rows(tmp_path):
    # extxyz stores per-atom columns, so a short force array can only come as a per-frame value
    good = ('3\nProperties=species:S:1:pos:R:3:F:R:3 energy=-1.0 pbc="F F F"\n'
            "H 0 0 0 0 0 0\nH 1 0 0 0 0 0\nO 0 1 0 0 0 0\n")
    short = ('3\nProperties=species:S:1:pos:R:3 energy=-1.0 F="0 0 0 1 1 1" pbc="F F F"\n'
             "H 0 0 0\nH 1 0 0\nO 0 1 0\n")
    path = tmp_path / "short.xyz"
    path.write_text(good + short)
    with pytest.raises(DataError) as err:
        read_configurations(str(path), keys={"energy": "energy", "forces": "F"}, required=["forces"])
    message = str(err.value)
    assert f"{path}, frame 1" in message and "'F'" in message and "3 atoms" in message
    # the same from an in-memory structure with N-1 rows
    atoms = molecule()
    atoms.info["my_forces"] = np.zeros((len(atoms) - 1, 3))
    with pytest.raises(DataError, match="'my_forces' has shape"):
        atoms_to_configuration(atoms, {"forces": "my_forces"}, ["forces"], source="mem, frame 0")


def test_stress_with_wrong_number_of_values(tmp_path):
    path = tmp_path / "s5.xyz"
    path.write_text('3\nProperties=species:S:1:pos:R:3 energy=1 S="1 2 3 4 5" pbc="F F F"\n'
                    "H 0 0 0\nH 1 0 0\nO 0 1 0\n")
    with pytest.raises(DataError, match="'S' must have 6 or 9 values, got 5"):
        read_configurations(str(path), keys={"energy": "energy", "stress": "S"})


def test_non_numeric_label(tmp_path):
    path = tmp_path / "str.xyz"
    path.write_text('3\nProperties=species:S:1:pos:R:3 energy=abc pbc="F F F"\nH 0 0 0\nH 1 0 0\nO 0 1 0\n')
    with pytest.raises(DataError, match="'energy' is not numeric"):
        read_configurations(str(path), required=["energy"])


def test_empty_missing_and_garbage_files(tmp_path):
    empty = tmp_path / "empty.xyz"
    empty.write_text("")
    with pytest.raises(DataError, match="file is empty") as err:
        read_configurations(str(empty))
    assert str(empty) in str(err.value)
    blank = tmp_path / "blank.xyz"
    blank.write_text("\n\n   \n")
    with pytest.raises(DataError, match="no structures found"):
        read_configurations(str(blank))
    missing = str(tmp_path / "missing.xyz")
    with pytest.raises(FileNotFoundError) as err:
        read_configurations(missing)
    assert missing in str(err.value)
    garbage = tmp_path / "garbage.xyz"
    garbage.write_text("hello world\nthis is not xyz\n")
    with pytest.raises(DataError, match="frame 0: cannot parse"):
        read_configurations(str(garbage))
    truncated = tmp_path / "truncated.xyz"
    text = Path(write(tmp_path / "whole.xyz", [molecule(0), molecule(1)])).read_text()
    truncated.write_text(text[: len(text) - 40])  # cut the second frame short
    with pytest.raises(DataError) as err:
        read_configurations(str(truncated))
    assert f"{truncated}, frame 1" in str(err.value)


def test_atoms_closer_than_a_tenth_of_an_angstrom(tmp_path):
    frames = [molecule(k) for k in range(3)]
    pos = frames[2].get_positions()
    pos[3] = pos[1] + [0.05, 0.0, 0.0]
    frames[2].set_positions(pos)
    path = write(tmp_path / "close.xyz", frames)
    configs = read_configurations(path)
    with pytest.raises(CloseAtomsError) as err:
        make_batch(configs, cutoff=4.0)
    message = str(err.value)
    assert f"{path}, frame 2" in message and "0.0500" in message
    # statistics (average number of neighbours) name the frame too
    with pytest.raises(CloseAtomsError, match="frame 2"):
        average_neighbors(configs, 4.0)
    # a periodic image that lands on an atom is caught as well
    atoms = Atoms("H2", positions=[[0, 0, 0], [2.98, 0, 0]], cell=3.0 * np.eye(3), pbc=True)
    config = atoms_to_configuration(atoms, {}, [], source="image")
    with pytest.raises(CloseAtomsError, match="image"):
        to_graph(config, 4.0)


def test_unknown_unit():
    with pytest.raises(ValueError, match="unknown energy unit 'kcal'"):
        atoms_to_configuration(molecule(), {"energy": "energy"}, [], energy_unit="kcal")


# ----------------------------------------------------------------------------- units


def to_other_units(atoms, e_unit, l_unit):
    """Copy of ``atoms`` with every quantity expressed in energy ``e_unit`` and length ``l_unit``."""
    other = atoms.copy()
    other.set_cell(np.array(atoms.get_cell()) / l_unit, scale_atoms=False)
    other.set_positions(atoms.get_positions() / l_unit)
    other.info["energy"] = atoms.info["energy"] / e_unit
    other.arrays["forces"] = atoms.arrays["forces"] / (e_unit / l_unit)
    if "stress" in atoms.info:
        other.info["stress"] = atoms.info["stress"] / (e_unit / l_unit**3)
    return other


@pytest.mark.parametrize("energy_unit, length_unit, e_unit, l_unit", [
    ("kcal/mol", "Bohr", units.kcal / units.mol, units.Bohr),
    ("Hartree", "Bohr", units.Hartree, units.Bohr),
    ("meV", "nm", 1e-3, 10.0),
])
def test_units_convert_to_ev_and_angstrom(tmp_path, energy_unit, length_unit, e_unit, l_unit):
    frames = [molecule(0), crystal(1), molecule(2, "H2O")]
    ev = read_configurations(write(tmp_path / "ev.xyz", frames))
    other = read_configurations(write(tmp_path / "other.xyz", [to_other_units(a, e_unit, l_unit) for a in frames]),
                                energy_unit=energy_unit, length_unit=length_unit)
    assert abs(e_unit - 1.0) > 1e-3 and abs(l_unit - 1.0) > 1e-3  # the conversion is not a no-op
    for a, b in zip(ev, other):
        assert set(a.targets) == set(b.targets)
        np.testing.assert_allclose(b.positions, a.positions, rtol=1e-7, atol=1e-7)
        np.testing.assert_allclose(b.cell, a.cell, rtol=1e-7, atol=1e-7)
        for name in a.targets:
            # extxyz writes per-atom columns with 8 decimals: allow that rounding, nothing more
            np.testing.assert_allclose(b.targets[name], a.targets[name], rtol=1e-6, atol=1e-6, err_msg=name)
    # values really are in eV and Å: the eV file's numbers come back unchanged
    assert float(ev[0].targets["energy"]) == pytest.approx(frames[0].info["energy"], abs=1e-8)
    np.testing.assert_allclose(ev[1].targets["stress"], voigt_6_to_full_3x3_stress(frames[1].info["stress"]), atol=1e-8)


def test_virial_becomes_stress(tmp_path):
    atoms = crystal(3)
    virial = np.array([[1.0, 0.2, -0.1], [0.2, -0.5, 0.3], [-0.1, 0.3, 0.7]])
    del atoms.info["stress"]
    atoms.info["virial"] = virial.reshape(-1)
    volume = atoms.get_volume()
    path = write(tmp_path / "virial.xyz", [atoms])
    (config,) = read_configurations(path, keys={"energy": "energy", "forces": "forces", "virial": "virial"},
                                    required=["virial"])
    assert "virial" not in config.targets
    np.testing.assert_allclose(config.targets["stress"], -virial / volume, rtol=1e-7)
    # the same in kcal/mol and Bohr: virial is an energy, the volume a length cubed
    e, l = units.kcal / units.mol, units.Bohr
    other = to_other_units(atoms, e, l)
    other.info["virial"] = virial.reshape(-1) / e
    path = write(tmp_path / "virial_kcal.xyz", [other])
    (config,) = read_configurations(path, keys={"energy": "energy", "virial": "virial"},
                                    energy_unit="kcal/mol", length_unit="Bohr")
    np.testing.assert_allclose(config.targets["stress"], -virial / volume, rtol=1e-6)


def test_virial_without_cell_is_an_error(tmp_path):
    atoms = molecule()
    atoms.info["virial"] = np.eye(3).reshape(-1)
    path = write(tmp_path / "open_virial.xyz", [atoms])
    with pytest.raises(DataError, match="without a cell") as err:
        read_configurations(path, keys={"virial": "virial"})
    assert f"{path}, frame 0" in str(err.value)


def test_voigt_and_full_stress_agree(tmp_path):
    voigt = np.array([1.0, 2.0, 3.0, 4.0, 5.0, 6.0])  # xx yy zz yz xz xy
    full = np.array([[1.0, 6.0, 5.0], [6.0, 2.0, 4.0], [5.0, 4.0, 3.0]])
    a, b = crystal(0), crystal(0)
    del a.info["stress"], b.info["stress"]
    a.info["S"] = voigt
    b.info["S"] = full.reshape(-1)
    keys = {"energy": "energy", "stress": "S"}
    ca, cb = read_configurations(write(tmp_path / "voigt_full.xyz", [a, b]), keys=keys)
    np.testing.assert_array_equal(ca.targets["stress"], full)
    np.testing.assert_array_equal(cb.targets["stress"], full)
    # ASE's own stress (from a calculator, Voigt, ASE sign) is read the same way
    c = crystal(0)
    del c.info["stress"], c.info["energy"], c.arrays["forces"]
    c.calc = SinglePointCalculator(c, energy=-1.0, forces=np.zeros((2, 3)), stress=voigt)
    (cc,) = read_configurations(write(tmp_path / "calc.xyz", [c]))
    np.testing.assert_allclose(cc.targets["stress"], full)


# ----------------------------------------------------------------------------- cells and batching


def edge_set(graph, offset=0):
    shifts = graph.edge_shift.numpy().round().astype(int)
    return sorted((int(s) - offset, int(d) - offset, *map(int, sh))
                  for s, d, sh in zip(graph.edge_src, graph.edge_dst, shifts))


@pytest.mark.parametrize("pbc", [(True, True, True), (True, False, True), (False, False, False)])
def test_neighbours_match_ase_in_small_triclinic_cells(pbc):
    cutoff = 4.0
    atoms = crystal(5)
    atoms.set_pbc(pbc)
    assert min(np.linalg.norm(atoms.cell, axis=1)) < 2 * cutoff  # many images of each atom
    config = atoms_to_configuration(atoms, {}, [], source="cell")
    graph = to_graph(config, cutoff)
    i, j, shift = ase_neighbor_list("ijS", atoms, cutoff)
    # equipot: vector = pos[src] - pos[dst] + shift @ cell, ASE: pos[j] - pos[i] + S @ cell
    expected = sorted((int(b), int(a), *map(int, s)) for a, b, s in zip(i, j, shift))
    assert edge_set(graph) == expected
    vec = (graph.positions[graph.edge_src] - graph.positions[graph.edge_dst]
           + graph.edge_shift @ graph.cell[0]).norm(dim=1)
    assert float(vec.max()) < cutoff and float(vec.min()) > 0.1
    if any(pbc):
        assert len(expected) > 2 * len(atoms)  # several images of the same atom


def test_mixed_open_and_periodic_batch(tmp_path):
    """Molecules without stress next to crystals with stress load and batch together."""
    frames = [molecule(0), crystal(1), molecule(2, "H2O"), crystal(3, triclinic=False)]
    path = write(tmp_path / "mixed.xyz", frames)
    configs = read_configurations(path)
    assert "stress" in configs[1].targets and "stress" not in configs[0].targets
    cutoff = 4.0
    batch = make_batch(configs, cutoff)
    assert batch.n_graphs == 4
    assert batch.atoms_per_graph().tolist() == [len(a) for a in frames]
    assert batch.pbc[:, 0].tolist() == [False, True, False, True]
    # the molecules' stress is missing (NaN), the crystals' is theirs
    assert set(batch.targets) == {"energy", "forces", "stress"}
    assert torch.isnan(batch.targets["stress"][[0, 2]]).all() and torch.isfinite(batch.targets["stress"][[1, 3]]).all()
    np.testing.assert_allclose(batch.targets["energy"].numpy(), [a.info["energy"] for a in frames])
    # each structure's edges are its own edges, offset by the atoms before it
    offset = 0
    for config in configs:
        single = to_graph(config, cutoff)
        mask = (batch.edge_dst >= offset) & (batch.edge_dst < offset + config.n_atoms)
        part = type(batch)(**{**batch.__dict__, "edge_src": batch.edge_src[mask], "edge_dst": batch.edge_dst[mask],
                               "edge_shift": batch.edge_shift[mask]})
        assert edge_set(part, offset) == edge_set(single)
        offset += config.n_atoms
    # through the loader (shuffled, several batches), every structure appears once
    loader = GraphLoader(configs, cutoff, batch_size=3, shuffle=True, seed=1)
    seen = sorted(round(float(e), 8) for g in loader for e in g.targets["energy"])
    assert seen == sorted(round(a.info["energy"], 8) for a in frames)
    # crystals alone keep their stress labels
    assert "stress" in make_batch([configs[1], configs[3]], cutoff).targets


# ----------------------------------------------------------------------------- E0 and statistics


def molecules_of_known_e0(e0, n, seed, binding_per_atom=0.0):
    """``n`` H/C/O compositions whose energies are Σ n_s E0_s plus a binding energy per atom."""
    rng = np.random.default_rng(seed)
    configs = []
    for k in range(n):
        counts = {H: int(rng.integers(1, 9)), C: int(rng.integers(1, 5)), O: int(rng.integers(0, 3))}
        numbers = np.repeat(list(counts), list(counts.values()))
        atoms = Atoms(numbers=numbers, positions=np.arange(3 * len(numbers)).reshape(-1, 3) * 1.0)
        atoms.info["energy"] = sum(n * e0[z] for z, n in counts.items()) + binding_per_atom * len(numbers)
        configs.append(atoms_to_configuration(atoms, {"energy": "energy"}, ["energy"], source=f"s{k}"))
    return configs


def test_fit_e0_recovers_known_values():
    e0 = {H: -13.6, C: -1027.0, O: -2038.0}
    configs = molecules_of_known_e0(e0, 8, seed=0)
    fitted = fit_e0(configs, [H, C, O])
    for z in e0:
        assert fitted[z] == pytest.approx(e0[z], abs=1e-8)
    stats = compute_statistics(configs, 2.0, fitted, [H, C, O])
    assert stats.energy_shift == pytest.approx(0.0, abs=1e-9)


def test_fit_e0_takes_isolated_atoms_of_the_training_data():
    """An isolated atom among the training structures gives its element's E0 exactly (not a
    least-squares compromise); the other elements are fitted to what the isolated ones leave."""
    e0 = {H: -13.6, C: -1027.0, O: -2038.0}
    # binding energy: -0.3 eV per atom, which a plain fit would share out among the E0s
    configs = molecules_of_known_e0(e0, 10, seed=1, binding_per_atom=-0.3)
    for z in (H, O):
        atom = Atoms(numbers=[z], positions=[[0.0, 0.0, 0.0]])
        atom.info["energy"] = e0[z]
        configs.append(atoms_to_configuration(atom, {"energy": "energy"}, ["energy"], source=f"atom {z}"))
    fitted = fit_e0(configs, [H, C, O])
    assert fitted[H] == e0[H] and fitted[O] == e0[O]
    assert abs(fitted[C] - e0[C]) < 2.0 and fitted[C] != pytest.approx(e0[C], abs=1e-6)  # C absorbs the binding
    crystal_atom = Atoms(numbers=[H], positions=[[0.0, 0.0, 0.0]], cell=np.eye(3) * 2.0, pbc=True)
    crystal_atom.info["energy"] = -50.0  # one atom, but periodic: a crystal, not an isolated atom
    with_crystal = fit_e0(configs + [atoms_to_configuration(crystal_atom, {"energy": "energy"}, ["energy"])],
                          [H, C, O])
    assert with_crystal[H] == e0[H]
    boxed = Atoms(numbers=[C], positions=[[1.0, 1.0, 1.0]], cell=np.eye(3) * 15.0, pbc=True)  # a DFT code's box
    boxed.info["energy"] = e0[C]
    boxed = atoms_to_configuration(boxed, {"energy": "energy"}, ["energy"])
    assert fit_e0(configs + [boxed], [H, C, O], cutoff=5.0)[C] == e0[C]
    assert fit_e0(configs + [boxed], [H, C, O])[C] != e0[C]  # without a cutoff only open structures count
    ion = Atoms(numbers=[O], positions=[[0.0, 0.0, 0.0]])
    ion.info.update(energy=-2000.0, total_charge=-1)  # an ion is no reference for the neutral atom
    ion = atoms_to_configuration(ion, {"energy": "energy"}, ["energy"])
    assert fit_e0(configs + [ion], [H, C, O])[O] == e0[O]


def test_e0s_from_file_mapping_and_fit(io_small_xyz):
    isolated = SHARED_DATA / "acac" / "isolated_atoms.xyz"
    if not isolated.is_file():
        pytest.skip(f"shared reference data not available: {isolated}")
    train = read_configurations(str(io_small_xyz))
    species = [H, C, O]
    data = config_from_dict({}).data
    from_file = read_e0s(str(isolated), data, train, species)
    expected = {int(a.numbers[0]): a.get_potential_energy() for a in ase.io.read(str(isolated), ":")}
    assert from_file == pytest.approx(expected)
    assert from_file[H] == pytest.approx(-13.568422178253735)
    # a mapping, in the data's declared energy unit
    kcal = config_from_dict({"data": {"energy_unit": "kcal/mol"}}).data
    mapping = read_e0s({"H": -313.0, "C": -23681.0, "O": -46993.0}, kcal, train, species)
    assert mapping[H] == pytest.approx(-313.0 * units.kcal / units.mol)
    assert set(mapping) == {H, C, O}
    # a least-squares fit: the acac structures all share one composition, so only
    # the composition-weighted sum is determined; it must reproduce the mean energy
    fitted = read_e0s("fit", data, train, species)
    counts = np.array([np.sum(train[0].numbers == z) for z in species])
    mean_energy = np.mean([float(c.targets["energy"]) for c in train])
    assert float(counts @ np.array([fitted[z] for z in species])) == pytest.approx(mean_energy, rel=1e-10)


def test_e0s_errors(tmp_path, io_small_xyz):
    train = read_configurations(str(io_small_xyz))
    data = config_from_dict({}).data
    only_h = Atoms("H")
    only_h.info["energy"] = -13.6
    path = write(tmp_path / "only_h.xyz", [only_h])
    with pytest.raises(DataError, match="no isolated-atom energy for C, O"):
        read_e0s(path, data, train, [H, C, O])
    h2 = Atoms("H2", positions=[[0, 0, 0], [0.74, 0, 0]])
    h2.info["energy"] = -31.0
    path = write(tmp_path / "h2.xyz", [only_h, h2])
    with pytest.raises(DataError, match="frame 1: an isolated-atom file must hold single atoms"):
        read_e0s(path, data, train, [H])
    with pytest.raises(ConfigError, match="unknown element 'Xx'"):
        read_e0s({"Xx": 1.0}, data, train, [H])
    with pytest.raises(ConfigError, match="file not found"):
        read_e0s(str(tmp_path / "none.xyz"), data, train, [H])
    with pytest.raises(ValueError, match=r"no isolated-atom energy \(E0\) for O"):
        compute_statistics(train, 4.0, {H: 0.0, C: 0.0}, [H, C, O])
