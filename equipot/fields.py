"""The one table of fields that a structure can carry.

Each field is declared once with its level (per structure "graph", per atom "node"),
its per-item shape, its symmetry (an irreps string, or "ij=ji" for a symmetric
Cartesian tensor), its unit inside equipot, and the power of energy and length that
converts it from a file's declared units. Batching, data import, the loss, evaluation
and the ASE calculator are all driven from this table.
"""

from dataclasses import dataclass
from typing import Tuple


@dataclass(frozen=True)
class Field:
    name: str
    level: str  # "graph" or "node"
    shape: Tuple[int, ...]
    symmetry: str  # irreps string or "ij=ji"
    unit: str
    energy_power: int  # unit conversion: value * energy_factor**energy_power * length_factor**length_power
    length_power: int


TARGET_FIELDS = {
    f.name: f
    for f in (
        Field("energy", "graph", (), "0e", "eV", 1, 0),
        Field("forces", "node", (3,), "1o", "eV/Å", 1, -1),
        Field("stress", "graph", (3, 3), "ij=ji", "eV/Å^3", 1, -3),
        Field("virial", "graph", (3, 3), "ij=ji", "eV", 1, 0),
        Field("energies", "node", (), "0e", "eV", 1, 0),
    )
}
"""Fields that can be read from data files and predicted by a model."""


def get_field(name: str) -> Field:
    try:
        return TARGET_FIELDS[name]
    except KeyError:
        raise KeyError(f"unknown field {name!r}; known fields: {', '.join(TARGET_FIELDS)}") from None
