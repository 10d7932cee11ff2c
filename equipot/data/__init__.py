"""Reading data, neighbour lists, batching and training-set statistics."""

from .configuration import Configuration, to_graph
from .loader import GraphLoader, make_batch
from .neighbors import CloseAtomsError, neighbor_list
from .reading import DataError, atoms_to_configuration, iread_configurations, read_configurations
from .statistics import Statistics, compute_statistics, fit_e0, species_of
from .torsions import bond_graph, rotatable_bonds, torsion_conformers

__all__ = [
    "Configuration", "to_graph", "GraphLoader", "make_batch", "CloseAtomsError", "neighbor_list",
    "DataError", "atoms_to_configuration", "iread_configurations", "read_configurations",
    "Statistics", "compute_statistics", "fit_e0", "species_of", "bond_graph", "rotatable_bonds",
    "torsion_conformers",
]
