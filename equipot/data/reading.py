"""Reading labelled structures from any ASE-readable file.

A key map says under which name each field is stored in the file (``energy: REF_energy``);
declared units say how to convert it to eV and Å. Every error names the file, the frame
and the key.
"""

import difflib
import os
from typing import Dict, Iterable, Iterator, List, Mapping, Optional

import ase.io
import numpy as np
from ase import Atoms

from ..fields import TOTAL_CHARGE, Field, get_field
from ..units import energy_factor, length_factor
from .configuration import Configuration
from .neighbors import has_valid_cell

DEFAULT_KEYS = {"energy": "energy", "forces": "forces", "stress": "stress"}


class DataError(ValueError):
    """A problem with a data file; the message names file, frame and key."""


def _available(atoms: Atoms) -> Dict[str, object]:
    found = dict(atoms.info)
    found.update({k: v for k, v in atoms.arrays.items() if k not in ("numbers", "positions")})
    if atoms.calc is not None:
        found.update(atoms.calc.results)
    return found


def _suggest(key: str, names: Iterable[str]) -> str:
    close = difflib.get_close_matches(key, list(names), n=1)
    return f" (did you mean {close[0]!r}?)" if close else ""


def _as_field_array(field: Field, raw: object, n_atoms: int, where: str, key: str) -> np.ndarray:
    try:
        arr = np.array(raw, dtype=np.float64)
    except (TypeError, ValueError):
        raise DataError(f"{where}: key {key!r} is not numeric: {raw!r}") from None
    if field.symmetry == "ij=ji" and field.level == "graph":
        if arr.size == 6:  # Voigt order xx yy zz yz xz xy
            xx, yy, zz, yz, xz, xy = arr.reshape(6)
            arr = np.array([[xx, xy, xz], [xy, yy, yz], [xz, yz, zz]])
        arr = arr.reshape(-1)
        if arr.size != 9:
            raise DataError(f"{where}: key {key!r} must have 6 or 9 values, got {arr.size}")
        arr = arr.reshape(3, 3)
    expected = ((n_atoms,) if field.level == "node" else ()) + field.shape
    if arr.shape != expected:
        if arr.size == int(np.prod(expected)) and field.level == "graph":
            arr = arr.reshape(expected)
        else:
            raise DataError(
                f"{where}: key {key!r} has shape {arr.shape}, expected {expected} "
                f"for {n_atoms} atoms"
            )
    if not np.all(np.isfinite(arr)):
        raise DataError(f"{where}: key {key!r} contains NaN or inf")
    return arr


def atoms_to_configuration(
    atoms: Atoms,
    keys: Dict[str, str],
    required: Iterable[str],
    energy_unit: str = "eV",
    length_unit: str = "Angstrom",
    source: str = "?",
    fields: Optional[Mapping[str, Field]] = None,
) -> Configuration:
    """Convert one ASE structure; fields in ``required`` must be present.

    ``fields`` declares typed outputs ({name: Field}) that ``keys`` may map besides the
    built-in fields. The total charge is read from the key mapped as ``total_charge``
    (default: ``total_charge`` if present, else 0).
    """
    e_fac, l_fac = energy_factor(energy_unit), length_factor(length_unit)
    n = len(atoms)
    if n == 0:
        raise DataError(f"{source}: structure has no atoms")
    positions = atoms.get_positions() * l_fac
    cell = np.array(atoms.get_cell()) * l_fac
    if not np.all(np.isfinite(positions)):
        raise DataError(f"{source}: positions contain NaN or inf")
    pbc = np.array(atoms.get_pbc(), dtype=bool)
    if not has_valid_cell(cell, pbc):
        raise DataError(f"{source}: periodic (pbc={pbc.tolist()}) but the cell is missing or degenerate")
    found = _available(atoms)
    targets = {}
    required = set(required)
    charge_key = keys.get(TOTAL_CHARGE.name, TOTAL_CHARGE.name)
    total_charge = 0.0
    if charge_key in found:
        total_charge = float(_as_field_array(TOTAL_CHARGE, found[charge_key], n, source, charge_key))
        if abs(total_charge - round(total_charge)) > 1e-6:
            raise DataError(f"{source}: key {charge_key!r} (total charge) is {total_charge}, not a whole number of e")
    elif TOTAL_CHARGE.name in keys and TOTAL_CHARGE.name in required:
        raise DataError(f"{source}: key {charge_key!r} for total_charge not found{_suggest(charge_key, found)}")
    for name, key in keys.items():
        if name == TOTAL_CHARGE.name:
            continue
        if key not in found:
            if name in required:
                raise DataError(
                    f"{source}: key {key!r} for {name} not found{_suggest(key, found)}; "
                    f"keys present: {', '.join(sorted(found)) or 'none'}"
                )
            continue
        field = get_field(name, fields)
        arr = _as_field_array(field, found[key], n, source, key)
        arr = arr * e_fac**field.energy_power * l_fac**field.length_power
        if field.kind == "dipole" and pbc.any():
            raise DataError(f"{source}: key {key!r} ({name}) is a dipole, which is ill-defined for a periodic structure")
        if name == "virial":  # stored as stress inside equipot: stress = -virial / V
            volume = abs(np.linalg.det(cell))
            if volume < 1e-9:
                raise DataError(f"{source}: key {key!r} (virial) given for a structure without a cell")
            name, arr = "stress", -arr / volume
        targets[name] = arr
    return Configuration(
        numbers=atoms.get_atomic_numbers().astype(np.int64),
        positions=positions,
        cell=cell,
        pbc=pbc,
        targets=targets,
        source=source,
        total_charge=total_charge,
        fields=fields if fields is not None else {},
    )


def iread_configurations(
    path: str,
    keys: Optional[Dict[str, str]] = None,
    required: Iterable[str] = (),
    energy_unit: str = "eV",
    length_unit: str = "Angstrom",
    index: str = ":",
    format: Optional[str] = None,
    fields: Optional[Mapping[str, Field]] = None,
) -> Iterator[Configuration]:
    """Stream configurations from ``path`` (any format ASE reads; extxyz first)."""
    keys = dict(DEFAULT_KEYS if keys is None else keys)
    if not os.path.isfile(path):
        raise FileNotFoundError(f"data file not found: {path}")
    if os.path.getsize(path) == 0:
        raise DataError(f"{path}: file is empty")
    frames = ase.io.iread(path, index=index, format=format)
    k = 0
    while True:
        try:
            atoms = next(frames)
        except StopIteration:
            break
        except Exception as err:  # ASE raises many types for malformed files
            raise DataError(f"{path}, frame {k}: cannot parse ({type(err).__name__}: {err})") from err
        yield atoms_to_configuration(
            atoms, keys, required, energy_unit, length_unit, source=f"{path}, frame {k}", fields=fields
        )
        k += 1
    if k == 0:
        raise DataError(f"{path}: no structures found")


def read_configurations(path: str, **kwargs) -> List[Configuration]:
    """All configurations of ``path``; see :func:`iread_configurations`."""
    return list(iread_configurations(path, **kwargs))
