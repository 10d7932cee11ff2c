"""Long-range electrostatics of Gaussian-smeared charges through torch-pme."""

from .coulomb import Electrostatics, LongRangeError, ewald_wavelength, pme_mesh_spacing

__all__ = ["Electrostatics", "LongRangeError", "ewald_wavelength", "pme_mesh_spacing"]
