"""ASE calculator: `EquipotCalculator(model_path, device=..., dtype=...)`."""

from typing import Optional, Union

import numpy as np
import torch
from ase.calculators.calculator import Calculator, PropertyNotImplementedError, all_changes
from ase.stress import full_3x3_to_voigt_6_stress

from .data.configuration import Configuration, to_graph
from .model import Potential, load_model


class EquipotCalculator(Calculator):
    """Energy, free_energy, forces, stress (Voigt, ASE sign) and per-atom energies.

    Units are ASE's: eV, eV/Å, eV/Å³. ``dtype`` is "float32" or "float64" (default: the
    dtype the model was saved in). Stress is available for periodic structures only.
    """

    implemented_properties = ["energy", "free_energy", "forces", "stress", "energies"]

    def __init__(
        self,
        model: Union[str, Potential],
        device: str = "cpu",
        dtype: Optional[str] = None,
        **kwargs,
    ):
        super().__init__(**kwargs)
        torch_dtype = getattr(torch, dtype) if isinstance(dtype, str) else dtype
        if isinstance(model, str):
            model = load_model(model, dtype=torch_dtype, device=device)
        elif torch_dtype is not None:
            model = model.to(dtype=torch_dtype)
        self.model = model.to(device).eval()
        self.device = device
        self.dtype = self.model.dtype
        self.r_max = model.model_config.r_max

    def calculate(self, atoms=None, properties=("energy",), system_changes=all_changes):
        super().calculate(atoms, properties, system_changes)
        periodic = bool(np.any(self.atoms.pbc))
        if "stress" in properties and not periodic:
            raise PropertyNotImplementedError("stress is defined for periodic structures only")
        config = Configuration(
            numbers=self.atoms.get_atomic_numbers(),
            positions=self.atoms.get_positions(),
            cell=np.array(self.atoms.get_cell()),
            pbc=np.array(self.atoms.get_pbc()),
            source="structure given to EquipotCalculator",
        )
        graph = to_graph(config, self.r_max).to(self.device, self.dtype)
        out = self.model(graph)
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
