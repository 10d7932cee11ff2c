"""Conformers by turning rotatable bonds (equipot.data.torsions): bonds, angles and the handedness
at every atom kept, rings and double bonds left alone, no clashes."""

import itertools

import numpy as np
import pytest
from ase import Atoms
from ase.build import molecule
from ase.data import vdw_radii

from equipot.data.torsions import CLASH_SCALE, bond_graph, rotatable_bonds, torsion_conformers


def signed_volumes(positions, bonded):
    """det of the first three bond vectors at every atom with three or more neighbours: its sign is
    the handedness of the atom's surroundings."""
    return np.array([np.linalg.det(positions[sorted(b)[:3]] - positions[i]) for i, b in enumerate(bonded) if len(b) >= 3])


def test_rotatable_bonds_of_butane_are_its_three_c_c_bonds():
    atoms = molecule("trans-butane")
    bonds = rotatable_bonds(atoms)
    assert sorted(tuple(sorted((a, b))) for a, b, _ in bonds) == sorted(
        tuple(sorted((i, j))) for i, j in itertools.combinations(range(len(atoms)), 2)
        if atoms.numbers[i] == atoms.numbers[j] == 6 and atoms.get_distance(i, j) < 1.7)
    for a, b, moving in bonds:  # the smaller side turns, and it holds b but not a
        assert b in moving and a not in moving and len(moving) <= len(atoms) / 2


@pytest.mark.parametrize("name", ["C6H6", "cyclobutane", "C2H4", "butadiene", "CH4", "bicyclobutane"])
def test_rings_double_bonds_and_conjugated_bonds_are_not_turned(name):
    assert rotatable_bonds(molecule(name)) == []


@pytest.mark.parametrize("name", ["trans-butane", "CH3CH2OCH3", "C3H7Cl", "CH3CH2SH"])
def test_conformers_keep_bonds_angles_and_handedness_and_change_torsions(name):
    atoms = molecule(name)
    atoms.info["label"] = 1.0
    atoms.arrays["charges"] = np.arange(len(atoms), dtype=float)
    atoms.arrays["forces"] = np.ones((len(atoms), 3))
    bonded = bond_graph(atoms)
    # pairs one or two bonds apart (bond lengths and angles) must keep their distances
    close = {(i, j) for i in range(len(atoms)) for j in bonded[i]}
    close |= {(i, k) for i in range(len(atoms)) for j in bonded[i] for k in bonded[j] if k != i}
    conformers = torsion_conformers(atoms, 8, np.random.default_rng(0))
    assert len(conformers) == 8
    far_changed = False
    for c in conformers:
        d0, d = atoms.get_all_distances(), c.get_all_distances()
        for i, j in close:
            assert d[i, j] == pytest.approx(d0[i, j], abs=1e-12)
        np.testing.assert_allclose(signed_volumes(c.positions, bonded), signed_volumes(atoms.positions, bonded), atol=1e-12)
        far_changed |= np.abs(d - d0).max() > 0.1
        assert bond_graph(c) == bonded  # no new bonds: nothing clashes
        assert c.info == {"label": 1.0} and np.array_equal(c.arrays["charges"], atoms.arrays["charges"])
        assert "forces" not in c.arrays  # vector labels do not carry over to a new conformer
    assert far_changed


def test_no_two_far_atoms_closer_than_the_clash_limit():
    atoms = molecule("C3H7Cl")
    bonded = bond_graph(atoms)

    for c in torsion_conformers(atoms, 20, np.random.default_rng(1)):
        d = c.get_all_distances()
        for i, j in itertools.combinations(range(len(atoms)), 2):
            path = {i}
            for _ in range(3):
                path |= {b for a in path for b in bonded[a]}
            if j not in path:  # four or more bonds apart
                assert d[i, j] >= CLASH_SCALE * (vdw_radii[atoms.numbers[i]] + vdw_radii[atoms.numbers[j]]) - 1e-12


def test_a_molecule_without_rotatable_bonds_gives_copies():
    atoms = molecule("CH4")
    for c in torsion_conformers(atoms, 3, np.random.default_rng(0)):
        np.testing.assert_array_equal(c.positions, atoms.positions)


def test_bad_input_is_refused():
    periodic = Atoms("H2", positions=[[0, 0, 0], [0.7, 0, 0]], cell=[5, 5, 5], pbc=True)
    with pytest.raises(ValueError, match="periodic"):
        torsion_conformers(periodic, 1, np.random.default_rng(0))
    with pytest.raises(ValueError, match="bond graph of 2 atoms"):
        torsion_conformers(molecule("CH4"), 1, np.random.default_rng(0), bonded=[set(), set()])
