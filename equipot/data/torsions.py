"""New conformers of a molecule by turning it about its rotatable bonds.

A rigid rotation of one side of a single, non-ring bond about the bond axis keeps every bond
length and bond angle, and the handedness of every stereocentre (each atom's neighbours move
rigidly with it, or stay where they are): labels that depend on the bond graph and the
configuration only (R/S, say) stay right, while the distances between atoms three or more
bonds apart change. Energies and forces do not carry over. Used to teach a model that such
a label does not depend on the conformer (``benchmarks/chirality.py --torsions``).

Open (non-periodic) molecules only; bonds from ASE's covalent radii.
"""

from typing import List, Tuple

import numpy as np
from ase import Atoms
from ase.data import vdw_radii
from ase.neighborlist import natural_cutoffs, neighbor_list

BOND_SCALE = 1.2  # a bond: closer than 1.2 × the sum of covalent radii (structures may be displaced)
CLASH_SCALE = 0.7  # atoms four or more bonds apart must stay 0.7 × the sum of van der Waals radii apart
# neighbours of a saturated atom; a bond between two atoms with fewer (C=C, C=O, C=N, or the single
# bond of a conjugated pair) is not turned. Elements not listed count as saturated.
VALENCE = {1: 1, 5: 3, 6: 4, 7: 3, 8: 2, 9: 1, 14: 4, 15: 3, 16: 2, 17: 1, 35: 1, 53: 1}


def bond_graph(atoms: Atoms) -> List[set]:
    """The neighbours of each atom, by covalent radii."""
    if atoms.pbc.any():
        raise ValueError("torsion conformers are for open molecules; this structure is periodic")
    i, j = neighbor_list("ij", atoms, natural_cutoffs(atoms, mult=BOND_SCALE))
    bonded = [set() for _ in range(len(atoms))]
    for a, b in zip(i, j):
        bonded[a].add(int(b))
    return bonded


def _side(bonded: List[set], start: int, blocked: int) -> set:
    """Atoms reached from ``start`` without crossing the bond to ``blocked``."""
    seen, todo = {start}, [start]
    while todo:
        a = todo.pop()
        for b in bonded[a]:
            if b not in seen and not (a == start and b == blocked):
                seen.add(b)
                todo.append(b)
    return seen


def rotatable_bonds(atoms: Atoms, bonded: List[set] | None = None) -> List[Tuple[int, int, np.ndarray]]:
    """Bonds (a, b, moving atoms) that can be turned: not in a ring, not between two unsaturated
    atoms (a double bond), and with more than one atom on each side; ``moving`` is the smaller
    side (it holds b, not a)."""
    bonded = bond_graph(atoms) if bonded is None else bonded
    saturated = [len(bonded[i]) >= VALENCE.get(int(z), 0) for i, z in enumerate(atoms.numbers)]
    out = []
    for a in range(len(atoms)):
        for b in sorted(bonded[a]):
            if b < a or len(bonded[a]) < 2 or len(bonded[b]) < 2 or not (saturated[a] or saturated[b]):
                continue
            side_b = _side(bonded, b, a)
            if a in side_b:  # a ring: both ends still connected without the bond
                continue
            side_a = set(range(len(atoms))) - side_b
            pivot, moving = (a, b), side_b
            if len(side_a) < len(side_b):
                pivot, moving = (b, a), side_a
            out.append((pivot[0], pivot[1], np.array(sorted(moving))))
    return out


def _rotate(positions: np.ndarray, a: int, b: int, moving: np.ndarray, angle: float) -> np.ndarray:
    """Turn the atoms ``moving`` by ``angle`` (radians) about the axis from a through b."""
    axis = positions[b] - positions[a]
    k = axis / np.linalg.norm(axis)
    x = positions[moving] - positions[b]
    c, s = np.cos(angle), np.sin(angle)
    turned = x * c + np.cross(k, x) * s + np.outer(x @ k, k) * (1 - c)  # Rodrigues
    out = positions.copy()
    out[moving] = turned + positions[b]
    return out


def _far_pairs(bonded: List[set], n: int) -> np.ndarray:
    """(i, j) pairs, i < j, four or more bonds apart (or not connected)."""
    near = np.zeros((n, n), dtype=bool)
    for i in range(n):
        frontier, seen = {i}, {i}
        for _ in range(3):
            frontier = {b for a in frontier for b in bonded[a]} - seen
            seen |= frontier
        near[i, list(seen)] = True
    i, j = np.nonzero(np.triu(~near, 1))
    return np.stack([i, j], axis=1)


def torsion_conformers(
    atoms: Atoms, n: int, rng: np.random.Generator, bonded: List[set] | None = None, max_tries: int = 50
) -> List[Atoms]:
    """``n`` copies of ``atoms``, each with every rotatable bond turned by a random angle and no
    two atoms four or more bonds apart closer than 0.7 × their van der Waals distance (or than
    they are in ``atoms``, if closer already).

    ``bonded``: the bond graph (:func:`bond_graph`); by default that of ``atoms``. For a strongly
    displaced structure, pass the graph of an undisplaced one of the same molecule.

    Copies keep ``info`` and the per-atom arrays that a rotation does not change (symbols,
    charges, …); vector arrays (forces, …) and energies are dropped, since they do not carry over.
    A molecule without rotatable bonds gives ``n`` unchanged copies. Raises ``RuntimeError`` if a
    clash-free conformer is not found in ``max_tries`` draws.
    """
    bonded = bond_graph(atoms) if bonded is None else bonded
    if len(bonded) != len(atoms):
        raise ValueError(f"a bond graph of {len(bonded)} atoms for a structure of {len(atoms)}")
    bonds = rotatable_bonds(atoms, bonded)
    pairs = _far_pairs(bonded, len(atoms))
    radii = np.where(np.isnan(vdw_radii[atoms.numbers]), 2.0, vdw_radii[atoms.numbers])
    now = np.linalg.norm(atoms.positions[pairs[:, 0]] - atoms.positions[pairs[:, 1]], axis=1)
    limit = np.minimum(CLASH_SCALE * (radii[pairs[:, 0]] + radii[pairs[:, 1]]), now)
    kept = {k: v for k, v in atoms.arrays.items() if k not in ("positions", "numbers") and v.ndim == 1}
    info = {k: v for k, v in atoms.info.items() if k not in ("energy", "free_energy", "stress", "virial")}
    out = []
    for _ in range(n):
        for _ in range(max_tries):
            pos = atoms.positions.copy()
            for a, b, moving in bonds:
                pos = _rotate(pos, a, b, moving, rng.uniform(0, 2 * np.pi))
            d = np.linalg.norm(pos[pairs[:, 0]] - pos[pairs[:, 1]], axis=1)
            if np.all(d >= limit):
                break
        else:
            raise RuntimeError(f"no clash-free conformer of {atoms.get_chemical_formula()} in {max_tries} draws")
        copy = Atoms(atoms.numbers, positions=pos, info=dict(info))
        for k, v in kept.items():
            copy.arrays[k] = v.copy()
        out.append(copy)
    return out
