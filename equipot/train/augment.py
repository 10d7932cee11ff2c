"""Random-rotation data augmentation (for models that are not rotation-invariant by design)."""

from dataclasses import replace

import torch

from ..graph import AtomicGraph

# labels a rotation acts on, and how: vectors per atom, or 3x3 tensors per structure
ROTATED = {"forces": "vector", "stress": "tensor", "virial": "tensor"}
UNCHANGED = {"energy", "energies", "total_charge"}


def random_rotations(n: int, generator: torch.Generator, dtype=torch.float64) -> torch.Tensor:
    """n rotation matrices (det +1) drawn uniformly from SO(3) (normalised Gaussian quaternions)."""
    q = torch.randn(n, 4, generator=generator, dtype=torch.float64)
    q = q / torch.linalg.norm(q, dim=1, keepdim=True)
    w, x, y, z = q.unbind(1)
    r = torch.stack([
        1 - 2 * (y * y + z * z), 2 * (x * y - w * z), 2 * (x * z + w * y),
        2 * (x * y + w * z), 1 - 2 * (x * x + z * z), 2 * (y * z - w * x),
        2 * (x * z - w * y), 2 * (y * z + w * x), 1 - 2 * (x * x + y * y),
    ], dim=1).reshape(n, 3, 3)
    return r.to(dtype)


def rotate_graph(graph: AtomicGraph, rotations: torch.Tensor) -> AtomicGraph:
    """Each structure g of the batch rotated by rotations[g] (positions, cell and labels).

    Positions and lattice vectors (rows) become R r; forces R F; stress and virial R S Rᵀ.
    Integer image shifts refer to the rotated cell and stay as they are.
    """
    unknown = set(graph.targets) - set(ROTATED) - UNCHANGED
    if unknown:
        raise ValueError(f"rotation augmentation cannot rotate the labels {sorted(unknown)}")
    rot = rotations.to(graph.positions.dtype)
    per_atom = rot[graph.node_graph]
    targets = {}
    for name, value in graph.targets.items():
        r = rotations.to(device=value.device, dtype=value.dtype)
        if ROTATED.get(name) == "vector":
            targets[name] = torch.einsum("nab,nb->na", r[graph.node_graph], value)
        elif ROTATED.get(name) == "tensor":
            targets[name] = r @ value @ r.transpose(1, 2)
        else:
            targets[name] = value
    return replace(
        graph,
        positions=torch.einsum("nab,nb->na", per_atom, graph.positions),
        cell=graph.cell @ rot.transpose(1, 2),
        targets=targets,
    )
