"""The one function where configuration becomes a model."""

from typing import Optional

import torch

from ..config import ModelConfig, output_fields
from ..data.statistics import Statistics
from .cartesian import CartesianEnergyModel
from .energy_model import EnergyModel
from ..electrostatics import Electrostatics
from .outputs import TypedOutputs, output_irreps
from .potential import Potential


def build_model(config: ModelConfig, stats: Statistics, dtype: Optional[torch.dtype] = None) -> Potential:
    """A :class:`Potential` for the species in ``stats``, with its shift and scale, in ``dtype``
    (default: torch's default dtype).

    The network is built in float64 and then cast: constants made at construction
    (Clebsch–Gordan coefficients, changes of basis of Cartesian tensors) are then exact to
    float64 in a float64 model instead of carrying float32 rounding (measured: 1e-8 relative
    equivariance errors of a float64 polarizability built the other way).
    """
    previous = torch.get_default_dtype()
    torch.set_default_dtype(torch.float64)
    try:
        return _build(config, stats).to(dtype or previous)
    finally:
        torch.set_default_dtype(previous)


def _build(config: ModelConfig, stats: Statistics) -> Potential:
    species = list(stats.species)
    shift = torch.tensor([stats.e0[z] + stats.energy_shift for z in species], dtype=torch.float64)
    scale = torch.full((len(species),), float(stats.energy_scale), dtype=torch.float64)
    fields = output_fields(config)
    if config.architecture == "cartesian":
        energy_model = CartesianEnergyModel(
            num_species=len(species), r_max=config.r_max, num_layers=config.num_layers,
            channels=config.channels, num_basis=config.num_basis, radial_hidden=config.radial_hidden,
            readout_hidden=config.readout_hidden, avg_num_neighbors=max(stats.avg_num_neighbors, 1.0),
            atomic_shift=shift, atomic_scale=scale,
        )
        return _potential(energy_model, species, None, None, config, stats)
    energy_model = EnergyModel(
        num_species=len(species),
        r_max=config.r_max,
        num_layers=config.num_layers,
        channels=config.channels,
        lmax=config.lmax,
        parity=config.parity,
        correlation=config.correlation,
        message_lmax=config.message_lmax,
        sh_lmax=config.sh_lmax,
        product_mixing=config.product_mixing,
        num_basis=config.num_basis,
        radial_hidden=config.radial_hidden,
        readout_hidden=config.readout_hidden,
        avg_num_neighbors=max(stats.avg_num_neighbors, 1.0),
        atomic_shift=shift,
        atomic_scale=scale,
        extra_irreps=output_irreps(list(fields.values()), config.lmax),
    )
    outputs = TypedOutputs(fields, energy_model.irreps_features, config.readout_hidden, config.charge_weights,
                           gate_odd=config.gate_odd_outputs, atomic_dipoles=config.atomic_dipoles) if fields else None
    long_range = None
    if config.long_range is not None:
        lr = config.long_range
        long_range = Electrostatics(lr.smearing, lr.method, lr.accuracy, lr.pme_min_atoms, pair_cutoff=config.r_max)
    return _potential(energy_model, species, outputs, long_range, config, stats)


def _potential(energy_model, species, outputs, long_range, config: ModelConfig, stats: Statistics) -> Potential:
    potential = Potential(energy_model, species, outputs, long_range)
    potential.model_config, potential.statistics = config, stats
    return potential
