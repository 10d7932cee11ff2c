"""equipot: E(3)-equivariant machine-learned interatomic potentials."""

from .calculator import EquipotCalculator
from .config import Config, ConfigError, load_config
from .model import Potential, build_model, load_model, save_model

__version__ = "0.1.0"

__all__ = [
    "EquipotCalculator", "Config", "ConfigError", "load_config", "Potential", "build_model",
    "load_model", "save_model", "__version__",
]
