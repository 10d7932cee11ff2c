"""Dataset statistics, computed from the training split only.

Pure functions over lists of configurations: isolated-atom energies (E0) by least squares,
the mean residual energy per atom, the RMS of force components and the average number of
neighbours within the cutoff.
"""

import warnings
from dataclasses import asdict, dataclass
from typing import Dict, List, Optional, Sequence

import numpy as np
from ase.data import chemical_symbols

from .configuration import Configuration
from .neighbors import CloseAtomsError, neighbor_list


@dataclass
class Statistics:
    species: List[int]  # atomic numbers the model knows, sorted
    e0: Dict[int, float]  # eV per isolated atom
    energy_shift: float  # eV/atom, mean of (E - sum E0) / N
    energy_scale: float  # eV/Å, RMS of force components (or of per-atom energy residuals)
    avg_num_neighbors: float

    def to_dict(self) -> dict:
        d = asdict(self)
        d["e0"] = {str(k): v for k, v in self.e0.items()}
        return d

    @classmethod
    def from_dict(cls, d: dict) -> "Statistics":
        d = dict(d)
        d["e0"] = {int(k): float(v) for k, v in d["e0"].items()}
        return cls(**d)


def species_of(configs: Sequence[Configuration]) -> List[int]:
    return sorted({int(z) for c in configs for z in np.unique(c.numbers)})


def count_matrix(configs: Sequence[Configuration], species: Sequence[int]) -> np.ndarray:
    """(n_configs, n_species) number of atoms of each species."""
    index = {z: k for k, z in enumerate(species)}
    counts = np.zeros((len(configs), len(species)))
    for row, c in enumerate(configs):
        for z, n in zip(*np.unique(c.numbers, return_counts=True)):
            counts[row, index[int(z)]] = n
    return counts


def fit_e0(configs: Sequence[Configuration], species: Sequence[int], cutoff: Optional[float] = None) -> Dict[int, float]:
    """Isolated-atom energies from the training structures with an energy.

    An element with an isolated neutral atom among them (one atom, not periodic or, given
    ``cutoff``, in a cell so large that it has no periodic image within the cutoff) takes that atom's
    energy (the mean if there are several); the others a least-squares fit of the remaining
    energies, E − Σ_isolated n_s E0_s ≈ Σ_other n_s E0_s (the minimum-norm solution).
    """
    energies = np.array([c.targets["energy"] for c in configs], dtype=np.float64).reshape(-1)
    alone: Dict[int, List[float]] = {}
    for c, e in zip(configs, energies):
        if c.n_atoms == 1 and c.total_charge == 0 and (not np.any(c.pbc) or (
                cutoff is not None and len(neighbor_list(c.positions, c.cell, c.pbc, cutoff)[0]) == 0)):
            alone.setdefault(int(c.numbers[0]), []).append(float(e))
    known = {z: float(np.mean(alone[z])) for z in species if z in alone}
    rest = [z for z in species if z not in known]
    counts = count_matrix(configs, species)
    e0 = dict(known)
    if rest:
        columns = [k for k, z in enumerate(species) if z in known]
        residual = energies - counts[:, columns] @ np.array([known[species[k]] for k in columns])
        rows = counts[:, [k for k, z in enumerate(species) if z not in known]]
        values, _, rank, _ = np.linalg.lstsq(rows, residual, rcond=None)
        if rank < len(rest):
            warnings.warn(
                "e0s: fit: the training compositions do not determine one E0 per element (too few distinct "
                "compositions); the minimum-norm fit is used, so isolated atoms get no physical energy. "
                "Give a file of isolated-atom energies or a mapping for meaningful E0s.",
                stacklevel=2,
            )
        e0.update({int(z): float(v) for z, v in zip(rest, values)})
    return {int(z): e0[int(z)] for z in species}


def average_neighbors(configs: Sequence[Configuration], cutoff: float) -> float:
    n_edges = n_atoms = 0
    for c in configs:
        try:
            src, _, _ = neighbor_list(c.positions, c.cell, c.pbc, cutoff)
        except CloseAtomsError as err:
            raise CloseAtomsError(f"{c.source}: {err}") from None
        n_edges += len(src)
        n_atoms += c.n_atoms
    return n_edges / max(n_atoms, 1)


def compute_statistics(
    configs: Sequence[Configuration], cutoff: float, e0: Dict[int, float], species: Sequence[int]
) -> Statistics:
    """Statistics of the training split ``configs`` given E0 values for every species."""
    missing = [z for z in species if z not in e0]
    if missing:
        names = ", ".join(chemical_symbols[z] for z in missing)
        raise ValueError(f"data.e0s: no isolated-atom energy (E0) for {names}, which the training data contains")
    residuals, forces = [], []
    for c in configs:
        if "energy" in c.targets:
            e_ref = sum(e0[int(z)] for z in c.numbers)
            residuals.append((float(c.targets["energy"]) - e_ref) / c.n_atoms)
        if "forces" in c.targets:
            forces.append(np.asarray(c.targets["forces"]).reshape(-1))
    shift = float(np.mean(residuals)) if residuals else 0.0
    if forces:
        scale = float(np.sqrt(np.mean(np.concatenate(forces) ** 2)))
    elif len(residuals) > 1:
        scale = float(np.std(residuals))
    else:
        scale = 1.0
    return Statistics(
        species=[int(z) for z in species],
        e0={int(z): float(e0[int(z)]) for z in species},
        energy_shift=shift,
        energy_scale=scale if scale > 1e-8 else 1.0,
        avg_num_neighbors=average_neighbors(configs, cutoff),
    )
