"""ASE calculator: `EquipotCalculator(model_path, device=..., dtype=...)`."""

import warnings
from typing import Optional, Sequence, Union

import numpy as np
import torch
from ase.calculators.calculator import Calculator, PropertyNotImplementedError, all_changes
from ase.stress import full_3x3_to_voigt_6_stress

from .data.configuration import Configuration, to_graph
from .evaluate import check_committee, committee_mean
from .model import Potential, load_model
from .model.compiled import CompiledPotential


class EquipotCalculator(Calculator):
    """Energy, free_energy, forces, stress (Voigt, ASE sign), per-atom energies, typed outputs.

    Units are ASE's: eV, eV/Å, eV/Å³, e, e·Å. ``dtype`` is "float32" or "float64" (default:
    the dtype the model was saved in). Stress is available for periodic structures only,
    dipoles for open ones only. Every typed output of the model (``charges``, ``dipole``,
    ``chirality``, ...) is a property under its own name. The total charge of a structure
    is ``total_charge`` if given here, else ``atoms.info["total_charge"]``, else 0.

    ``compile=True`` evaluates through a traced and compiled graph (:mod:`equipot.model.compiled`):
    faster steps after a compile at the first call (minutes by model size, cold; one or two when
    Inductor's cache already holds the architecture), and again, with a warning, at the first
    structure that needs a graph of another kind (an atom left without neighbours, as in a
    dissociation; a single atom). Not for long-range models.

    ``tabulate=True`` evaluates the radial networks from tables of the edge length within 1e-7 of
    them, below float32's rounding (:meth:`~equipot.model.EnergyModel.tabulate_radial`):
    compiled energy + forces of 960 atoms took 1.3-2× less time for lmax 1 models, none less for
    lmax 2 / 32 channels, whose tables (14 MiB) no longer sit in cache; evaluated eagerly, no
    model was faster with them (benchmarks/radial_table.py). By default, compiled float32
    models with tables of at most 8 MiB are tabulated. Tabulating changes the models given as
    Potentials in place (their tables are used in eval mode only).

    Given several models (paths or Potentials), the calculator is their committee: every
    property is the mean of the models' (equivariant, and the forces still minus the gradient of
    the mean energy), and ``energy_std`` (eV) and ``forces_std`` (eV/Å per atom: the spread of
    the force vector) are their spread, an error estimate along an MD run.
    """

    implemented_properties = ["energy", "free_energy", "forces", "stress", "energies"]

    def __init__(
        self,
        model: Union[str, Potential, Sequence[Union[str, Potential]]],
        device: str = "cpu",
        dtype: Optional[str] = None,
        total_charge: Optional[float] = None,
        compile: bool = False,
        tabulate: Optional[bool] = None,
        **kwargs,
    ):
        super().__init__(**kwargs)
        self.total_charge = total_charge
        torch_dtype = getattr(torch, dtype) if isinstance(dtype, str) else dtype
        self.models = []
        for m in model if isinstance(model, (list, tuple)) else [model]:
            if isinstance(m, str):
                m = load_model(m, dtype=torch_dtype, device=device)
            elif torch_dtype is not None:
                m = m.to(dtype=torch_dtype)
            self.models.append(m.to(device).eval())
        check_committee(self.models)
        default = tabulate is None
        if default:
            tabulate = compile and self.models[0].dtype == torch.float32
        for m in self.models:
            if tabulate and hasattr(m.energy_model, "tabulate_radial"):
                try:  # by default only tables small enough to stay in cache (see above)
                    m.energy_model.tabulate_radial(**({"max_bytes": 8 * 2**20} if default else {}))
                except ValueError as err:  # tables too large for their tolerance: keep the networks
                    if not default:
                        warnings.warn(f"EquipotCalculator: radial networks not tabulated ({err})", stacklevel=2)
        self.model = self.models[0]
        self.evaluators = [CompiledPotential(m, inference=True) if compile else m for m in self.models]
        self.evaluate = self.evaluators[0]
        self.device = device
        self.dtype = self.model.dtype
        self.r_max = self.model.model_config.r_max
        self.fields = self.model.output_fields
        self.implemented_properties = list(EquipotCalculator.implemented_properties) + list(self.fields)
        if self.model.long_range is not None:
            self.implemented_properties += ["energy_long_range", "energies_long_range"]
        if len(self.models) > 1:
            self.implemented_properties += ["energy_std", "forces_std"]

    def calculate(self, atoms=None, properties=("energy",), system_changes=all_changes):
        super().calculate(atoms, properties, system_changes)
        periodic = bool(np.any(self.atoms.pbc))
        if "stress" in properties and not periodic:
            raise PropertyNotImplementedError("stress is defined for periodic structures only")
        dipoles = [p for p in properties if p in self.fields and self.fields[p].kind in ("dipole", "born_charges")]
        if dipoles and periodic:
            raise PropertyNotImplementedError(f"{dipoles[0]}: a dipole is ill-defined for a periodic structure")
        if self.total_charge is not None:
            total_charge = float(self.total_charge)
        else:
            total_charge = float(self.atoms.info.get("total_charge", 0.0))
        config = Configuration(
            numbers=self.atoms.get_atomic_numbers(),
            positions=self.atoms.get_positions(),
            cell=np.array(self.atoms.get_cell()),
            pbc=np.array(self.atoms.get_pbc()),
            source="structure given to EquipotCalculator",
            total_charge=total_charge,
        )
        graphs = {}  # one neighbour list per cutoff in the committee
        outs = []
        for m, evaluate in zip(self.models, self.evaluators):
            r_max = m.model_config.r_max
            if r_max not in graphs:
                graphs[r_max] = to_graph(config, r_max).to(self.device, self.dtype)
            out = evaluate(graphs[r_max])
            outs.append({k: v.detach().cpu().double().numpy() for k, v in out.items()})
        # a committee: the mean of its models (equivariant, and its forces those of its mean energy)
        out = committee_mean(outs) if len(outs) > 1 else outs[0]
        energy = float(out["energy"][0])
        self.results = {
            "energy": energy,
            "free_energy": energy,
            "forces": out["forces"],
            "energies": out["energies"],
        }
        if len(outs) > 1:  # its spread: an error estimate along a trajectory
            self.results["energy_std"], self.results["forces_std"] = out["energy_std"], out["forces_std"]
        if periodic:
            self.results["stress"] = full_3x3_to_voigt_6_stress(out["stress"][0])
        if "energy_long_range" in out:  # the electrostatic part of the energy and its per-atom split
            self.results["energy_long_range"] = float(out["energy_long_range"][0])
            self.results["energies_long_range"] = out["energies_long_range"]
        for name, f in self.fields.items():
            if f.kind in ("dipole", "born_charges") and periodic:
                continue
            value = out[name] if f.level == "node" else out[name][0]
            self.results[name] = float(value) if value.ndim == 0 else value
