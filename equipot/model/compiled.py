"""A :class:`~equipot.model.Potential` traced into one flat graph of tensor operations and
compiled with ``torch.compile``.

Why. On a CPU a training step of a small model on a small batch is thousands of separate tensor
operations (the network, the pass that takes the forces, and the backward pass of a loss on
those forces), and their dispatch, not their arithmetic, sets its time. ``torch.compile`` cannot
take the step as written: the forces come from ``torch.autograd.grad`` inside the model, and a
force loss differentiates them again (a double backward, which AOTAutograd does not support).
So the energy *and its derivatives* are first traced with ``make_fx``: the derivative pass turns
into ordinary operations of one graph (energy, forces, virial, stress and the typed outputs as
functions of positions and weights), whose own backward, the gradient of a loss, is a first
derivative again. Inductor then fuses that graph into a few generated C++ loops.

The trace takes the weights as inputs, so the optimizer's updates (and the EMA weights swapped in
for validation) are seen without retracing, and it uses symbolic sizes, so one compiled graph
serves batches of any number of atoms, edges and structures. What the arithmetic cannot trace
(the check for unknown elements, the neighbour table, whether the edges come in mirrored halves)
is done eagerly per batch by :meth:`Potential.layout`. A new graph is traced and compiled for each
kind of batch that needs different operations (edges mirrored or not; some atoms without
neighbours) and for each dtype and device; torch.compile itself compiles again for a batch of one
structure (a lone structure at inference is evaluated in a batch with an empty one, and a lone
structure in training by the eager model). A cold compile of a training graph takes 4 minutes
(lmax 1, 16 channels) to 10 (lmax 2, 64 channels) on the EPYC machine (one torch thread), most of
it Inductor's code generation and C++ builds; Inductor keeps what it built in a cache
(:func:`use_persistent_cache`), and resuming, the same model file run again in the same mode, or a
model of the same architecture trained on another data set, then starts after the trace and
Dynamo's pass over it (28 s at lmax 1 / 16 channels; larger models not measured since the trace
became cheaper, 2.4 minutes at lmax 2 / 64 before).

The results equal the eager model's to rounding (tests/test_compiled.py: float64, values and
the gradients of a force loss).
"""

import contextlib
import hashlib
import os
import platform
import time
import warnings
from dataclasses import replace
from typing import Dict, List, Optional, Tuple

import torch
from torch import nn
from torch._dynamo import config as dynamo_config
from torch.fx.experimental import _config as fx_config
from torch.fx.experimental.proxy_tensor import make_fx

from ..graph import AtomicGraph
from ..o3 import NeighbourTable
from ..o3.channel_product import sparse_products
from .energy_model import EdgeLayout
from .potential import GraphLayout, Potential


class _Evaluate(nn.Module):
    """``Potential.evaluate`` as a module's forward, for ``torch.func.functional_call``."""

    def __init__(self, potential: Potential):
        super().__init__()
        self.potential = potential

    def forward(self, graph: AtomicGraph, layout: GraphLayout) -> Dict[str, torch.Tensor]:
        return self.potential.evaluate(graph, layout, training=True)


class CompiledPotential:
    """Calls like the potential (``compiled(graph, training=...)``), through compiled graphs.

    The weights are read from ``potential`` at every call. For training (the default) the
    results stay differentiable with respect to the weights whatever ``training`` says, so one
    graph serves training steps and validation; with ``inference=True`` the graph runs without
    autograd (forces, stress and the rest are explicit operations of the trace, so nothing is
    lost) and keeps nothing for a backward pass: for MD and evaluation.

    Differences from the eager model: a weight that no result in the loss depends on (the head
    of an output with no loss weight) gets a zero gradient instead of none, which matters only
    with weight decay (AdamW then shrinks it); and a kind of batch whose graph fails to compile
    (a bug of the compiler) is evaluated eagerly from then on, with a warning.
    """

    def __init__(self, potential: Potential, inference: bool = False, backend: str = "inductor",
                 vectorize: Optional[bool] = None, sparse: Optional[bool] = None):
        if potential.long_range is not None:
            raise ValueError("compiled evaluation does not support long-range models yet (the Ewald and PME "
                             "meshes are sized from the cell's values); evaluate or train them without compile")
        use_persistent_cache()
        self.potential, self.inference, self.backend = potential, inference, backend
        # Inductor's SIMD loops (cpp.simdlen), by default on for inference only. Without them a cold
        # compile of a training step took 29-41 % less time and its steps were as fast (lmax 1 / 16
        # channels) or 22 % faster (lmax 2 / 64 channels; benchmarks/compile_time.py); energy and
        # forces of 960 atoms (lmax 1 / 16 channels) were about 6 % faster with them (means of three
        # runs each, not kept as records), and an MD run compiles once for many steps. Since
        # ChannelConvolution works on contiguous channel rows, a lmax 1 / 16-channel training step
        # is 9 % faster with them (15.7 against 17.3 ms, interleaved in one process on the EPYC
        # machine); with edge harmonics to l = 3 (lmax 1 / 32 channels, l = 1 messages, mixed
        # products) a training step was slower with them, 99.0 against 88.7 ms (medians of 40
        # interleaved in one process, EPYC, both cores busy), and its cold compile took 434 against
        # 31 s: so off for training
        if vectorize is None:
            vectorize = inference
        self.options = None if vectorize or backend != "inductor" else {"cpp.simdlen": 1}
        # node products as sums of their nonzero terms (equipot.o3.channel_product.sparse_products),
        # by default for inference only: 2.5x faster energy + forces at sh_lmax 3, while a training
        # graph so traced was slower and took minutes longer to compile
        self.sparse = inference if sparse is None else sparse
        self._evaluate = _Evaluate(potential)
        self._graphs: Dict[tuple, Tuple[object, List[str]]] = {}
        self.timings: List[Dict[str, float]] = []  # per traced graph: seconds of the trace, its node count

    def __call__(self, graph: AtomicGraph, training: bool = False) -> Dict[str, torch.Tensor]:
        padded = graph.n_graphs == 1 and self.inference
        if graph.n_graphs == 1 and not self.inference:
            # a lone structure in training (the last, short batch of an epoch): Inductor fails to
            # generate code for sums into a one-structure batch on several threads (see
            # _with_empty_structure), and padding it would put 0/0 of an empty structure into
            # the backward pass; the eager model is exact and this is rare
            return self.potential(graph, training=training)
        if padded:
            graph = _with_empty_structure(graph)
        out = self._call(graph)
        if padded:  # drop the empty structure's per-structure results
            for name in self._per_structure_names():
                if name in out:
                    out[name] = out[name][:1]
        return out

    def _per_structure_names(self) -> List[str]:
        fields = self.potential.output_fields
        return ["energy", "virial", "stress"] + [n for n, f in fields.items() if f.level == "graph"]

    def _call(self, graph: AtomicGraph) -> Dict[str, torch.Tensor]:
        layout = self.potential.layout(graph)
        edges: EdgeLayout = layout.edges
        table = None if edges is None else edges.table
        rows = table is not None and table.rows is not None
        slots = 0 if table is None else table.num_slots
        tensors = [graph.positions, graph.numbers, graph.cell, graph.pbc, graph.node_graph, graph.edge_src,
                   graph.edge_dst, graph.edge_shift, graph.total_charge, layout.species]
        if table is not None:
            tensors += [table.edge_row, table.edge_slot] + ([table.rows] if rows else [])
        # the trace turns sizes of 0 and 1 into constants (and make_fx keeps no guard on them):
        # a batch with such a size anywhere (one structure, one atom, no edges, one atom with
        # neighbours, ...) gets a graph of its own
        sizes = tuple(min(d, 2) for t in tensors for d in t.shape) + (min(slots, 2),)
        tabulated = getattr(self.potential.energy_model, "radial_tabulated", False)
        key = (edges is not None, edges is not None and edges.mirrored, rows, sizes, graph.positions.dtype,
               graph.positions.device, tabulated)
        named = dict(self._evaluate.named_parameters())
        named.update(self._evaluate.named_buffers())
        # no duck sizing: sizes that happen to be equal in one batch (3 structures and the 3 of
        # a cell's rows, say) must stay distinct symbols, or the trace would tie them together
        # (fx_config is torch's private switch for it; torch.compile reads the same one)
        with fx_config.patch(use_duck_shape=False):
            first = key not in self._graphs
            if first:
                if self._graphs:
                    warnings.warn(f"{type(self).__name__}: a batch of a new kind (no neighbours for some atom, "
                                  "one atom, one neighbour list entry, radial tables on or off, ...): compiling another graph, which "
                                  "takes minutes", stacklevel=3)
                with torch.enable_grad():  # the trace takes the derivatives with autograd
                    self._graphs[key] = self._compile(key, named, tensors, slots)
            function, names = self._graphs[key]
            if function is None:  # its compile failed: eager
                return self.potential(graph, training=not self.inference)
            # the first call compiles: Dynamo and AOTAutograd run on fake tensors too, and also
            # go faster without their dispatch cache (see _compile; a warm start of the lmax 1 /
            # 16-channel model 25 s instead of 30-32)
            compiling = dynamo_config.patch(fake_tensor_cache_enabled=False) if first else contextlib.nullcontext()
            with torch.set_grad_enabled(not self.inference and torch.is_grad_enabled()), compiling:
                try:
                    return dict(zip(names, function(named, tensors, slots)))
                except Exception as err:  # the compile happens at the first call
                    if not first:
                        raise
                    compile_error = err
        # a compiler failure (the eager model raises too if the batch itself is at fault)
        warnings.warn(f"{type(self).__name__}: compiling failed ({type(compile_error).__name__}: "
                      f"{str(compile_error).strip().splitlines()[0][:200] if str(compile_error).strip() else ''}); "
                      "batches of this kind are evaluated eagerly", stacklevel=3)
        self._graphs[key] = (None, names)
        return self.potential(graph, training=not self.inference)

    def _compile(self, key: tuple, named: Dict[str, torch.Tensor], tensors: List[torch.Tensor], slots: int):
        has_table, mirrored, rows = key[:3]
        names: List[str] = []

        def traced(weights, tensors, slots):
            positions, numbers, cell, pbc, node_graph, src, dst, shift, charge, species = tensors[:10]
            graph = AtomicGraph(positions=positions, numbers=numbers, cell=cell, pbc=pbc, node_graph=node_graph,
                                edge_src=src, edge_dst=dst, edge_shift=shift, n_graphs=cell.shape[0],
                                targets={}, total_charge=charge)
            edges = None
            if has_table:
                table = NeighbourTable(tensors[10], tensors[11], slots, tensors[12] if rows else None)
                edges = EdgeLayout(mirrored, table)
            out = torch.func.functional_call(self._evaluate, weights, (graph, GraphLayout(species, edges)))
            names[:] = sorted(out)
            return [out[k] for k in names]

        detached = {k: v.detach() for k, v in named.items()}
        start = time.perf_counter()
        # without the fake-tensor dispatch cache: under symbolic sizes most of its entries are
        # made for one use, and making them took a third of the trace (12-13 s against 16-22 at
        # lmax 1 / 16 channels, 24 against 34-38 at lmax 2 / 64; the same graph either way)
        sparse = sparse_products() if self.sparse else contextlib.nullcontext()
        with dynamo_config.patch(fake_tensor_cache_enabled=False), sparse:
            graph_module = make_fx(traced, tracing_mode="symbolic")(detached, tensors, slots)
        self.timings.append({"trace_s": time.perf_counter() - start, "nodes": len(graph_module.graph.nodes)})
        return torch.compile(graph_module, backend=self.backend, dynamic=True, fullgraph=True,
                             options=self.options), names


def use_persistent_cache() -> str:
    """Point Inductor's cache at a folder that outlives the machine's temporary files, unless the
    user chose one (TORCHINDUCTOR_CACHE_DIR): ``$EQUIPOT_CACHE_DIR/inductor/<cpu>``, else
    ``$XDG_CACHE_HOME/equipot/inductor/<cpu>``, else ``~/.cache/equipot/inductor/<cpu>``, where
    ``<cpu>`` names the processor and its instruction sets (Inductor builds for this CPU, and a
    home folder may be shared by machines of several kinds). If that folder cannot be written,
    torch's default stays. A traced graph depends on the architecture (elements, sizes, options),
    not on the weights nor on the data statistics (average neighbour count, energy scale and
    shifts reach it as inputs, like the weights), so resuming a run, running the same model file
    again in the same mode (training, or inference: their graphs differ), or training a model of
    the same architecture on another data set loads the compiled code instead of compiling again:
    a cold compile of 4 minutes (lmax 1 / 16 channels) became a start of 28 s
    (docs/benchmarks/compile-*.md; larger models take longer). The variable is set for the whole process (and its
    children). The cache holds code that Inductor generated on this machine, never anything
    read from a model file."""
    from torch._inductor.runtime.cache_dir_utils import default_cache_dir

    chosen = os.environ.get("TORCHINDUCTOR_CACHE_DIR")
    if chosen is not None and os.path.abspath(chosen) != os.path.abspath(default_cache_dir()):
        return chosen  # torch writes its default into the variable when it first reads it: not a choice
    base = os.environ.get("EQUIPOT_CACHE_DIR") or os.path.join(
        os.environ.get("XDG_CACHE_HOME") or os.path.join("~", ".cache"), "equipot")
    folder = os.path.abspath(os.path.join(os.path.expanduser(base), "inductor", _cpu_fingerprint()))
    try:
        os.makedirs(folder, exist_ok=True)
        writable = os.access(folder, os.W_OK)
    except OSError:
        writable = False
    if not writable:  # a read-only home, as in some containers: torch's temporary folder
        return os.environ.setdefault("TORCHINDUCTOR_CACHE_DIR", default_cache_dir())
    os.environ["TORCHINDUCTOR_CACHE_DIR"] = folder
    return folder


def _cpu_fingerprint() -> str:
    """A short name for this processor and its instruction-set flags."""
    text = platform.machine() + platform.processor()
    try:
        with open("/proc/cpuinfo") as f:
            lines = [line for line in f if line.startswith(("model name", "flags", "Features", "CPU part"))]
        text += "".join(sorted(set(lines)))
    except OSError:
        pass
    return hashlib.sha256(text.encode()).hexdigest()[:12]


def _with_empty_structure(graph: AtomicGraph) -> AtomicGraph:
    """The batch with an empty open structure appended (no atoms, so every other result is
    unchanged). Inference on one structure goes through a batch of two: traced with one, the
    per-structure sums are sums into tensors of size 1, for which Inductor (torch 2.13, CPU,
    more than one thread) fails to generate code; one graph then also serves all batch sizes."""
    return replace(
        graph,
        cell=torch.cat([graph.cell, graph.cell.new_zeros(1, 3, 3)]),
        pbc=torch.cat([graph.pbc, graph.pbc.new_zeros(1, 3)]),
        total_charge=torch.cat([graph.total_charge, graph.total_charge.new_zeros(1)]),
        n_graphs=graph.n_graphs + 1,
    )
