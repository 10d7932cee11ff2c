"""Our own kernels for e3nn operations, each checked against e3nn in tests/test_o3.py."""

from .channel_convolution import ChannelConvolution
from .channel_product import ChannelProduct
from .linear import Linear
from .scalar_convolution import NeighbourTable, ScalarConvolution, neighbour_slots

__all__ = ["ChannelConvolution", "ChannelProduct", "Linear", "NeighbourTable", "ScalarConvolution", "neighbour_slots"]
