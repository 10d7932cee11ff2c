"""Unit conversion at the doors.

Inside equipot everything is in ASE units: energy in eV, length in Å, charge in e,
mass in amu. Data files may declare other units; they are converted once, on import,
with the factors below (multiply a value in the named unit to get eV or Å).
"""

from ase import units as _ase

ENERGY_TO_EV = {
    "eV": 1.0,
    "meV": 1e-3,
    "Hartree": _ase.Hartree,
    "Ha": _ase.Hartree,
    "kcal/mol": _ase.kcal / _ase.mol,
    "kJ/mol": _ase.kJ / _ase.mol,
    "Ry": _ase.Rydberg,
}

LENGTH_TO_ANGSTROM = {
    "Angstrom": 1.0,
    "Å": 1.0,
    "A": 1.0,
    "Bohr": _ase.Bohr,
    "nm": 10.0,
}


def energy_factor(unit: str) -> float:
    """Factor that converts an energy in ``unit`` to eV."""
    try:
        return ENERGY_TO_EV[unit]
    except KeyError:
        raise ValueError(
            f"unknown energy unit {unit!r}; known units: {', '.join(ENERGY_TO_EV)}"
        ) from None


def length_factor(unit: str) -> float:
    """Factor that converts a length in ``unit`` to Å."""
    try:
        return LENGTH_TO_ANGSTROM[unit]
    except KeyError:
        raise ValueError(
            f"unknown length unit {unit!r}; known units: {', '.join(LENGTH_TO_ANGSTROM)}"
        ) from None
