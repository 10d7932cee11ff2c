"""From a data config to training and validation sets and training-set statistics."""

import os
from dataclasses import dataclass, replace
from typing import Dict, List, Optional, Sequence, Tuple

import numpy as np
import torch
from ase.data import atomic_numbers, chemical_symbols

from ..config import Config, ConfigError, DataConfig, output_fields
from ..data import CloseAtomsError, Configuration, DataError, compute_statistics, fit_e0, read_configurations, species_of
from ..data.reading import iread_configurations
from ..data.store import ConfigurationStore, Subset, is_store, sample
from ..data.statistics import Statistics
from ..model import Potential, load_model
from ..units import energy_factor


@dataclass
class Splits:
    train: Sequence[Configuration]
    valid: Sequence[Configuration]


def required_fields(config: Config) -> List[str]:
    w = config.training.loss
    fields = [name for name in ("energy", "forces") if getattr(w, name) > 0]
    if w.stress > 0:
        fields.append("virial" if "virial" in config.data.keys and "stress" not in config.data.keys else "stress")
    fields += [name for name, weight in w.outputs.items() if weight > 0]
    return fields


def test_files(config: Config) -> List[str]:
    """data.test as a list of files (one file may be given as a string)."""
    test = config.data.test
    return [test] if isinstance(test, str) else list(test)


def read_splits(config: Config) -> Splits:
    d = config.data
    if not d.train:
        raise ConfigError("data.train is not set: name the training data file")
    for path in test_files(config):  # found now, not after hours of training
        if not os.path.isfile(path):
            raise ConfigError(f"data.test: file not found: {path}")
        if is_store(path):
            raise ConfigError(f"data.test: {path} is an HDF5 store; test files are read as equipot eval reads "
                              "them (extxyz or any file ASE reads)")
    required = required_fields(config)
    for name in required:
        if name not in d.keys:
            where = f"outputs.{name}" if name in config.training.loss.outputs else ('stress' if name == 'virial' else name)
            raise ConfigError(
                f"training.loss.{where} has a positive weight but data.keys "
                f"does not say where {name} is stored; add e.g. {name}: {name} to data.keys"
            )
    kwargs = dict(keys=d.keys, required=required, energy_unit=d.energy_unit, length_unit=d.length_unit,
                  fields=output_fields(config.model))
    configs = read_data(d.train, kwargs)
    # isolated atoms (one atom, open), whose energies the E0 fit takes, always train, first
    single = _isolated_atoms(configs)
    if d.valid:
        valid = read_data(d.valid, kwargs)
        order = np.concatenate([np.flatnonzero(single), np.flatnonzero(~single)])
    else:
        rng = np.random.default_rng(config.seed)
        order = rng.permutation(len(configs))
        n_valid = max(1, int(round(d.valid_fraction * len(configs))))
        if n_valid >= len(configs) - int(single.sum()):
            raise DataError(f"{d.train}: {len(configs)} structures are too few to split off a validation set")
        others = order[~single[order]]  # without isolated atoms: the split of earlier versions
        valid = Subset(configs, others[:n_valid])
        order = np.concatenate([order[single[order]], others[n_valid:]])
    train = configs if d.valid and not single.any() else Subset(configs, order)
    if d.max_train is not None:
        train = train[: int(single.sum()) + d.max_train]  # the isolated atoms come first and stay
    return Splits(train=train, valid=valid)


def _isolated_atoms(configs: Sequence[Configuration]) -> np.ndarray:
    """Whether each structure is one atom, not periodic (a store's read from its offsets and
    flags, without reading the structures)."""
    base = configs.base if isinstance(configs, Subset) else configs
    if isinstance(base, ConfigurationStore):
        flags = (np.diff(base.offsets) == 1) & ~base.periodic()
        return flags[configs.indices] if isinstance(configs, Subset) else flags
    return np.array([c.n_atoms == 1 and not np.any(c.pbc) for c in configs], dtype=bool)


def label_coverage(configs: Sequence[Configuration], names: Sequence[str]) -> Dict[str, int]:
    """How many of ``configs`` carry each label in ``names`` (a store's without reading its structures)."""
    base = configs.base if isinstance(configs, Subset) else configs
    names = ["stress" if name == "virial" else name for name in names]
    if isinstance(base, ConfigurationStore):
        rows = configs.indices if isinstance(configs, Subset) else slice(None)
        return {name: int(base.labelled(name)[rows].sum()) for name in names}
    return {name: sum(name in c.targets for c in configs) for name in names}


def read_data(path: str, kwargs: dict) -> Sequence[Configuration]:
    """The structures of a data file: an equipot store (read on access) or any file ASE reads."""
    if not is_store(path):
        return read_configurations(path, **kwargs)
    store = ConfigurationStore(path, fields=kwargs["fields"])
    store.require(["stress" if name == "virial" else name for name in kwargs["required"]])
    return store


def read_e0s(e0s, data: DataConfig, train: List[Configuration], species: List[int],
             cutoff: Optional[float] = None) -> Dict[int, float]:
    """E0 per atomic number from "fit" (see :func:`equipot.data.fit_e0`: isolated atoms of the
    training data, a least-squares fit for the other elements), a file of isolated atoms, or a
    {symbol: eV} map."""
    if isinstance(e0s, dict):
        out = {}
        for symbol, value in e0s.items():
            if symbol not in atomic_numbers:
                raise ConfigError(f"data.e0s: unknown element {symbol!r}")
            out[atomic_numbers[symbol]] = float(value) * energy_factor(data.energy_unit)
        return out
    if e0s == "fit":  # from the structures with an energy label (none: no energies to fit, zeros)
        labelled = [c for c in train if "energy" in c.targets]
        return fit_e0(labelled, species, cutoff) if labelled else {z: 0.0 for z in species}
    if not os.path.isfile(e0s):
        raise ConfigError(f"data.e0s: expected 'fit', a mapping or a file; file not found: {e0s}")
    out = {}
    keys = {"energy": data.keys.get("energy", "energy")}
    for c in iread_configurations(e0s, keys=keys, required=["energy"], energy_unit=data.energy_unit,
                                  length_unit=data.length_unit, every=True):
        if c.n_atoms != 1:
            raise DataError(f"{c.source}: an isolated-atom file must hold single atoms, found {c.n_atoms}")
        out[int(c.numbers[0])] = float(c.targets["energy"])
    missing = [chemical_symbols[z] for z in species if z not in out]
    if missing:
        raise DataError(f"{e0s}: no isolated-atom energy for {', '.join(missing)}")
    return out


# statistics (E0 fit, energy shift and scale, average number of neighbours) come from at
# most this many training structures, drawn with the run's seed
STATISTICS_SAMPLE = 20000


def training_statistics(config: Config, train: Sequence[Configuration]) -> Statistics:
    species = _species(train)
    sampled = sample(train, STATISTICS_SAMPLE, config.seed)
    e0 = read_e0s(config.data.e0s, config.data, _with_single_atoms(sampled, train), species, config.model.r_max)
    train = sampled
    try:
        return compute_statistics(train, config.model.r_max, e0, species)
    except CloseAtomsError:
        raise
    except ValueError as err:  # E0 missing for an element of the training data
        raise ConfigError(str(err)) from None


def _with_single_atoms(sampled: Sequence[Configuration], train: Sequence[Configuration]) -> Sequence[Configuration]:
    """``sampled`` (drawn from ``train``) with every isolated atom of ``train`` that it lacks:
    the E0 fit takes isolated atoms' energies, and a sample must not drop them."""
    if sampled is train:
        return train
    taken = set(sampled.indices.tolist()) if isinstance(sampled, Subset) else set()
    extra = [int(k) for k in np.flatnonzero(_isolated_atoms(train)) if int(k) not in taken]
    return list(sampled) + [train[k] for k in extra] if extra else sampled


def _species(configs: Sequence[Configuration]) -> List[int]:
    base = configs.base if isinstance(configs, Subset) else configs
    return base.species() if isinstance(base, ConfigurationStore) else species_of(configs)


def fine_tuning_start(config: Config, splits: Splits, dtype: torch.dtype) -> Tuple[Potential, Statistics]:
    """The model and statistics a run with ``training.init_from`` starts from: the file's weights
    and statistics (the model section of ``config`` is already the file's, see
    :func:`equipot.config.config_from_dict`). With ``training.init_e0s: data`` the E0s come from
    ``data.e0s`` and ``train``, and each species' energy shift moves by the change of its E0, so
    the model starts from the same energies relative to the new E0s."""
    path = config.training.init_from
    model = load_model(path, dtype=dtype)
    stats = model.statistics
    species = _species(splits.train)
    unknown = sorted(set(species + _species(splits.valid)) - set(stats.species))
    if unknown:
        raise ConfigError(
            f"training.init_from: {path} was trained on {', '.join(chemical_symbols[z] for z in stats.species)}; "
            f"the training data also holds {', '.join(chemical_symbols[z] for z in unknown)}, for which it has "
            "no weights (a fine-tuned model keeps the elements it has)")
    if config.training.init_e0s == "data":
        sampled = _with_single_atoms(sample(splits.train, STATISTICS_SAMPLE, config.seed), splits.train)
        if config.data.e0s == "fit" and not any("energy" in c.targets for c in sampled):
            raise ConfigError("training.init_e0s: 'data' with data.e0s 'fit' needs energies in the training data")
        e0 = read_e0s(config.data.e0s, config.data, sampled, species, config.model.r_max)
        shift = dict(model.named_parameters())["energy_model.atomic_shift"]
        with torch.no_grad():
            for k, z in enumerate(stats.species):
                if z in e0:
                    shift[k] += e0[z] - stats.e0[z]
        stats = replace(stats, e0={**stats.e0, **{z: e0[z] for z in stats.species if z in e0}})
    return model.train(), stats
