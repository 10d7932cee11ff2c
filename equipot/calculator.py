"""ASE calculator: `EquipotCalculator(model_path, device=..., dtype=...)`."""

from typing import Optional, Union

import numpy as np
import torch
from ase.calculators.calculator import Calculator, PropertyNotImplementedError, all_changes
from ase.stress import full_3x3_to_voigt_6_stress

from .data.configuration import Configuration, to_graph
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
    """

    implemented_properties = ["energy", "free_energy", "forces", "stress", "energies"]

    def __init__(
        self,
        model: Union[str, Potential],
        device: str = "cpu",
        dtype: Optional[str] = None,
        total_charge: Optional[float] = None,
        compile: bool = False,
        **kwargs,
    ):
        super().__init__(**kwargs)
        self.total_charge = total_charge
        torch_dtype = getattr(torch, dtype) if isinstance(dtype, str) else dtype
        if isinstance(model, str):
            model = load_model(model, dtype=torch_dtype, device=device)
        elif torch_dtype is not None:
            model = model.to(dtype=torch_dtype)
        self.model = model.to(device).eval()
        self.evaluate = CompiledPotential(self.model, inference=True) if compile else self.model
        self.device = device
        self.dtype = self.model.dtype
        self.r_max = model.model_config.r_max
        self.fields = self.model.output_fields
        self.implemented_properties = list(EquipotCalculator.implemented_properties) + list(self.fields)
        if self.model.long_range is not None:
            self.implemented_properties += ["energy_long_range", "energies_long_range"]

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
        graph = to_graph(config, self.r_max).to(self.device, self.dtype)
        out = self.evaluate(graph)
        energy = float(out["energy"][0].detach())
        self.results = {
            "energy": energy,
            "free_energy": energy,
            "forces": out["forces"].detach().cpu().double().numpy(),
            "energies": out["energies"].detach().cpu().double().numpy(),
        }
        if periodic:
            stress = out["stress"][0].detach().cpu().double().numpy()
            self.results["stress"] = full_3x3_to_voigt_6_stress(stress)
        if "energy_long_range" in out:  # the electrostatic part of the energy and its per-atom split
            self.results["energy_long_range"] = float(out["energy_long_range"][0].detach())
            self.results["energies_long_range"] = out["energies_long_range"].detach().cpu().double().numpy()
        for name, f in self.fields.items():
            if f.kind in ("dipole", "born_charges") and periodic:
                continue
            value = out[name].detach().cpu().double().numpy()
            value = value if f.level == "node" else value[0]
            self.results[name] = float(value) if value.ndim == 0 else value
