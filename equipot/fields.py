"""The one table of fields that a structure can carry.

Each field is declared once with its level (per structure "graph", per atom "node"),
its per-item shape, its symmetry (an irreps string, or a Cartesian index formula such as
"ij=ji" for a symmetric rank-2 tensor), its unit inside equipot, and the power of energy
and length that converts it from a file's declared units. Batching, data import, the loss,
evaluation and the ASE calculator are all driven from this table.

Besides the built-in fields (energy and its derivatives), a model may declare typed
outputs (``model.outputs`` in the config); :func:`output_field` turns each declaration
into a :class:`Field`. Output types:

* ``charges``: per-atom partial charges (0e, e), summing exactly to the total charge;
* ``dipole``: Σ q_i (r_i − r_c) + Σ μ_i per structure (1o, e·Å, Cartesian x, y, z), from
  the charges and atomic dipoles; r_c is the centre of mass (irrelevant when neutral);
* ``polarizability``: a symmetric 3×3 tensor per structure (0e+2e), in the data's unit;
* ``born_charges``: Born effective charges Z*_i,αβ = ∂μ_α/∂r_iβ per atom (e), the derivative
  of the model's dipole output (which must be declared too);
* ``se3_scalar``: a scalar read from both 0e and 0o features: invariant under proper
  rotations, not under reflections (for targets that differ between enantiomers);
* a Cartesian index formula of e3nn's ``CartesianTensor`` ("i", "ij", "ij=ji", ...):
  a Cartesian tensor of that symmetry (true tensor, Cartesian components);
* an irreps string ("0o", "0e", "1o", "0e+2e", ...): values in e3nn's basis (its l = 1
  components are Cartesian x, y, z; l >= 2 are real spherical-harmonic components).

Irreps and Cartesian outputs are per structure (the sum of per-atom contributions) by
default, or per atom with ``level: node``.
"""

import re
from dataclasses import dataclass
from typing import Mapping, Optional, Tuple

from e3nn import o3


@dataclass(frozen=True)
class Field:
    name: str
    level: str  # "graph" or "node"
    shape: Tuple[int, ...]
    symmetry: str  # irreps string, Cartesian formula ("ij=ji"), or "se3" (proper rotations only)
    unit: str
    energy_power: int  # unit conversion: value * energy_factor**energy_power * length_factor**length_power
    length_power: int
    kind: str = "builtin"  # how a model produces it: builtin, charges, dipole, cartesian, irreps, se3_scalar
    irreps: str = ""  # per-atom irreps the model's head for this output produces


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
"""Built-in fields that can be read from data files and predicted by every model."""

TOTAL_CHARGE = Field("total_charge", "graph", (), "0e", "e", 0, 0, kind="input")
"""The total charge of a structure: an input (default 0), read with the key map like a label."""

RESERVED = set(TARGET_FIELDS) | {TOTAL_CHARGE.name}
_FORMULA = re.compile(r"^[ijkl]+(=[ijkl]+)*$")


def output_field(name: str, type: str, level: Optional[str] = None) -> Field:
    """The field of a typed output declared as ``name: {type: ..., level: ...}``."""
    if name in RESERVED:
        raise ValueError(f"output name {name!r} is reserved for a built-in field")
    if level not in (None, "graph", "node"):
        raise ValueError(f"output {name!r}: level must be 'graph' or 'node', got {level!r}")
    if type == "charges":
        if level == "graph":
            raise ValueError(f"output {name!r}: charges are per atom (level node)")
        return Field(name, "node", (), "0e", "e", 0, 0, kind="charges", irreps="0e")
    if type == "dipole":
        if level == "node":
            raise ValueError(f"output {name!r}: a dipole is per structure (level graph)")
        return Field(name, "graph", (3,), "i", "e·Å", 0, 1, kind="dipole", irreps="0e+1o")
    if type == "born_charges":
        if level == "graph":
            raise ValueError(f"output {name!r}: Born effective charges are per atom (level node)")
        return Field(name, "node", (3, 3), "ij", "e", 0, 0, kind="born_charges", irreps="")
    if type == "se3_scalar":
        return Field(name, level or "graph", (), "se3", "as in the data", 0, 0, kind="se3_scalar", irreps="0e+0o")
    if type == "polarizability":
        type = "ij=ji"
    if _FORMULA.match(type):
        try:
            irreps = o3.ReducedTensorProducts(type, **{i: "1o" for i in set(type) - {"="}}).irreps_out
        except Exception as err:
            raise ValueError(f"output {name!r}: bad Cartesian formula {type!r} ({err})") from None
        rank = len(type.split("=")[0])
        return Field(name, level or "graph", (3,) * rank, type, "as in the data", 0, 0,
                     kind="cartesian", irreps=str(irreps.simplify()))
    try:
        irreps = o3.Irreps(type)
    except Exception:
        raise ValueError(
            f"output {name!r}: unknown type {type!r}; use charges, dipole, polarizability, se3_scalar, "
            "a Cartesian formula such as 'ij=ji', or an irreps string such as '0o' or '1o+2e'"
        ) from None
    if irreps.dim == 0:
        raise ValueError(f"output {name!r}: empty irreps {type!r}")
    shape = () if irreps.dim == 1 else (irreps.dim,)
    return Field(name, level or "graph", shape, str(irreps), "as in the data", 0, 0, kind="irreps", irreps=str(irreps))


def get_field(name: str, extra: Optional[Mapping[str, Field]] = None) -> Field:
    """The built-in field ``name``, or one of the model's typed outputs in ``extra``."""
    if extra and name in extra:
        return extra[name]
    if name == TOTAL_CHARGE.name:
        return TOTAL_CHARGE
    try:
        return TARGET_FIELDS[name]
    except KeyError:
        known = list(TARGET_FIELDS) + list(extra or ())
        raise KeyError(f"unknown field {name!r}; known fields: {', '.join(known)}") from None
