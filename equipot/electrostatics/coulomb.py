"""Electrostatic energy of Gaussian-smeared atomic charges, open or periodic, through torch-pme.

Every charge q_i is smeared so that a pair interacts through

    v(r) = k_e · erf(r / (√2 σ)) / r          (σ: ``smearing``, Å; k_e = 14.3996 eV·Å/e²)

which is smooth and finite at r = 0, so the short-range part stays with the local network and
nothing is counted twice. This is exactly the long-range ("reciprocal") half of torch-pme's
range separation of 1/r with smearing σ, so one definition serves every solver:

* ``direct``: Σ_{i<j} q_i q_j v(r_ij) over all pairs of an open structure (torch-pme's
  ``lr_from_dist``), vectorised over every open structure of a batch;
* ``ewald``: the reciprocal-space sum of torch-pme's ``EwaldCalculator`` (its G(k), self and
  background terms) for periodic cells, written out as a few batched matrix products over all
  periodic structures of a batch, on one of each ±k inside the ball |k| < k_max (torch-pme
  sums the box around it, k and −k both: 4× the vectors; vmapped over structures its einsums
  reduce to tiny matrix–vector products). Equal to torch-pme's calculator in tests, 5×
  faster in a training step on a batch of 30-atom cells (6× with the range split); with
  the pairs given, it runs on the wider Gaussian σ_k of the range split below, like PME;
* ``pme``: torch-pme's particle-mesh Ewald (its mesh interpolator and k-space filter) for
  large cells, one cell at a time (its mesh depends on the cell, so it cannot be batched).
  When the caller passes the pairs within a cutoff r_c (the model's own neighbour list) and
  the solver knows r_c (``pair_cutoff``), the mesh carries a wider Gaussian σ_k > σ and the
  rest, the difference v_σ − v_σk, which decays like erfc(r / (√2 σ_k)) / r, is summed over
  those pairs: v_σ = v_σk + (v_σ − v_σk), the pair part shifted to zero at r_c so that the
  energy stays continuous when a pair crosses the cutoff. With
  σ_k = r_c / (√2 erfc⁻¹(accuracy / 8)) the whole (mesh, pairs left out, shift) stays at
  0.3–0.4 × accuracy in the forces and below 0.7 × accuracy in the virial (measured against
  converged Ewald on random dense cells for r_c = 5–6 Å, accuracy 1e-3 to 1e-5), and the mesh
  spacing grows with σ_k, so the mesh has (σ_k / σ)³ fewer points (1.5× for σ = 1 Å,
  r_c = 5 Å, accuracy 1e-4).
  Self and neutralising-background terms of σ_k's mesh make the split exact up to the cutoff
  (tests/test_long_range.py checks it against the unsplit sums, charged cells included).

``auto`` uses direct for open structures, Ewald for periodic ones below ``pme_min_atoms``
atoms and PME above. Solver parameters follow from σ and ``accuracy``, the relative RMS error
of the long-range forces, with no tuning run: the Ewald k-space cutoff keeps every k with
exp(−σ²k²/2) > accuracy/100; PME interpolates with 7 Lagrange nodes on a mesh of spacing
h ≤ σ (accuracy / 0.2)^(1/6.3) (not below σ/8), from PME-vs-Ewald force errors
measured here (≈ 0.05–0.1 (h/σ)^6.3; tests/test_long_range.py checks the rule). The number of
mesh points along each cell vector is the smallest product of 2, 3 and 5 that reaches it
(torch-pme's own calculator rounds up to a power of two: up to 8× more points).
Positions and the cell enter differentiably (with the strained cell, the stress includes this
term). Charged periodic cells get torch-pme's neutralising background. Structures periodic
in only some directions are refused.
"""

import math
from typing import Callable, Optional, Tuple

import torch
from torch import nn

from torchpme import CoulombPotential, EwaldCalculator, PMECalculator
from torchpme.lib.kspace_filter import KSpaceFilter
from torchpme.lib.mesh_interpolator import MeshInterpolator
from torchpme.prefactors import eV_A

METHODS = ("auto", "direct", "ewald", "pme")


class LongRangeError(ValueError):
    pass


def ewald_wavelength(smearing: float, accuracy: float) -> float:
    """torch-pme's ``lr_wavelength`` (Å) for this accuracy.

    torch-pme keeps k-vectors up to about π / lr_wavelength along each reciprocal axis; we
    want every k with exp(−σ²k²/2) > accuracy/100.
    """
    k_max = math.sqrt(2.0 * math.log(100.0 / accuracy)) / smearing
    return math.pi / k_max


def half_sphere_kvectors(wavelength: float, cells: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor]:
    """(B, K, 3) reciprocal vectors k = 2π n·cell⁻ᵀ of each cell with 0 < |k| < π / wavelength,
    one of each pair ±k (the Coulomb sum is even in k), and the (B, K) mask of the real ones
    (padding is k = 0). Differentiable with respect to the cells (stress).

    torch-pme's Ewald keeps the whole box |k_a| ≲ π / wavelength along each reciprocal axis,
    k and −k both; the accuracy only needs the ball inside it (exp(−σ²k²/2) is spherical):
    about a quarter of the vectors.
    """
    reciprocal = 2.0 * math.pi * torch.linalg.inv(cells).transpose(1, 2)  # rows: b_a
    k_max = math.pi / wavelength
    # |n_a| = |k · a_a| / 2π ≤ k_max |a_a| / 2π for every k in the ball
    n_max = torch.ceil(k_max * torch.linalg.norm(cells.detach(), dim=2).max(dim=0).values / (2 * math.pi)).long()
    axes = [torch.arange(-int(m), int(m) + 1, device=cells.device) for m in n_max.tolist()]
    n = torch.stack(torch.meshgrid(*axes, indexing="ij"), dim=-1).reshape(-1, 3)
    half = (n[:, 0] > 0) | ((n[:, 0] == 0) & (n[:, 1] > 0)) | ((n[:, 0] == 0) & (n[:, 1] == 0) & (n[:, 2] > 0))
    n = n[half].to(cells.dtype)
    k = n @ reciprocal  # (B, M, 3)
    keep = torch.linalg.norm(k.detach(), dim=-1) < k_max
    order = torch.argsort(keep.to(torch.int8), dim=1, descending=True, stable=True)[:, : int(keep.sum(dim=1).max())]
    mask = torch.gather(keep, 1, order)
    k = torch.gather(k, 1, order[..., None].expand(-1, -1, 3)) * mask[..., None]
    return k, mask


def fft_size(n: int) -> int:
    """The smallest integer >= n whose only prime factors are 2, 3 and 5 (fast FFT lengths)."""
    n = max(int(n), 1)
    while True:
        m = n
        for p in (2, 3, 5):
            while m % p == 0:
                m //= p
        if m == 1:
            return n
        n += 1


def pme_mesh_spacing(smearing: float, accuracy: float) -> float:
    """Largest PME mesh spacing (Å) for this relative force accuracy with 7 interpolation nodes."""
    return smearing * max((accuracy / 0.2) ** (1 / 6.3), 1 / 8)


def mesh_smearing(smearing: float, accuracy: float, pair_cutoff) -> float:
    """σ_k (Å) of the mesh part when pairs within ``pair_cutoff`` carry the rest (σ without pairs).

    erfc(r_c / (√2 σ_k)) = accuracy / 8: the pairs left out beyond r_c add about as much
    force error as the mesh (see the module's docstring for the measured totals). A σ_k below
    σ buys nothing, so the split starts only where the cutoff allows it.
    """
    if pair_cutoff is None:
        return smearing
    x = float(torch.special.erfinv(torch.tensor(1.0 - accuracy / 8, dtype=torch.float64)))
    return max(smearing, pair_cutoff / (math.sqrt(2.0) * x))


def pme_mesh_points(cell: torch.Tensor, spacing: float) -> torch.Tensor:
    """Mesh points along each cell vector: at most ``spacing`` apart, FFT-friendly counts."""
    lengths = torch.linalg.norm(cell.detach(), dim=1).tolist()
    return torch.tensor([fft_size(math.ceil(length / spacing)) for length in lengths], device=cell.device)


class SeparableInterpolator(MeshInterpolator):
    """torch-pme's Lagrange mesh interpolation (its 1-D weights, its node placement), assembled
    as products of the three 1-D weight vectors and one flat index per node.

    torch-pme gathers the three 1-D weights and three index tensors for each of the n³ nodes
    of every particle and scatters with a three-index ``index_put_``; here the n³ weights are
    two broadcast products, the scatter is one ``index_add`` on the flattened mesh and the
    gather back is contracted one axis at a time. Same numbers (tests/test_long_range.py
    compares potentials and forces with torch-pme's to rounding), half the time at 10^4
    charges (benchmarks/cost.py pme).
    """

    def compute_weights(self, positions: torch.Tensor) -> None:
        nodes = self.interpolation_nodes
        relative = self.ns_mesh * torch.matmul(positions, self.inverse_cell)
        if nodes % 2 == 0:  # torch-pme's placement: between mesh points for even node counts
            index = torch.floor(relative).long()
            offsets = relative - (index + 0.5)
        else:
            index = torch.round(relative).long()
            offsets = relative - index
        weights = self._compute_1d_weights(offsets)  # (nodes, N, 3)
        self.wx, self.wy, self.wz = (weights[:, :, a].T for a in range(3))  # (N, nodes) each
        shifts = torch.arange(1 - (nodes + 1) // 2, 1 + nodes // 2, device=positions.device)
        nx, ny, nz = (int(v) for v in self.ns_mesh)
        ix, iy, iz = ((index[:, a : a + 1] + shifts) % m for a, m in enumerate((nx, ny, nz)))
        flat = (ix[:, :, None, None] * ny + iy[:, None, :, None]) * nz + iz[:, None, None, :]
        self.flat_index = flat.reshape(len(positions), -1)  # (N, nodes³)

    def points_to_mesh(self, particle_weights: torch.Tensor) -> torch.Tensor:
        nx, ny, nz = (int(v) for v in self.ns_mesh)
        n = self.wx.shape[0]
        nodes = (self.wx[:, :, None, None] * self.wy[:, None, :, None] * self.wz[:, None, None, :]).reshape(n, -1)
        index = self.flat_index.reshape(-1)
        channels = [
            torch.zeros(nx * ny * nz, dtype=nodes.dtype, device=nodes.device).index_add(
                0, index, (particle_weights[:, a : a + 1] * nodes).reshape(-1))
            for a in range(particle_weights.shape[1])
        ]
        return torch.stack(channels).reshape(-1, nx, ny, nz)

    def mesh_to_points(self, mesh_vals: torch.Tensor) -> torch.Tensor:
        channels = mesh_vals.shape[0]
        n, nodes = self.wx.shape
        # index_select, whose backward is an index_add (advanced indexing's is a slower index_put)
        flat = mesh_vals.reshape(channels, -1).index_select(1, self.flat_index.reshape(-1))
        values = flat.reshape(channels, n, nodes, nodes, nodes)
        values = (values * self.wz[None, :, None, None, :]).sum(-1)
        values = (values * self.wy[None, :, None, :]).sum(-1)
        return (values * self.wx[None]).sum(-1).T


class MetricKSpaceFilter(KSpaceFilter):
    """torch-pme's k-space filter with |k|² built from the reciprocal metric.

    torch-pme forms every k-vector of the mesh (nx × ny × (nz/2+1) × 3 numbers) and takes
    their norms at each call (the cell, strained for the stress, changes every call). With
    G = (2π)² B Bᵀ (B: the reciprocal basis) and the integer mesh frequencies n,
    |k|² = nᵀ G n is a sum of broadcast products of 1-D and 2-D arrays: one mesh-sized array
    instead of four. The kernel (torch-pme's ``kernel_from_k_sq``), FFTs and normalisations
    are unchanged (tests/test_long_range.py compares |k|² and the potentials with torch-pme's).
    """

    def _prep_kvectors(self, cell: Optional[torch.Tensor], ns_mesh: Optional[torch.Tensor]) -> None:
        if cell is not None:
            self.cell = cell
        if ns_mesh is not None:
            self.ns_mesh = ns_mesh
        if cell is None and ns_mesh is None:
            return
        reciprocal = torch.linalg.inv(self.cell).T  # rows b_a with a_i · b_j = δ_ij
        metric = (2 * math.pi) ** 2 * reciprocal @ reciprocal.T
        nx, ny, nz = (int(v) for v in self.ns_mesh)
        kw = {"dtype": self.cell.dtype, "device": self.cell.device}
        fx = torch.fft.fftfreq(nx, **kw) * nx  # integer frequencies, as torch-pme orders them
        fy = torch.fft.fftfreq(ny, **kw) * ny
        fz = torch.fft.rfftfreq(nz, **kw) * nz
        plane = (metric[0, 0] * fx[:, None] ** 2 + 2 * metric[0, 1] * fx[:, None] * fy[None, :]
                 + metric[1, 1] * fy[None, :] ** 2)  # (nx, ny)
        slope = 2 * metric[0, 2] * fx[:, None] + 2 * metric[1, 2] * fy[None, :]  # (nx, ny)
        self._k_sq = plane[:, :, None] + slope[:, :, None] * fz + metric[2, 2] * fz**2


class MeshPME(PMECalculator):
    """torch-pme's particle-mesh Ewald with the mesh size chosen by ``points(cell)``.

    torch-pme's ``PMECalculator`` fixes the mesh as the next power of two above
    2 × length / mesh_spacing; the kernel, FFTs, self and background terms and the
    interpolation weights are torch-pme's own; |k|² comes from :class:`MetricKSpaceFilter` and
    the interpolation is assembled by :class:`SeparableInterpolator`.
    """

    def __init__(self, potential, points: Callable[[torch.Tensor], torch.Tensor], interpolation_nodes: int = 7):
        super().__init__(potential, mesh_spacing=1.0, interpolation_nodes=interpolation_nodes)
        self.points = points
        self.kspace_filter = MetricKSpaceFilter(
            self.kspace_filter.cell, self.kspace_filter.ns_mesh, kernel=self.potential, fft_norm="backward", ifft_norm="forward")
        self.mesh_interpolator = SeparableInterpolator(
            self.mesh_interpolator.cell, self.mesh_interpolator.ns_mesh, interpolation_nodes, "Lagrange")

    def _compute_kspace(self, charges, cell, positions, periodic=None, node_mask=None, kvectors=None):
        if node_mask is not None or kvectors is not None:
            raise NotImplementedError("PME handles one cell at a time")
        mesh = self.points(cell)
        self.mesh_interpolator.update(cell, mesh)
        self.kspace_filter.update(cell, mesh)
        self.mesh_interpolator.compute_weights(positions)
        density = self.mesh_interpolator.points_to_mesh(particle_weights=charges)
        inverse_volume = 1.0 / torch.abs(cell.det())
        phi = self.mesh_interpolator.mesh_to_points(self.kspace_filter.forward(density)) * inverse_volume
        phi = phi - charges * self.potential.self_contribution()  # each Gaussian's own potential
        phi = phi - 2 * self.potential.background_correction() * charges.sum(dim=0) * inverse_volume
        phi = phi + self.potential.pbc_correction(periodic, positions, cell, charges)
        return phi / 2  # pairs were counted twice


class Electrostatics(nn.Module):
    """Per-atom electrostatic energies (eV) of charges (e) at positions (Å), open or periodic."""

    def __init__(self, smearing: float = 1.0, method: str = "auto", accuracy: float = 1e-4, pme_min_atoms: int = 150,
                 pair_cutoff: Optional[float] = None):
        super().__init__()
        if method not in METHODS:
            raise LongRangeError(f"long-range method must be one of {', '.join(METHODS)}, got {method!r}")
        if smearing <= 0 or not 0 < accuracy < 1:
            raise LongRangeError(f"smearing must be positive and accuracy in (0, 1); got {smearing}, {accuracy}")
        self.smearing, self.method, self.accuracy, self.pme_min_atoms = float(smearing), method, float(accuracy), int(pme_min_atoms)
        self.potential = CoulombPotential(smearing=self.smearing, prefactor=eV_A)
        self.wavelength = ewald_wavelength(self.smearing, self.accuracy)
        # torch-pme's Ewald calculator: the reference the batched sum (_ewald) is tested against
        # (its buffers are also in the checkpoints of existing runs)
        self.ewald = EwaldCalculator(self.potential, lr_wavelength=self.wavelength)
        spacing = pme_mesh_spacing(self.smearing, self.accuracy)
        self.pme = MeshPME(self.potential, lambda cell: pme_mesh_points(cell, spacing))
        # PME on a coarser mesh of wider Gaussians, with the difference summed over the pairs
        # within ``pair_cutoff`` that the caller passes (see the module's docstring)
        self.pair_cutoff = None if pair_cutoff is None else float(pair_cutoff)
        self.mesh_smearing = mesh_smearing(self.smearing, self.accuracy, self.pair_cutoff)
        self.mesh_potential = CoulombPotential(smearing=self.mesh_smearing, prefactor=eV_A)
        spacing_k = pme_mesh_spacing(self.mesh_smearing, self.accuracy)
        self.pme_split = MeshPME(self.mesh_potential, lambda cell: pme_mesh_points(cell, spacing_k))
        self.mesh_wavelength = ewald_wavelength(self.mesh_smearing, self.accuracy)
        for module in (self.mesh_potential, self.pme_split):  # derived from the settings, not state
            for m in module.modules():
                m._non_persistent_buffers_set.update(m._buffers)

    def extra_repr(self) -> str:
        split = f", pair_cutoff={self.pair_cutoff}, mesh_smearing={self.mesh_smearing:.3f}" if self.pair_cutoff else ""
        return f"smearing={self.smearing}, method={self.method!r}, accuracy={self.accuracy:g}{split}"

    def forward(
        self,
        charges: torch.Tensor,  # (N,) e
        positions: torch.Tensor,  # (N, 3) Å
        cell: torch.Tensor,  # (G, 3, 3) Å
        pbc: torch.Tensor,  # (G, 3) bool
        node_graph: torch.Tensor,  # (N,)
        n_graphs: int,
        pairs: Optional[Tuple[torch.Tensor, torch.Tensor, torch.Tensor]] = None,
    ) -> torch.Tensor:
        """Per-atom energies (N,): E_i = q_i φ_i / 2, so that Σ_i E_i is the energy of each structure.

        ``pairs`` (optional): ``(src, dst, vec)``, every ordered pair of atoms (periodic images
        included) closer than ``pair_cutoff``, with r_ij = vec, in :mod:`equipot.graph`'s
        convention; with it, PME runs on the coarser mesh of the range split.
        """
        periodic = pbc.any(dim=1)
        if bool((periodic & ~pbc.all(dim=1)).any()):
            raise LongRangeError("long-range electrostatics supports open or fully periodic structures, not slabs or wires")
        counts = torch.bincount(node_graph, minlength=n_graphs)
        potential = torch.zeros_like(charges)
        open_graphs = torch.nonzero(~periodic).flatten()
        if len(open_graphs):
            if self.method in ("ewald", "pme"):
                raise LongRangeError(f"method {self.method!r} needs periodic cells; use 'auto' or 'direct' for molecules")
            potential = potential + self._direct(charges, positions, node_graph, counts, open_graphs)
        periodic_graphs = torch.nonzero(periodic).flatten().tolist()
        if periodic_graphs:
            if self.method == "direct":
                raise LongRangeError("method 'direct' cannot sum a periodic structure; use 'auto', 'ewald' or 'pme'")
            use_pme = [g for g in periodic_graphs if self.method == "pme" or (self.method == "auto" and int(counts[g]) >= self.pme_min_atoms)]
            use_ewald = [g for g in periodic_graphs if g not in use_pme]
            split = pairs is not None and self.mesh_smearing > self.smearing
            if use_ewald:
                potential = potential + self._ewald(charges, positions, cell, node_graph, counts, use_ewald, split)
            for g in use_pme:
                potential = potential + self._pme_one(charges, positions, cell, node_graph, g, split)
            if split:
                potential = potential + self._pair_difference(charges, node_graph, n_graphs, periodic_graphs, pairs)
        return charges * potential

    # ----------------------------------------------------------------- solvers
    def _direct(self, charges, positions, node_graph, counts, graphs) -> torch.Tensor:
        """φ_i/2 = ½ Σ_{j≠i} q_j v(r_ij) over the atoms of each open structure."""
        out = torch.zeros_like(charges)
        # every pair i < j of the same structure, without padding: atom i pairs with the
        # atoms after it up to the end of its structure (atoms are contiguous per structure)
        ends = torch.cumsum(counts, 0)
        atoms = torch.nonzero(torch.isin(node_graph, torch.as_tensor(graphs, device=node_graph.device))).flatten()
        after = ends[node_graph[atoms]] - atoms - 1
        if int(after.sum()) == 0:
            return out
        i = torch.repeat_interleave(atoms, after)
        first = torch.cumsum(after, 0) - after  # where each atom's pairs start
        j = i + 1 + torch.arange(len(i), device=i.device) - torch.repeat_interleave(first, after)
        r = torch.linalg.norm(positions[j] - positions[i], dim=-1)
        v = self.potential.lr_from_dist(r)
        out = out.index_add(0, i, 0.5 * v * charges[j])
        return out.index_add(0, j, 0.5 * v * charges[i])

    @staticmethod
    def _padded_index(counts, graphs) -> Tuple[torch.Tensor, torch.Tensor]:
        """(B, n_max) atom indices of the chosen structures (atoms are contiguous per structure)
        and the mask of the real ones; padding points at atom 0."""
        graphs = torch.as_tensor(graphs, dtype=torch.long, device=counts.device)
        starts = (torch.cumsum(counts, 0) - counts)[graphs]
        n = counts[graphs]
        slots = torch.arange(int(n.max()) if len(n) else 0, device=counts.device)
        mask = slots[None, :] < n[:, None]
        return torch.where(mask, starts[:, None] + slots[None, :], 0), mask

    def _ewald(self, charges, positions, cell, node_graph, counts, graphs, split: bool = False) -> torch.Tensor:
        """φ_i/2 of every chosen periodic structure from the reciprocal-space Ewald sum, all
        structures at once on padded arrays:

            φ_i = (1/V) Σ_k G(k) [cos(k·r_i) S_c(k) + sin(k·r_i) S_s(k)] − q_i v_self − 2 v_bg Q / V

        with S_c, S_s = Σ_j q_j cos, sin(k·r_j) and G, v_self, v_bg torch-pme's (the same terms
        as its EwaldCalculator, equal to it in tests), summed over one of each ±k (twice G) as
        a few batched matrix products: torch-pme's own sum, vmapped over structures, spends
        most of its time in einsums that reduce to tiny matrix–vector products.
        """
        index, mask = self._padded_index(counts, graphs)
        q = charges[index] * mask  # (B, n)
        pos = positions[index] * mask[..., None]  # (B, n, 3)
        cells = cell[graphs]
        potential, wavelength = (self.mesh_potential, self.mesh_wavelength) if split else (self.potential, self.wavelength)
        k, k_mask = half_sphere_kvectors(wavelength, cells)
        k_sq = (k * k).sum(-1)
        g = torch.where(k_mask, potential.lr_from_k_sq(torch.where(k_mask, k_sq, torch.ones_like(k_sq))), 0.0)
        volume = torch.abs(torch.linalg.det(cells))  # (B,)
        arg = k @ pos.transpose(1, 2)  # (B, K, n)
        cos, sin = torch.cos(arg), torch.sin(arg)
        weight = (2.0 / volume)[:, None] * g  # both halves of ±k
        s_c = (cos @ q[..., None])[..., 0] * weight  # (B, K)
        s_s = (sin @ q[..., None])[..., 0] * weight
        phi = (s_c[:, None, :] @ cos + s_s[:, None, :] @ sin)[:, 0, :]  # (B, n)
        total = q.sum(dim=1, keepdim=True)
        phi = phi - q * potential.self_contribution() - 2.0 * potential.background_correction() * total / volume[:, None]
        phi = 0.5 * phi * mask
        out = torch.zeros_like(charges)
        return out.index_add(0, index[mask], phi[mask])

    def _pme_one(self, charges, positions, cell, node_graph, g, split: bool = False) -> torch.Tensor:
        atoms = torch.nonzero(node_graph == g).flatten()
        empty_idx = torch.zeros((0, 2), dtype=torch.long, device=charges.device)
        empty_dist = torch.zeros((0,), dtype=charges.dtype, device=charges.device)
        pme = self.pme_split if split else self.pme
        phi = pme(charges[atoms][:, None], cell[g], positions[atoms], empty_idx, empty_dist)[:, 0]
        return torch.zeros_like(charges).index_add(0, atoms, phi)

    def _pair_difference(self, charges, node_graph, n_graphs, graphs, pairs) -> torch.Tensor:
        """φ_i/2 += ½ Σ_j q_j [(v_σ − v_σk)(r_ij) − (v_σ − v_σk)(r_c)] over the given pairs of
        the chosen structures (shifted: no energy jump when a pair crosses r_c)."""
        src, dst, vec = pairs
        chosen = torch.zeros(n_graphs, dtype=torch.bool, device=charges.device)
        chosen[torch.as_tensor(graphs, device=charges.device)] = True
        keep = torch.nonzero(chosen[node_graph[dst]]).flatten()
        src, dst, vec = src[keep], dst[keep], vec[keep]
        r = torch.linalg.norm(vec, dim=-1).to(charges.dtype)
        r_c = torch.full((1,), self.pair_cutoff, dtype=charges.dtype, device=charges.device)
        difference = lambda x: self.potential.lr_from_dist(x) - self.mesh_potential.lr_from_dist(x)
        v = difference(r) - difference(r_c)
        return torch.zeros_like(charges).index_add(0, dst, 0.5 * v * charges[src])
