"""Neural-network building blocks; each takes and returns plain tensors."""

from .gate import make_gate
from .interaction import Interaction, ProductBasis
from .radial import BesselBasis, PolynomialEnvelope, RadialEmbedding, RadialNetwork, RadialTable
from .readout import LinearReadout, MLPReadout

__all__ = [
    "make_gate", "Interaction", "ProductBasis", "BesselBasis", "PolynomialEnvelope",
    "RadialEmbedding", "RadialNetwork", "RadialTable", "LinearReadout", "MLPReadout",
]
