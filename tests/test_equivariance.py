"""E(3) equivariance of every building block and of the full potential, in float64.

Each check draws the inversion, proper and improper rotations, translations and atom
(and edge) permutations; see ``equivariance.py``. The grid runs over lmax 0..3, both
parity choices and correlation 1..3 with tiny models (4 channels).
"""

import itertools

import e3nn
import numpy as np
import pytest
import torch
from e3nn import o3

from equipot.config import ModelConfig
from equipot.data import Statistics, neighbor_list
from equipot.model import EnergyModel, Potential, build_model, hidden_irreps
from equipot.nn import LinearReadout, MLPReadout, ProductBasis, RadialEmbedding, make_gate
from equipot.o3 import ChannelProduct, neighbour_slots

from equivariance import (
    CARTESIAN, RANK2, Spec, check_equivariance, check_potential_equivariance, random_structure,
    triclinic_cell,
)

R_MAX = 3.0
# (lmax, parity, correlation, message_lmax, product_mixing, sh_lmax): every lmax/parity/correlation
# with full messages, a few with fewer irreps sent along the edges than formed in a layer, a
# few with mixed channels in the node products, and a few with edge harmonics above lmax
COMBOS = [combo + (None, False, None) for combo in itertools.product(range(4), ("both", "natural"), (1, 2, 3))]
COMBOS += [(1, "both", 3, 0, False, None), (2, "natural", 3, 0, False, None), (3, "natural", 2, 1, False, None)]
COMBOS += [(1, "both", 3, None, True, None), (2, "natural", 3, None, True, None), (3, "both", 2, 1, True, None)]
COMBOS += [(1, "natural", 3, None, True, 3), (2, "both", 2, None, False, 3)]


def combo_id(combo):
    lmax, parity, correlation, message_lmax, mixing, sh_lmax = combo
    return (f"l{lmax}-{parity}-c{correlation}" + ("" if message_lmax is None else f"-m{message_lmax}")
            + ("-mix" if mixing else "") + ("" if sh_lmax is None else f"-sh{sh_lmax}"))


@pytest.fixture(scope="module", autouse=True)
def float64():
    """float64 default dtype for the whole module.

    e3nn's einsum optimisation is switched off while the grid of models is built, and so is
    torch's search for a contraction order at each einsum call: both only reorder
    contractions (the same function) and would cost most of the time on these tiny models.
    """
    dtype, optimization = torch.get_default_dtype(), e3nn.get_optimization_defaults()
    opt_einsum = torch.backends.opt_einsum.enabled
    torch.set_default_dtype(torch.float64)
    e3nn.set_optimization_defaults(optimize_einsums=False)
    torch.backends.opt_einsum.enabled = False
    yield optimization
    torch.set_default_dtype(dtype)
    e3nn.set_optimization_defaults(**optimization)
    torch.backends.opt_einsum.enabled = opt_einsum


def make_config(lmax, parity, correlation, message_lmax=None, product_mixing=False, sh_lmax=None, num_layers=2):
    return ModelConfig(
        r_max=R_MAX, num_layers=num_layers, channels=4, lmax=lmax, parity=parity,
        correlation=correlation, num_basis=4, radial_hidden=[8], readout_hidden=4,
        message_lmax=message_lmax, product_mixing=product_mixing, sh_lmax=sh_lmax,
    )


def make_stats():
    # zero shift: energies are the network's output alone, so a relative tolerance is sharp
    return Statistics(species=[1, 6, 8], e0={1: 0.0, 6: 0.0, 8: 0.0}, energy_shift=0.0,
                      energy_scale=1.0, avg_num_neighbors=6.0)


@pytest.fixture(scope="module", params=COMBOS, ids=combo_id)
def potential(request, float64) -> Potential:
    lmax, parity, correlation, message_lmax, mixing, sh_lmax = request.param
    torch.manual_seed(100 * lmax + 10 * correlation + (parity == "both") + 1000 * (message_lmax or 0) + 5 * mixing
                      + 10000 * (sh_lmax or 0))
    model = build_model(make_config(*request.param), make_stats())
    assert model.dtype == torch.float64
    model.combo = request.param
    return model


@pytest.fixture(scope="module")
def graph_inputs(float64):
    """An open 8-atom structure: species indices, edge vectors and edge indices."""
    config = random_structure(np.random.default_rng(7), 8, box=3.2)
    src, dst, shift = neighbor_list(config.positions, config.cell, config.pbc, R_MAX)
    assert len(src) > 20 and not shift.any()
    pos = torch.as_tensor(config.positions)
    src, dst = torch.as_tensor(src), torch.as_tensor(dst)
    vec = pos[src] - pos[dst]
    species = torch.as_tensor(np.searchsorted([1, 6, 8], config.numbers))
    return config, species, vec, src, dst


def random_features(irreps: o3.Irreps, n: int, seed: int) -> torch.Tensor:
    return torch.randn(n, o3.Irreps(irreps).dim, generator=torch.Generator().manual_seed(seed))


# --------------------------------------------------------------------------------------
# The helper itself must detect broken functions (so that a pass means something).
# --------------------------------------------------------------------------------------


def test_helper_detects_non_invariant_output():
    v = torch.randn(5, 3, dtype=torch.float64)
    with pytest.raises(AssertionError, match="not equivariant"):
        check_equivariance(lambda v: v[:, 0], (v,), (Spec(CARTESIAN, "node"),), Spec(None, "node"))
    # while the length is invariant
    check_equivariance(lambda v: v.norm(dim=1), (v,), (Spec(CARTESIAN, "node"),), Spec(None, "node"))


def test_helper_detects_wrong_parity():
    """A triple product is invariant under rotations but odd under inversion: 0o, not 0e."""
    u = torch.randn(6, 3, 3, dtype=torch.float64)

    def triple(u):
        return torch.linalg.det(u)[:, None]

    spec_in = (Spec(CARTESIAN, "node"),)
    check_equivariance(triple, (u,), spec_in, Spec("0o", "node"), n_elements=1)  # inversion only
    with pytest.raises(AssertionError, match="inversion"):
        check_equivariance(triple, (u,), spec_in, Spec(None, "node"))
    with pytest.raises(AssertionError, match="not equivariant"):
        check_equivariance(triple, (u,), spec_in, Spec("0e", "node"))
    # identity on features is fine, unless the output claims the other parity
    x = random_features("2x1o", 4, 0)
    check_equivariance(lambda x: x, (x,), (Spec("2x1o", "node"),), Spec("2x1o", "node"))
    with pytest.raises(AssertionError, match="improper|inversion"):
        check_equivariance(lambda x: x, (x,), (Spec("2x1o", "node"),), Spec("2x1e", "node"))


def test_helper_detects_order_and_position_dependence():
    x = torch.randn(5, dtype=torch.float64)
    with pytest.raises(AssertionError, match="not equivariant"):
        check_equivariance(lambda x: x * torch.arange(5.0), (x,), (Spec(None, "node"),), Spec(None, "node"))
    pos = torch.randn(5, 3, dtype=torch.float64)
    spec_in = (Spec(CARTESIAN, "node", translate=True),)
    with pytest.raises(AssertionError, match="not equivariant"):
        check_equivariance(lambda r: r.norm(dim=1), (pos,), spec_in, Spec(None, "node"))
    check_equivariance(lambda r: (r - r.mean(0)).norm(dim=1), (pos,), spec_in, Spec(None, "node"))
    # a stress-like tensor must rotate on both sides
    check_equivariance(lambda r: torch.einsum("ni,nj->ij", r - r.mean(0), r - r.mean(0)),
                       (pos,), spec_in, Spec(RANK2))
    with pytest.raises(AssertionError, match="not equivariant"):
        check_equivariance(lambda r: torch.einsum("ni,nj->ij", r - r.mean(0), r - r.mean(0)),
                           (pos,), spec_in, Spec(None))


def test_helper_refuses_zero_outputs():
    x = random_features("1x1o", 3, 0)
    with pytest.raises(AssertionError, match="zero"):
        check_equivariance(lambda x: 0 * x, (x,), (Spec("1x1o", "node"),), Spec("1x1o", "node"))


# --------------------------------------------------------------------------------------
# Building blocks
# --------------------------------------------------------------------------------------


def test_radial_embedding_of_edge_vectors(graph_inputs):
    """Lengths are invariant; the embedding of |g·r| equals that of |r| (edges permuted)."""
    _, _, vec, _, _ = graph_inputs
    radial = RadialEmbedding(R_MAX, num_basis=6)
    out = check_equivariance(lambda v: radial(v.norm(dim=-1)), (vec,), (Spec(CARTESIAN, "edge"),),
                             Spec(None, "edge"))
    assert out <= 1e-12


@pytest.mark.parametrize("lmax", range(4))
def test_spherical_harmonics_match_cartesian_vectors(lmax, graph_inputs):
    """The edge attributes rotate with D(R) when the Cartesian edge vectors rotate with R."""
    _, _, vec, _, _ = graph_inputs
    sh = o3.SphericalHarmonics(o3.Irreps.spherical_harmonics(lmax), normalize=True, normalization="component")
    check_equivariance(sh, (vec,), (Spec(CARTESIAN, "edge"),), Spec(sh.irreps_out, "edge"))


@pytest.mark.parametrize("lmax", range(4))
@pytest.mark.parametrize("parity", ["both", "natural"])
def test_gate(lmax, parity):
    gate = make_gate(hidden_irreps(4, lmax, parity))
    x = random_features(gate.irreps_in, 10, lmax)
    check_equivariance(gate, (x,), (Spec(gate.irreps_in, "node"),), Spec(gate.irreps_out, "node"))


def _e3nn_modules(module):
    """(name, submodule) for every e3nn submodule with declared input/output irreps, ours that
    subclass one (equipot.o3.Linear) or stand in for one (equipot.o3.ChannelProduct) included."""
    for name, sub in module.named_modules():
        if not (any(cls.__module__.startswith("e3nn") for cls in type(sub).__mro__) or isinstance(sub, ChannelProduct)):
            continue
        if hasattr(sub, "irreps_in1") or isinstance(sub, o3.SphericalHarmonics):
            yield name, sub
        elif isinstance(getattr(sub, "irreps_in", None), o3.Irreps) and isinstance(
            getattr(sub, "irreps_out", None), o3.Irreps
        ):
            yield name, sub


def test_every_e3nn_submodule(potential, graph_inputs):
    """Linear maps, tensor products (shared, internal or per-edge weights), gates and
    activations, one by one, with random inputs in their declared irreps."""
    _, _, vec, _, _ = graph_inputs
    n = 7
    checked = []
    for k, (name, mod) in enumerate(_e3nn_modules(potential)):
        if mod.irreps_out.dim == 0:  # e.g. the gate's product when there is nothing to gate
            continue
        if isinstance(mod, o3.SphericalHarmonics):
            check_equivariance(mod, (vec,), (Spec(CARTESIAN, "edge"),), Spec(mod.irreps_out, "edge"))
        elif hasattr(mod, "irreps_in1"):
            x1 = random_features(mod.irreps_in1, n, k)
            x2 = random_features(mod.irreps_in2, n, k + 1000)
            inputs = [x1, x2]
            specs = [Spec(mod.irreps_in1, "node"), Spec(mod.irreps_in2, "node")]
            if not mod.internal_weights and mod.weight_numel > 0:
                shape = (mod.weight_numel,) if mod.shared_weights else (n, mod.weight_numel)
                inputs.append(torch.randn(*shape))
                specs.append(Spec(None, "global" if mod.shared_weights else "node"))
            check_equivariance(mod, inputs, specs, Spec(mod.irreps_out, "node", nonzero=False))
        else:
            x = random_features(mod.irreps_in, n, k)
            check_equivariance(mod, (x,), (Spec(mod.irreps_in, "node"),),
                               Spec(mod.irreps_out, "node", nonzero=False))
        checked.append(name)
    kinds = {type(m).__name__ for _, m in _e3nn_modules(potential)}
    assert {"Linear", "FullyConnectedTensorProduct", "Gate", "SphericalHarmonics"} <= kinds
    assert any(".skip" in c for c in checked)
    # the convolutions of inputs of one multiplicity are our own kernels (tested below, in
    # the whole layer, and against e3nn in test_o3.py)
    e3nn_convs = [layer for layer in potential.energy_model.layers
                  if not layer.channel_messages]
    assert sum(".conv" in c for c in checked) == len(e3nn_convs)
    # the node products are ours (ChannelProduct) where that is faster, e3nn's otherwise
    product_kinds = {type(p).__name__ for layer in potential.energy_model.layers for p in layer.product.products}
    assert product_kinds <= {"TensorProduct", "ChannelProduct"}
    assert ("TensorProduct" in kinds) == (bool(e3nn_convs) or "TensorProduct" in product_kinds)
    if potential.combo[2] > 1:
        assert any(".product.products" in c for c in checked)
    assert len(checked) >= 10


@pytest.mark.parametrize("layer_index", [0, 1])
def test_interaction(potential, graph_inputs, layer_index):
    """One message-passing layer: features of irreps_in -> irreps_out, given the edges."""
    _, species, vec, src, dst = graph_inputs
    em: EnergyModel = potential.energy_model
    layer = em.layers[layer_index]
    onehot = torch.nn.functional.one_hot(species, em.num_species).to(torch.float64)
    h = random_features(layer.irreps_in, len(species), 11 + layer_index)

    def fn(h, vec, onehot, species, src, dst):
        r = vec.norm(dim=-1)
        return layer(h, onehot, species, em.sh(vec), em.radial(r), src, dst, neighbour_slots(dst, h.shape[0]))

    node, cart = Spec(None, "node"), Spec(CARTESIAN, "edge")
    index = Spec(None, "edge_node_index")
    check_equivariance(
        fn, (h, vec, onehot, species, src, dst),
        (Spec(layer.irreps_in, "node"), cart, node, node, index, index),
        Spec(layer.irreps_out, "node"),
    )


def test_product_basis(potential, graph_inputs):
    """A, A⊗A, A⊗A⊗A with species-dependent weights, on random A of every hidden irrep."""
    _, species, _, _, _ = graph_inputs
    lmax, parity, correlation, _, _, sh_lmax = potential.combo
    irreps = hidden_irreps(4, max(lmax, sh_lmax or 0), parity)  # A: up to sh_lmax inside a layer
    for layer in potential.energy_model.layers:
        product: ProductBasis = layer.product
        assert len(product.products) == correlation - 1
        # only what the gate reads is formed
        assert {ir for _, ir in product.irreps_out} == {ir for _, ir in layer.gate.irreps_in}
        a = random_features(irreps, len(species), 3)
        check_equivariance(product, (a, species), (Spec(irreps, "node"), Spec(None, "node")),
                           Spec(product.irreps_out, "node"))
    product = potential.energy_model.layers[0].product
    # the higher powers really are there: the map is not linear unless correlation is 1
    nonlinearity = (product(2 * a, species) - 2 * product(a, species)).abs().max()
    assert (nonlinearity > 1e-6) == (correlation > 1)


@pytest.mark.parametrize("mixing", [False, True])
def test_product_mixing_forms_odd_couplings(mixing):
    """From A = vectors only (the first layer's 1o), same-channel products cannot form a
    pseudovector (v × v = 0) or a pseudoscalar; with mixed channels they do."""
    irreps = hidden_irreps(4, 1, "both")  # 4x0e + 4x0o + 4x1o + 4x1e
    torch.manual_seed(0)
    product = ProductBasis(irreps, 1, 3, mixing=mixing)
    a = random_features(irreps, 6, 9)
    a[:, : irreps.slices()[2].start] = 0  # keep the 1o block only
    a[:, irreps.slices()[3]] = 0
    out = product(a, torch.zeros(6, dtype=torch.long))
    odd = torch.cat([out[:, irreps.slices()[1]], out[:, irreps.slices()[3]]], dim=1)  # 0o and 1e
    assert (odd.abs().max() > 1e-3) == mixing
    if not mixing:
        assert odd.abs().max() < 1e-12
    check_equivariance(product, (a, torch.zeros(6, dtype=torch.long)), (Spec(irreps, "node"), Spec(None, "node")),
                       Spec(irreps, "node"))


def test_readouts(potential):
    em = potential.energy_model
    assert isinstance(em.readouts[0], LinearReadout) and isinstance(em.readouts[-1], MLPReadout)
    for layer, readout in zip(em.layers, em.readouts):
        h = random_features(layer.irreps_out, 9, 5)
        check_equivariance(readout, (h,), (Spec(layer.irreps_out, "node"),), Spec(None, "node"))


def test_energy_model(potential, graph_inputs):
    """Species and edge vectors in; per-atom energies (invariant) and last-layer features out."""
    _, species, vec, src, dst = graph_inputs
    node, index = Spec(None, "node"), Spec(None, "edge_node_index")
    em = potential.energy_model
    check_equivariance(
        em, (species, vec, src, dst),
        (node, Spec(CARTESIAN, "edge"), index, index), (Spec(None, "node"), Spec(em.irreps_features, "node")),
    )


# --------------------------------------------------------------------------------------
# The full potential: energy, per-atom energies, forces, virial and stress
# --------------------------------------------------------------------------------------


def test_potential_open_structure(potential):
    config = random_structure(np.random.default_rng(3), 7, box=3.5)
    check_potential_equivariance(potential, config, R_MAX, n_elements=3)


def test_potential_periodic_triclinic(potential):
    """A triclinic cell smaller than 2 r_max (atoms see several images of each other)."""
    rng = np.random.default_rng(4)
    cell = triclinic_cell(rng, length=3.6)
    assert np.linalg.norm(cell, axis=1).max() < 2 * R_MAX
    config = random_structure(rng, 5, cell=cell)
    check_potential_equivariance(potential, config, R_MAX, n_elements=3)


def test_potential_with_default_e3nn_code(float64):
    """The same check with e3nn's optimised code generation (as used in production), three
    layers (a hidden -> hidden layer) and a nonzero shift and scale."""
    assert torch.backends.opt_einsum.enabled is False
    torch.backends.opt_einsum.enabled = True
    saved = e3nn.get_optimization_defaults()
    e3nn.set_optimization_defaults(**float64)
    try:
        torch.manual_seed(1)
        stats = Statistics(species=[1, 6, 8], e0={1: -13.6, 6: -1029.0, 8: -2041.0}, energy_shift=-0.7,
                           energy_scale=1.7, avg_num_neighbors=6.0)
        model = build_model(make_config(1, "both", 3, num_layers=3), stats)
        rng = np.random.default_rng(5)
        check_potential_equivariance(model, random_structure(rng, 6, cell=triclinic_cell(rng, 3.8)), R_MAX,
                                     n_elements=3)
        check_potential_equivariance(model, random_structure(rng, 7, box=3.5), R_MAX, n_elements=3)
    finally:
        e3nn.set_optimization_defaults(**saved)
        torch.backends.opt_einsum.enabled = False


def test_edge_harmonics_above_lmax():
    """sh_lmax above lmax: the edges carry l up to sh_lmax, the atomic basis A and its products
    inside a layer too (as MACE's up to max_ell), and each layer passes on l <= lmax only."""
    for lmax, sh_lmax in ((1, 3), (2, 3)):
        em = build_model(make_config(lmax, "natural", 2, sh_lmax=sh_lmax), make_stats()).energy_model
        assert em.irreps_sh.lmax == sh_lmax
        used = set()
        for layer in em.layers:
            used |= {sh_slice.stop - sh_slice.start for sh_slice, _ in layer.conv.groups}  # 2l + 1
            assert layer.linear_msg.irreps_out.lmax == sh_lmax
            assert layer.irreps_out.lmax <= lmax
        assert 2 * sh_lmax + 1 in used  # the highest harmonic is used
