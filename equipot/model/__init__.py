"""The energy model, its derivatives, construction from config, and model files."""

from .build import build_model
from .compiled import CompiledPotential
from .energy_model import EnergyModel, hidden_irreps
from .model_file import ModelFileError, load_model, save_model
from .potential import Potential, UnknownElementError

__all__ = [
    "build_model", "CompiledPotential", "EnergyModel", "hidden_irreps", "ModelFileError", "load_model",
    "save_model", "Potential", "UnknownElementError",
]
