"""Our kernels against e3nn: the same function, values and derivatives, in float64."""

import pytest
import torch
from e3nn import o3

from equipot.nn.interaction import uvu_instructions
from equipot.o3 import ChannelConvolution, Linear, ScalarConvolution, neighbour_slots

CASES = [  # scalar inputs, harmonics up to l, irreps the messages may have
    ("5x0e", 1, "0e+1o"),
    ("5x0e", 3, "0e+1o+2e+3o"),
    ("4x0e+4x0o", 2, "0e+0o+1o+1e+2e+2o"),
    ("4x0e+4x0o", 1, "0e+1o"),  # some paths not allowed
]


def random_graph(num_nodes: int, num_edges: int, seed: int):
    g = torch.Generator().manual_seed(seed)
    src = torch.randint(0, num_nodes, (num_edges,), generator=g)
    dst = torch.randint(0, num_nodes - 1, (num_edges,), generator=g)  # the last atom has no edges
    return src, dst


def test_neighbour_slots():
    src, dst = random_graph(9, 60, 0)
    for nodes in (8, 9):  # the last atom without edges gets no row (9), or is not there (8)
        table = neighbour_slots(dst, nodes)
        counts = torch.bincount(dst, minlength=nodes)
        assert table.num_slots == int(counts.max())
        assert (table.rows is None) == (nodes == 8)
        atom_of_row = torch.arange(nodes) if table.rows is None else table.rows
        assert torch.equal(atom_of_row[table.edge_row], dst)
        assert len(set(zip(table.edge_row.tolist(), table.edge_slot.tolist()))) == len(dst)  # own places
        for i in range(8):
            assert sorted(table.edge_slot[dst == i].tolist()) == list(range(int(counts[i])))
    empty = neighbour_slots(torch.zeros(0, dtype=torch.long), 4)
    assert empty.edge_slot.shape == (0,) and empty.num_slots == 0


def check_kernel_against_e3nn(kernel_class, irreps_in, lmax, allowed, seed):
    """The kernel's neighbour sum equals e3nn's TensorProduct + index_add: values, first and
    second derivatives (forces, and the force loss in training); atoms without edges get zeros,
    also when they have no row in the table (a caller skipped them)."""
    irreps_in, irreps_sh = o3.Irreps(irreps_in), o3.Irreps.spherical_harmonics(lmax)
    mid, instructions = uvu_instructions(irreps_in, irreps_sh, [ir for _, ir in o3.Irreps(allowed)])
    reference = o3.TensorProduct(irreps_in, irreps_sh, mid, instructions, shared_weights=False, internal_weights=False)
    ours = kernel_class(irreps_in, irreps_sh, mid, instructions)
    assert ours.weight_numel == reference.weight_numel
    n, e = 9, 70
    src, dst = random_graph(n, e, seed)
    x = torch.randn(n, irreps_in.dim, requires_grad=True)
    vec = torch.randn(e, 3, requires_grad=True)
    w = torch.randn(e, reference.weight_numel, requires_grad=True)

    def run(keep):
        sh = o3.spherical_harmonics(irreps_sh, vec[keep], True, normalization="component")
        s, d, we = src[keep], dst[keep], w[keep]
        expected = torch.zeros(n, mid.dim).index_add(0, d, reference(x[s], sh, we))
        table = neighbour_slots(d, n)
        extra = (d,) if kernel_class is ChannelConvolution else ()
        return expected, ours(x, sh, we, s, *extra, table)

    every = torch.ones(e, dtype=torch.bool)
    expected, got = run(every)
    assert got.shape == expected.shape
    torch.testing.assert_close(got, expected, rtol=1e-12, atol=1e-12)
    assert got[n - 1].abs().max() == 0  # no edges, no message
    probe = torch.randn_like(expected)
    grads = [torch.autograd.grad((out * probe).sum(), (x, vec, w), create_graph=True) for out in run(every)]
    for g_expected, g_got in zip(*grads):
        torch.testing.assert_close(g_got, g_expected, rtol=1e-11, atol=1e-11)
    second = [torch.autograd.grad(g[1].square().sum(), (x, vec, w), retain_graph=True) for g in grads]
    for s_expected, s_got in zip(*second):
        torch.testing.assert_close(s_got, s_expected, rtol=1e-10, atol=1e-10)
    expected, got = run(dst != 0)
    torch.testing.assert_close(got, expected, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("irreps_in,lmax,allowed", CASES)
def test_scalar_convolution_matches_e3nn(float64_without_einsum_search, irreps_in, lmax, allowed):
    check_kernel_against_e3nn(ScalarConvolution, irreps_in, lmax, allowed, seed=1)


@pytest.mark.parametrize("irreps_in, lmax, allowed", [
    ("3x0e", 2, "0e+1o+2e"),
    ("3x0e+3x1o", 1, "0e+1o"),
    ("2x0e+2x1o+2x2e", 2, "0e+1o+2e"),
    ("2x0e+2x0o+2x1o+2x1e", 2, "0e+0o+1o+1e+2e+2o"),
    ("2x0e+2x1o+2x2e+2x3o", 3, "0e+1o+2e+3o"),
])
def test_channel_convolution_matches_e3nn(float64_without_einsum_search, irreps_in, lmax, allowed):
    check_kernel_against_e3nn(ChannelConvolution, irreps_in, lmax, allowed, seed=2)


def test_channel_convolution_refuses_what_it_cannot_do():
    sh = o3.Irreps.spherical_harmonics(1)
    with pytest.raises(ValueError, match="one multiplicity"):
        ChannelConvolution("3x0e+2x1o", sh, "3x0e", [(0, 0, 0, "uvu", True)])
    with pytest.raises(ValueError, match="uvu"):
        ChannelConvolution("3x0e", sh, "3x0e", [(0, 0, 0, "uuu", True)])


def test_scalar_convolution_refuses_what_it_cannot_do():
    sh = o3.Irreps.spherical_harmonics(1)
    mid, instructions = uvu_instructions(o3.Irreps("3x0e+3x1o"), sh, [o3.Irrep("0e"), o3.Irrep("1o")])
    with pytest.raises(ValueError, match="scalar inputs"):
        ScalarConvolution("3x0e+3x1o", sh, mid, instructions)
    with pytest.raises(ValueError, match="scalar inputs"):
        ScalarConvolution("3x0e+2x0o", sh, "3x0e", [(0, 0, 0, "uvu", True)])


def test_radial_network_is_e3nns_fully_connected_net(float64_without_einsum_search):
    from e3nn.nn import FullyConnectedNet

    from equipot.nn import RadialNetwork

    sizes = [8, 16, 12, 20]
    reference = FullyConnectedNet(sizes, torch.nn.functional.silu)
    ours = RadialNetwork(sizes)
    with torch.no_grad():
        for k, w in enumerate(ours.weights):
            w.copy_(getattr(reference, f"layer{k}").weight)
    x = torch.randn(30, 8, requires_grad=True)
    torch.testing.assert_close(ours(x), reference(x), rtol=1e-12, atol=1e-12)
    g_ours, = torch.autograd.grad(ours(x).sin().sum(), x)
    g_ref, = torch.autograd.grad(reference(x).sin().sum(), x)
    torch.testing.assert_close(g_ours, g_ref, rtol=1e-12, atol=1e-12)


def test_channel_convolution_takes_the_cheap_contractions(float64_without_einsum_search):
    """Paths with l1 = 0, l2 = 0 or l3 = 0 are contracted as a transpose, a copy or a trace
    (their Clebsch–Gordan blocks are multiples of the identity); the others by einsum. The
    shortcuts equal the einsum they replace."""
    from math import sqrt

    from equipot.o3.channel_convolution import _contract, _structure

    for l1 in range(4):
        for l2 in range(4):
            for l3 in range(abs(l1 - l2), min(l1 + l2, 3) + 1):
                cg = o3.wigner_3j(l1, l2, l3, dtype=torch.float64) * sqrt(2 * l3 + 1)
                kind, c = _structure(cg)
                expected = ("identity_left" if l1 == 0 else "identity_right" if l2 == 0
                            else "trace" if l3 == 0 else "general")
                assert kind == expected, (l1, l2, l3)
                block = torch.randn(5, 2 * l2 + 1, 2 * l1 + 1, 3)
                reference = torch.einsum("rjiu,ijk->ruk", block, cg)
                got = _contract(block, kind, c, torch.zeros_like(cg))  # the shortcuts never read C
                if kind == "general":
                    got = _contract(block, kind, c, cg)
                torch.testing.assert_close(got, reference, rtol=1e-12, atol=1e-12)
    irreps_in, sh = o3.Irreps("2x0e+2x0o+2x1o+2x1e"), o3.Irreps.spherical_harmonics(2)
    mid, instructions = uvu_instructions(irreps_in, sh, [ir for _, ir in o3.Irreps("0e+0o+1o+1e+2e+2o")])
    kinds = {entry[-1][0] for _, entries in ChannelConvolution(irreps_in, sh, mid, instructions).groups for entry in entries}
    assert kinds == {"identity_left", "identity_right", "trace", "general"}


@pytest.mark.parametrize("irreps_in, irreps_out", [
    ("16x0e+16x1o", "16x0e+16x1o"),  # a layer's own width
    ("8x0e+4x0o+8x1o+3x1e+8x2e", "5x0e+2x0o+6x1o+6x2e"),  # both parities; 1e has no output
    ("4x0e+3x1o+2x0e+5x1o", "3x1o+4x0e+2x2e"),  # repeated irreps summed; 2e has no input: zeros
    ("3x0e", "1x0e"),
    ("2x1o", "0x0e+4x1o"),
    ("0x0e+3x1o+2x0e", "2x0e+3x1o"),  # an input irrep of multiplicity 0
])
def test_linear_matches_e3nn(float64_without_einsum_search, irreps_in, irreps_out):
    """Our Linear is an o3.Linear with its own forward: the same weights give e3nn's result,
    and the same first and second derivatives (a force pass and the gradient of a force loss)."""
    torch.manual_seed(0)
    ours = Linear(irreps_in, irreps_out)
    theirs = o3.Linear(irreps_in, irreps_out)
    theirs.load_state_dict(ours.state_dict())  # the same parameters and buffers, nothing else
    x = torch.randn(7, 2, ours.irreps_in.dim, requires_grad=True)  # extra leading axes kept
    results = []
    for module in (ours, theirs):
        module.zero_grad(set_to_none=True)
        y = module(x)
        (dx,) = torch.autograd.grad((y.sin() * torch.arange(y.shape[-1])).sum(), x, create_graph=True)
        loss = (dx ** 2).sum()
        dw, dxx = torch.autograd.grad(loss, [module.weight, x])
        results.append((y, dx, dw, dxx))
    assert results[0][0].shape == (7, 2, ours.irreps_out.dim)
    for got, want in zip(*results):
        torch.testing.assert_close(got, want, rtol=1e-12, atol=1e-12)
    for rows in (torch.zeros(0, ours.irreps_in.dim), torch.randn(3, ours.irreps_in.dim).float()):
        torch.testing.assert_close(ours.float()(rows.float()), theirs.float()(rows.float()))  # no rows; float32


def test_linear_without_inputs_gives_zeros_like_e3nn():
    ours, theirs = Linear("", "4x0e+1x1o"), o3.Linear("", "4x0e+1x1o")
    x = torch.zeros(5, 2, 0)
    assert ours(x).shape == theirs(x).shape == (5, 2, 7)
    assert not ours(x).any() and not theirs(x).any()


def test_linear_keeps_e3nns_external_weights():
    """Weights passed in (a form equipot does not use) go through e3nn's own code."""
    ours = Linear("3x0e+2x1o", "2x0e+2x1o")
    w = torch.randn(ours.weight_numel)
    x = torch.randn(4, ours.irreps_in.dim)
    torch.testing.assert_close(ours(x, w), o3.Linear.forward(ours, x, w))
    assert not torch.allclose(ours(x, w), ours(x))


@pytest.mark.parametrize("irreps1, irreps_out", [
    ("3x0e+3x1o+3x2e", "3x0e+3x1o+3x2e"),  # a first product: every irrep out
    ("3x0e+3x1o+3x2e", "3x0e"),  # a last layer's last product: scalars only (dot products)
    ("3x0e+3x1o+3x2e", "3x0e+3x1o"),  # scalars and the vectors of a dipole head
    ("2x0e+2x0o+2x1o+2x1e", "2x0e+2x0o+2x1o+2x1e"),  # both parities
    ("2x0e+2x0o+2x1o+2x1e", "2x0e+2x0o"),  # scalars of both parities: blocks of a with other blocks of b
    ("2x0e+2x1o+2x2e+2x3o", "2x0e+2x1o+2x2e+2x3o"),
])
@pytest.mark.parametrize("sparse", [False, True])
def test_channel_product_matches_e3nn(float64_without_einsum_search, irreps1, irreps_out, sparse):
    """Values, first and second derivatives (forces, and the force loss) equal e3nn's
    TensorProduct with the same "uuu" instructions and weight layout; also in the form of
    compiled graphs, a sum of the nonzero terms (``sparse_products``)."""
    import contextlib

    from equipot.nn.interaction import uuu_instructions
    from equipot.o3 import ChannelProduct
    from equipot.o3.channel_product import sparse_products

    irreps1, irreps_out = o3.Irreps(irreps1), o3.Irreps(irreps_out)
    instructions = uuu_instructions(irreps1, irreps1, irreps_out)
    reference = o3.TensorProduct(irreps1, irreps1, irreps_out, instructions, shared_weights=False, internal_weights=False)
    ours = ChannelProduct(irreps1, irreps1, irreps_out, instructions)
    assert ours.weight_numel == reference.weight_numel
    assert ours.trace == all(ir.l == 0 for _, ir in irreps_out)
    g = torch.Generator().manual_seed(5)
    x1 = torch.randn(6, irreps1.dim, generator=g, requires_grad=True)
    x2 = torch.randn(6, irreps1.dim, generator=g, requires_grad=True)
    w = torch.randn(6, reference.weight_numel, generator=g, requires_grad=True)
    expected = reference(x1, x2, w)
    with sparse_products() if sparse else contextlib.nullcontext():
        got = ours(x1, x2, w)
    torch.testing.assert_close(got, expected, rtol=1e-12, atol=1e-12)
    probe = torch.randn(expected.shape, generator=g)
    grads = [torch.autograd.grad((out * probe).sum(), (x1, x2, w), create_graph=True) for out in (expected, got)]
    for g_expected, g_got in zip(*grads):
        torch.testing.assert_close(g_got, g_expected, rtol=1e-11, atol=1e-11)
    second = [torch.autograd.grad(gr[0].square().sum() + gr[2].sum(), (x1, x2, w), retain_graph=True) for gr in grads]
    for s_expected, s_got in zip(*second):
        torch.testing.assert_close(s_got, s_expected, rtol=1e-10, atol=1e-10)


def test_channel_product_refuses_what_it_cannot_do():
    from equipot.o3 import ChannelProduct

    with pytest.raises(ValueError, match="one multiplicity"):
        ChannelProduct("3x0e+2x1o", "3x0e+2x1o", "3x0e", [(0, 0, 0, "uuu", True)])
    with pytest.raises(ValueError, match="'uuu' paths only"):
        ChannelProduct("3x0e", "3x0e", "3x0e", [(0, 0, 0, "uvu", True)])
