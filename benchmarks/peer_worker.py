"""Runs inside a peer's own virtual environment (created by benchmarks/peers.py): time one peer
model's energy + forces through its ASE calculator on one structure.

    PEER_VENV/bin/python benchmarks/peer_worker.py mace STRUCTURE.xyz --dtype float32 --threads 1 --repeats 5

Prints one JSON line: n_atoms, latency_ms (median over the repeats after two warm-up calls, the
positions nudged before every call as in MD), us_per_atom, peak_mb (peak resident memory of this
process), version, gflop (the matmul FLOPs of one more call, by torch.utils.flop_counter's formulas).
Only the peer, ASE, numpy and torch are imported here, never equipot. The models are
untrained (the time does not depend on the weights) and built as in ../shared/bench/peers.md.
"""

import argparse
import json
import resource
import time

import numpy as np


def mace_calculator(dtype: str):
    import torch
    from e3nn import o3
    from mace import __version__, modules
    from mace.calculators import MACECalculator
    from mace.modules.blocks import RealAgnosticInteractionBlock, RealAgnosticResidualInteractionBlock

    torch.set_default_dtype(getattr(torch, dtype))
    # peers.md: 2 layers, 64x0e+64x1o, max_ell 3, correlation 3, r_max 5 (MACE's defaults otherwise)
    model = modules.ScaleShiftMACE(
        atomic_inter_scale=1.0, atomic_inter_shift=0.0, r_max=5.0, num_bessel=8, num_polynomial_cutoff=5, max_ell=3,
        interaction_cls=RealAgnosticResidualInteractionBlock, interaction_cls_first=RealAgnosticInteractionBlock,
        num_interactions=2, num_elements=3, hidden_irreps=o3.Irreps("64x0e+64x1o"), MLP_irreps=o3.Irreps("16x0e"),
        atomic_energies=np.zeros(3), avg_num_neighbors=19.0, atomic_numbers=[1, 6, 8], correlation=3,
        gate=torch.nn.functional.silu, radial_MLP=[64, 64, 64],
    )
    return MACECalculator(models=model.to(getattr(torch, dtype)), default_dtype=dtype, device="cpu"), __version__


def nequip_calculator(dtype: str):
    from nequip import __version__
    from nequip.data.transforms import ChemicalSpeciesToAtomTypeMapper, NeighborListTransform
    from nequip.integrations.ase import NequIPCalculator
    from nequip.model import NequIPGNNModel
    from nequip.utils.global_state import set_global_state

    set_global_state()  # nequip refuses to build a model before this (its float64 and TF32 settings)

    # peers.md: 3 layers, 32 features, l_max 1, r_max 5 (NequIP's defaults otherwise)
    types = ["H", "C", "O"]
    model = NequIPGNNModel(seed=0, model_dtype=dtype, r_max=5.0, type_names=types, num_layers=3, l_max=1,
                           num_features=32, avg_num_neighbors=19.0, per_type_energy_shifts={t: 0.0 for t in types},
                           per_type_energy_scales=1.0)
    transforms = [ChemicalSpeciesToAtomTypeMapper(model_type_names=types, chemical_species_to_atom_type_map={t: t for t in types}),
                  NeighborListTransform(r_max=5.0)]
    return NequIPCalculator(model.eval(), device="cpu", transforms=transforms), __version__


PEERS = {"mace": mace_calculator, "nequip": nequip_calculator}


def count_flops(call) -> int:
    """FLOPs of ``call()``: the operations torch's FLOP formulas know (matmuls, batched matmuls,
    convolutions; elementwise work is not counted), summed by a dispatch mode without
    torch.utils.flop_counter's module hooks (NequIP's force pass refuses those).
    benchmarks/speed.py and benchmarks/flops.py count equipot's calls with this too."""
    from torch.utils._python_dispatch import TorchDispatchMode
    from torch.utils.flop_counter import flop_registry

    class Counter(TorchDispatchMode):
        flops = 0

        def __torch_dispatch__(self, func, types, args=(), kwargs=None):
            kwargs = kwargs or {}
            out = func(*args, **kwargs)
            formula = flop_registry.get(func._overloadpacket)
            if formula is not None:
                self.flops += formula(*args, **kwargs, out_val=out)
            return out

    with Counter() as counter:
        call()
    return counter.flops


def count_gflop(atoms) -> float:
    """GFLOP of one more energy + forces call of ``atoms.calc`` (positions nudged, as in MD)."""
    atoms.positions += 1e-4
    return count_flops(atoms.get_forces) / 1e9


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("peer", choices=sorted(PEERS))
    p.add_argument("structure")
    p.add_argument("--dtype", default="float32")
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--repeats", type=int, default=5)
    args = p.parse_args()
    import ase.io
    import torch

    torch.set_num_threads(args.threads)
    atoms = ase.io.read(args.structure)
    calc, version = PEERS[args.peer](args.dtype)
    atoms.calc = calc
    times = []
    for k in range(args.repeats + 2):
        atoms.positions += 1e-4
        t = time.perf_counter()
        atoms.get_forces()
        if k >= 2:
            times.append(time.perf_counter() - t)
    median = float(np.median(times))
    peak_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    gflop = count_gflop(atoms)
    print(json.dumps({"n_atoms": len(atoms), "latency_ms": 1000 * median, "us_per_atom": 1e6 * median / len(atoms),
                      "peak_mb": peak_mb, "version": version, "gflop": gflop}))


if __name__ == "__main__":
    main()
