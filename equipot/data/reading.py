"""Reading labelled structures from any ASE-readable file.

A key map says under which name each field is stored in the file (``energy: REF_energy``);
declared units say how to convert it to eV and Å. Every error names the file, the frame
and the key.

A per-atom output may also be labelled at some atoms only: ``VALUE@SITE`` (``chirality@stereocentre``)
puts the per-structure value(s) under key VALUE on the atom(s) whose index(es) key SITE holds, and
0 on every other atom (an R/S label belongs to its stereocentre; other atoms are no stereocentre).
A key that the file holds as it is (one with an ``@`` in its name) is read as it is.
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
        if field.level == "node" and field.shape == () and arr.ndim == 0:
            raise DataError(f"{where}: key {key!r} holds one number, but {field.name} is one value per atom; to put a "
                            f"per-structure value on one atom, map {field.name} to {key}@SITE, SITE the key of that "
                            f"atom's index (for eval: --key {field.name}={key}@SITE)")
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


SITE_SEPARATOR = "@"


def _site_labels(found: Mapping[str, object], key: str, n_atoms: int, where: str) -> np.ndarray:
    """The per-atom array of a ``VALUE@SITE`` key (see the module docstring); both keys are in ``found``."""
    value_key, site_key = key.split(SITE_SEPARATOR, 1)
    try:
        sites = np.array(found[site_key], dtype=np.float64).reshape(-1)
        values = np.array(found[value_key], dtype=np.float64).reshape(-1)
    except (TypeError, ValueError):
        raise DataError(f"{where}: keys {value_key!r} and {site_key!r} of {key!r} must be numbers") from None
    if not np.all(np.isfinite(values)):
        raise DataError(f"{where}: key {value_key!r} contains NaN or inf")
    shown = np.asarray(found[site_key]).tolist()
    if np.any(sites != np.round(sites)) or np.any(sites < 0) or np.any(sites >= n_atoms):
        raise DataError(f"{where}: key {site_key!r} must hold atom indices in 0..{n_atoms - 1}, got {shown!r}")
    if values.size != sites.size:
        raise DataError(f"{where}: key {value_key!r} has {values.size} values for the {sites.size} atoms of "
                        f"{site_key!r} (SITE holds the indices of the labelled atoms, not a mask)")
    if len(set(sites.tolist())) != sites.size:
        raise DataError(f"{where}: key {site_key!r} names an atom twice: {shown!r}")
    out = np.zeros(n_atoms)
    out[sites.astype(np.int64)] = values
    return out


def _missing(found: Mapping[str, object], key: str) -> List[str]:
    """The keys of ``key`` (one, or the two of VALUE@SITE) that the structure lacks."""
    if key in found or SITE_SEPARATOR not in key:
        return [] if key in found else [key]
    return [k for k in key.split(SITE_SEPARATOR, 1) if k not in found]


def atoms_to_configuration(
    atoms: Atoms,
    keys: Dict[str, str],
    required: Iterable[str],
    energy_unit: str = "eV",
    length_unit: str = "Angstrom",
    source: str = "?",
    fields: Optional[Mapping[str, Field]] = None,
    tags: Iterable[str] = (),
) -> Configuration:
    """Convert one ASE structure; fields in ``required`` must be present.

    ``fields`` declares typed outputs ({name: Field}) that ``keys`` may map besides the
    built-in fields. The total charge is read from the key mapped as ``total_charge``
    (default: ``total_charge`` if present, else 0). Each per-structure key in ``tags`` that the
    structure has is kept as text (``config_type``, say, to group errors by).
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
        missing = _missing(found, key)
        if missing:
            if name in required:
                part = "" if missing[0] == key else f" (of {key!r})"
                raise DataError(
                    f"{source}: key {missing[0]!r}{part} for {name} not found{_suggest(missing[0], found)}; "
                    f"keys present: {', '.join(sorted(found)) or 'none'}"
                )
            continue
        field = get_field(name, fields)
        if key in found:
            raw = found[key]
        else:  # VALUE@SITE
            if field.level != "node" or field.shape != ():
                raise DataError(f"{source}: key {key!r} labels atoms by index, so {name} must be one number per atom "
                                f"(level: node); it is {field.shape or 'one number'} per "
                                f"{'structure' if field.level == 'graph' else 'atom'}")
            raw = _site_labels(found, key, n, source)
        arr = _as_field_array(field, raw, n, source, key)
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
        tags={key: str(atoms.info[key]) for key in tags if key in atoms.info},
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
    every: bool = False,
    tags: Iterable[str] = (),
) -> Iterator[Configuration]:
    """Stream configurations from ``path`` (any format ASE reads; extxyz first).

    A field in ``required`` must be labelled on at least one structure (``every``: on every
    structure); the others may lack it (molecules without stress beside crystals, isolated
    atoms without forces), and the loss and metrics then count it where it is known. A field
    no structure carries raises the error the first structure gives (a misspelt key, say),
    once the file has been read.
    """
    keys = dict(DEFAULT_KEYS if keys is None else keys)
    if not os.path.isfile(path):
        raise FileNotFoundError(f"data file not found: {path}")
    if os.path.getsize(path) == 0:
        raise DataError(f"{path}: file is empty")
    required = list(required)
    frames = ase.io.iread(path, index=index, format=format)
    first, labelled = None, {name: 0 for name in required}
    k = 0
    while True:
        try:
            atoms = next(frames)
        except StopIteration:
            break
        except Exception as err:  # ASE raises many types for malformed files
            raise DataError(f"{path}, frame {k}: cannot parse ({type(err).__name__}: {err})") from err
        config = atoms_to_configuration(atoms, keys, required if every else (), energy_unit, length_unit,
                                        source=f"{path}, frame {k}", fields=fields, tags=tags)
        first = atoms if first is None else first
        for name in required:
            labelled[name] += ("stress" if name == "virial" else name) in config.targets
        yield config
        k += 1
    if k == 0:
        raise DataError(f"{path}: no structures found")
    for name in required:
        if labelled[name] == 0:  # the first structure's error names the key and suggests others
            try:
                atoms_to_configuration(first, keys, [name], energy_unit, length_unit, source=f"{path}, frame 0",
                                       fields=fields)
            except DataError as err:
                raise DataError(f"{err}; no other structure of the {k} has it either" if k > 1 else str(err)) from None


def read_configurations(path: str, **kwargs) -> List[Configuration]:
    """All configurations of ``path``; see :func:`iread_configurations`."""
    return list(iread_configurations(path, **kwargs))
