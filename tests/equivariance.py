"""Reusable checks of E(3) x S_N equivariance (a helper module, not a test file).

One generic check, :func:`check_equivariance`, covers both single e3nn-style modules and
the full potential. A function ``f`` is called on inputs ``x`` and on transformed inputs
``g·x`` for random group elements ``g`` (an O(3) matrix, proper or improper, a translation,
a permutation of the atoms and one of the edges), and ``f(g·x)`` must equal ``D(g)·f(x)``.

How each input and output transforms is declared with a :class:`Spec`:

* ``rep``: ``None`` (invariant), an ``e3nn.o3.Irreps`` (acts on the last axis through
  ``irreps.D_from_matrix``), ``CARTESIAN`` (vectors in x, y, z: ``v -> R v``) or ``RANK2``
  (Cartesian 3x3 tensors: ``T -> R T Rᵀ``);
* ``level``: ``"global"``, ``"node"`` (first axis runs over atoms, which are permuted),
  ``"edge"`` (first axis runs over edges, which are permuted) or ``"edge_node_index"``
  (an edge's atom index: edges are permuted and the atom labels renamed);
* ``translate``: add the translation (positions only).

Use float64 throughout; the default relative tolerance is 1e-9 of the largest entry.
"""

from dataclasses import dataclass
from typing import Any, Callable, Dict, List, Mapping, Optional, Sequence, Union

import numpy as np
import torch
from e3nn import o3

CARTESIAN = "cartesian"
RANK2 = "rank2"
LEVELS = ("global", "node", "edge", "edge_node_index")


@dataclass(frozen=True)
class Spec:
    rep: Union[None, str, o3.Irreps] = None
    level: str = "global"
    translate: bool = False
    nonzero: bool = True  # outputs only: refuse an output that is zero (for irreps: in any degree l)

    def __post_init__(self):
        if self.level not in LEVELS:
            raise ValueError(f"level must be one of {LEVELS}, got {self.level!r}")
        if isinstance(self.rep, str) and self.rep not in (CARTESIAN, RANK2):
            object.__setattr__(self, "rep", o3.Irreps(self.rep))


@dataclass
class GroupElement:
    rotation: torch.Tensor  # (3, 3) orthogonal, det +1 or -1
    translation: torch.Tensor  # (3,)
    node_perm: Optional[torch.Tensor]  # new atom k is old atom node_perm[k]
    edge_perm: Optional[torch.Tensor]  # new edge k is old edge edge_perm[k]

    @property
    def improper(self) -> bool:
        return bool(torch.det(self.rotation) < 0)

    def describe(self) -> str:
        kind = "improper" if self.improper else "proper"
        if torch.allclose(self.rotation, -torch.eye(3, dtype=self.rotation.dtype)):
            kind = "inversion"
        return f"{kind} R (det {float(torch.det(self.rotation)):+.0f}), |t| = {float(self.translation.norm()):.2f}"


def random_group_elements(
    n: int,
    n_nodes: Optional[int] = None,
    n_edges: Optional[int] = None,
    seed: int = 0,
    translate: bool = True,
    permute: bool = True,
    dtype: torch.dtype = torch.float64,
) -> List[GroupElement]:
    """``n`` elements: the first is the pure inversion -1, then proper and improper alternate.

    Every element also carries a random translation and random permutations (if asked).
    The global torch RNG is left untouched.
    """
    elements = []
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        for k in range(n):
            if k == 0:
                rotation = -torch.eye(3, dtype=dtype)
            else:
                rotation = o3.rand_matrix(dtype=dtype)
                if k % 2 == 0:
                    rotation = -rotation  # improper: a rotation times the inversion
            translation = 3.0 * torch.randn(3, dtype=dtype) if translate else torch.zeros(3, dtype=dtype)
            node_perm = torch.randperm(n_nodes) if (permute and n_nodes) else None
            edge_perm = torch.randperm(n_edges) if (permute and n_edges) else None
            elements.append(GroupElement(rotation, translation, node_perm, edge_perm))
    return elements


_D_CACHE: Dict[tuple, torch.Tensor] = {}


def representation(irreps: o3.Irreps, rotation: torch.Tensor) -> torch.Tensor:
    """``irreps.D_from_matrix(rotation)``, cached (the same elements recur in every check)."""
    key = (str(irreps), rotation.dtype, tuple(rotation.flatten().tolist()))
    if key not in _D_CACHE:
        if len(_D_CACHE) > 2000:
            _D_CACHE.clear()
        _D_CACHE[key] = irreps.D_from_matrix(rotation)
    return _D_CACHE[key]


def act(g: GroupElement, x: torch.Tensor, spec: Spec) -> torch.Tensor:
    """``g·x`` for a tensor that transforms as ``spec`` says."""
    if spec.level == "node" and g.node_perm is not None:
        x = x[g.node_perm]
    elif spec.level == "edge" and g.edge_perm is not None:
        x = x[g.edge_perm]
    elif spec.level == "edge_node_index":
        if g.edge_perm is not None:
            x = x[g.edge_perm]
        if g.node_perm is not None:
            inverse = torch.empty_like(g.node_perm)
            inverse[g.node_perm] = torch.arange(len(g.node_perm))
            x = inverse[x]
    R = g.rotation.to(dtype=x.dtype) if x.is_floating_point() else g.rotation
    if isinstance(spec.rep, o3.Irreps) and spec.rep.dim > 0:
        D = representation(spec.rep, R)
        x = x @ D.transpose(-1, -2)
    elif spec.rep == CARTESIAN:
        x = x @ R.transpose(-1, -2)
    elif spec.rep == RANK2:
        x = R @ x @ R.transpose(-1, -2)
    if spec.translate:
        x = x + g.translation.to(dtype=x.dtype)
    return x


def _as_dict(value: Any) -> Dict[Any, torch.Tensor]:
    if isinstance(value, torch.Tensor):
        return {"output": value}
    if isinstance(value, Mapping):
        return dict(value)
    return dict(enumerate(value))


def _check_nonzero(name, value: torch.Tensor, spec: Spec) -> None:
    """The comparison means nothing for zeros: refuse outputs that are zero.

    For irreps, every degree l must have a nonzero block, so that each D^l is exercised.
    (A block of one parity may be zero by construction, e.g. the pseudoscalars after a
    first layer that has only seen scalars and natural-parity spherical harmonics.)
    """
    if isinstance(spec.rep, o3.Irreps):
        largest = {}
        for (mul, ir), block in zip(spec.rep, spec.rep.slices()):
            part = value[..., block]
            size = float(part.abs().max()) if part.numel() else 0.0
            largest[ir.l] = max(largest.get(ir.l, 0.0), size)
        zero = [l for l, size in largest.items() if size <= 1e-10]
        assert not zero, f"output {name!r}: every block of degree l = {zero} is zero, its equivariance is untested"
    else:
        assert value.numel() > 0 and value.abs().max() > 1e-10, f"output {name!r} is zero"


def check_equivariance(
    fn: Callable[..., Any],
    inputs: Sequence[torch.Tensor],
    in_specs: Sequence[Spec],
    out_specs: Union[Spec, Sequence[Spec], Mapping[Any, Spec]],
    n_elements: int = 4,
    seed: int = 0,
    rtol: float = 1e-9,
    translate: bool = True,
    permute: bool = True,
) -> float:
    """Assert ``fn(g·x) == D(g)·fn(x)`` for random ``g``; return the largest relative error.

    ``fn`` returns a tensor, a tuple or a dict, and ``out_specs`` has the same structure.
    The error of an output is max|fn(g·x) - D(g)·fn(x)| / max|fn(x)|.
    """
    if len(inputs) != len(in_specs):
        raise ValueError("one Spec per input")
    sizes = {"node": set(), "edge": set()}
    for x, spec in zip(inputs, in_specs):
        level = "edge" if spec.level == "edge_node_index" else spec.level
        if level in sizes:
            sizes[level].add(int(x.shape[0]))
    for level, found in sizes.items():
        if len(found) > 1:
            raise ValueError(f"inputs disagree on the number of {level}s: {sorted(found)}")
    n_nodes = next(iter(sizes["node"]), None)
    n_edges = next(iter(sizes["edge"]), None)

    out_specs = _as_dict(out_specs) if not isinstance(out_specs, Spec) else {"output": out_specs}
    reference = {k: v.detach() for k, v in _as_dict(fn(*inputs)).items()}
    if set(reference) != set(out_specs):
        raise ValueError(f"outputs {sorted(map(str, reference))} but specs for {sorted(map(str, out_specs))}")
    for name, spec in out_specs.items():
        if spec.nonzero:
            _check_nonzero(name, reference[name], spec)

    worst = 0.0
    elements = random_group_elements(n_elements, n_nodes, n_edges, seed, translate, permute)
    for g in elements:
        moved = _as_dict(fn(*[act(g, x, s) for x, s in zip(inputs, in_specs)]))
        for name, spec in out_specs.items():
            expected = act(g, reference[name], spec)
            got = moved[name].detach()
            assert got.shape == expected.shape, f"output {name!r}: shape {tuple(got.shape)} != {tuple(expected.shape)}"
            scale = float(reference[name].abs().max()) if reference[name].numel() else 0.0
            diff = float((got - expected).abs().max()) if got.numel() else 0.0
            error = diff / scale if scale > 0 else diff
            assert error <= rtol, (
                f"output {name!r} is not equivariant under {g.describe()}: "
                f"max |f(g·x) - D(g) f(x)| = {diff:.3e}, relative {error:.3e} > {rtol:.0e}"
            )
            worst = max(worst, error)
    return worst


# --------------------------------------------------------------------------------------
# Structures and the full potential
# --------------------------------------------------------------------------------------


def random_structure(
    rng: np.random.Generator,
    n_atoms: int,
    cell: Optional[np.ndarray] = None,
    box: float = 4.0,
    symbols: Sequence[int] = (1, 6, 8),
    min_distance: float = 0.8,
):
    """A :class:`equipot.data.Configuration` with atoms at least ``min_distance`` apart.

    With ``cell`` (rows are lattice vectors) the structure is periodic in all three
    directions and distances count every periodic image; otherwise it is an open
    structure in a cube of side ``box``.
    """
    from ase import Atoms
    from ase.neighborlist import neighbor_list

    from equipot.data import Configuration

    periodic = cell is not None
    for _ in range(1000):
        if periodic:
            positions = rng.uniform(0.0, 1.0, (n_atoms, 3)) @ cell
        else:
            positions = rng.uniform(0.0, box, (n_atoms, 3))
        atoms = Atoms(positions=positions, cell=cell if periodic else None, pbc=periodic)
        if len(neighbor_list("d", atoms, min_distance)) == 0:
            numbers = rng.choice(np.asarray(symbols), size=n_atoms)
            numbers[: min(n_atoms, len(symbols))] = list(symbols)[:n_atoms]  # every species present
            return Configuration(
                numbers=numbers,
                positions=positions,
                cell=np.asarray(cell, dtype=float) if periodic else np.zeros((3, 3)),
                pbc=np.full(3, periodic),
            )
    raise RuntimeError("could not place the atoms; use a bigger box or fewer atoms")


def triclinic_cell(rng: np.random.Generator, length: float = 4.0, tilt: float = 0.8) -> np.ndarray:
    """A right-handed triclinic cell (rows are lattice vectors) with edges near ``length``."""
    cell = np.diag(length + rng.uniform(-0.3, 0.3, 3))
    cell[1, 0], cell[2, 0], cell[2, 1] = rng.uniform(-tilt, tilt, 3)
    return cell


def potential_outputs(potential, config, cutoff: float) -> Dict[str, torch.Tensor]:
    """The potential's outputs for one configuration (neighbour list built from scratch)."""
    from equipot.data import to_graph

    dtype = potential.dtype
    out = potential(to_graph(config, cutoff).to(dtype=dtype))
    return {k: v.detach() for k, v in out.items()}


def output_specs(fields) -> Dict[str, Spec]:
    """How each typed output of a model transforms, from its field (SE(3) scalars excluded:
    they are invariant under proper rotations only and are checked on their own)."""
    specs = {}
    for name, f in fields.items():
        level = "node" if f.level == "node" else "global"
        if f.kind == "se3_scalar":
            continue
        if f.kind in ("dipole",) or f.symmetry == "i":
            specs[name] = Spec(CARTESIAN, level)
        elif f.symmetry in ("ij", "ij=ji"):  # Cartesian tensors, Born charges
            specs[name] = Spec(RANK2, level)
        elif f.kind == "charges":
            specs[name] = Spec(None, level)
        elif f.kind == "irreps":
            specs[name] = Spec(o3.Irreps(f.irreps), level)
        else:
            raise NotImplementedError(f"no equivariance spec for output {name!r} ({f.symmetry})")
    return specs


def check_potential_equivariance(potential, config, cutoff: float, **kwargs) -> float:
    """Energy and virial/stress invariant/rank-2, per-atom energies permuted, forces vectors;
    every typed output as its field declares (see :func:`output_specs`).

    The structure (positions, cell and atom order) is transformed and its neighbour list
    rebuilt, so the whole path from coordinates to outputs is under test. For a periodic
    structure the cell rotates with the atoms (it becomes left-handed under an improper
    element).
    """
    from equipot.data import Configuration

    periodic = bool(np.any(config.pbc))
    fields = potential.output_fields

    def fn(positions, cell, numbers):
        moved = Configuration(
            numbers=numbers.numpy(), positions=positions.numpy(), cell=cell.numpy(), pbc=config.pbc,
            total_charge=config.total_charge,
        )
        out = potential_outputs(potential, moved, cutoff)
        for name, f in fields.items():  # scalar irreps get their axis of dimension 1
            if f.kind == "irreps" and f.shape == ():
                out[name] = out[name][..., None]
        return {k: v for k, v in out.items() if k in out_specs}

    inputs = (
        torch.as_tensor(config.positions, dtype=torch.float64),
        torch.as_tensor(config.cell, dtype=torch.float64),
        torch.as_tensor(config.numbers),
    )
    in_specs = (Spec(CARTESIAN, "node", translate=True), Spec(CARTESIAN), Spec(None, "node"))
    out_specs = {
        "energy": Spec(None),
        "energies": Spec(None, "node"),
        "forces": Spec(CARTESIAN, "node"),
        "virial": Spec(RANK2),
        "stress": Spec(RANK2, nonzero=periodic),
    }
    out_specs.update({k: v for k, v in output_specs(fields).items() if not (periodic and fields[k].kind in ("dipole", "born_charges"))})
    return check_equivariance(fn, inputs, in_specs, out_specs, **kwargs)
