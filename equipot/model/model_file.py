"""Model files: configuration + statistics + weights in one safetensors file.

The configuration and statistics are JSON in the file's metadata; the weights are plain
tensors: the trained parameters only (format 3). Everything else a network holds — Clebsch–
Gordan coefficients, masks, the energy scale — follows from the configuration and statistics
and is rebuilt, in the dtype asked for, when the file is loaded: a float32-trained model loaded
in float64 is then exactly equivariant in float64, and files do not depend on how e3nn or our
kernels store their constants. Format 2 files (which also held those constants) are read, their
constants ignored. Loading never unpickles or executes anything from the file.
"""

import dataclasses
import json
import os
from typing import Optional, Tuple

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file

from ..atomic import atomic_write
from ..config import ModelConfig, _from_dict, validate_model
from ..data.statistics import Statistics
from .build import build_model
from .potential import Potential

FORMAT = "equipot-model"
FORMAT_VERSION = 3
READABLE_VERSIONS = (2, 3)
# constants of e3nn modules that format 2 files held besides the parameters
E3NN_CONSTANTS = ("output_mask", "_w3j_")


class ModelFileError(ValueError):
    pass


def save_model(path: str, model: Potential, config: ModelConfig, stats: Statistics) -> None:
    tensors = {k: v.detach().cpu().contiguous().clone() for k, v in model.named_parameters()}
    metadata = {
        "format": FORMAT,
        "format_version": str(FORMAT_VERSION),
        "model_config": json.dumps(dataclasses.asdict(config)),
        "statistics": json.dumps(stats.to_dict()),
        "dtype": str(model.dtype).replace("torch.", ""),
    }
    atomic_write(path, lambda tmp: save_file(tensors, tmp, metadata=metadata))


def read_model_file(path: str) -> Tuple[dict, ModelConfig, Statistics, dict]:
    if not os.path.isfile(path):
        raise ModelFileError(f"model file not found: {path}")
    try:
        tensors = load_file(path)
        from safetensors import safe_open

        with safe_open(path, framework="pt") as f:
            metadata = f.metadata() or {}
    except (SafetensorError, OSError, ValueError) as err:
        raise ModelFileError(f"{path}: not a readable equipot model file ({err})") from None
    if metadata.get("format") != FORMAT:
        raise ModelFileError(f"{path}: not an equipot model file (format {metadata.get('format')!r})")
    try:
        version = int(metadata.get("format_version", -1))
    except ValueError:
        raise ModelFileError(f"{path}: unreadable format version {metadata.get('format_version')!r}") from None
    if version not in READABLE_VERSIONS:
        raise ModelFileError(
            f"{path}: model file format version {version}; this equipot reads versions "
            f"{', '.join(map(str, READABLE_VERSIONS))}"
        )
    try:
        config = _from_dict(ModelConfig, json.loads(metadata["model_config"]), "model", path)
        validate_model(config, path)  # a damaged or hostile file must not build a huge network
        stats = Statistics.from_dict(json.loads(metadata["statistics"]))
        if not all(1 <= z <= 118 for z in stats.species):
            raise ValueError(f"atomic numbers out of range: {stats.species}")
    except (KeyError, ValueError, TypeError, AttributeError) as err:  # JSON, config or statistics damage
        raise ModelFileError(f"{path}: damaged metadata ({err})") from None
    return tensors, config, stats, metadata


def load_model(path: str, dtype: Optional[torch.dtype] = None, device: str = "cpu") -> Potential:
    """Rebuild a model from ``path``; ``dtype`` defaults to the dtype it was saved in."""
    tensors, config, stats, metadata = read_model_file(path)
    saved_name = metadata.get("dtype", "float32")
    if saved_name not in ("float32", "float64"):
        raise ModelFileError(f"{path}: unsupported dtype {saved_name!r} in the model file")
    try:
        model = build_model(config, stats, dtype=dtype or getattr(torch, saved_name))
    except (KeyError, ValueError, TypeError) as err:  # statistics inconsistent with the configuration
        raise ModelFileError(f"{path}: damaged metadata ({type(err).__name__}: {err})") from None
    parameters = dict(model.named_parameters())
    if int(metadata["format_version"]) == 2:  # parameters, and constants that are rebuilt instead
        buffers = dict(model.named_buffers(remove_duplicate=False))  # shared modules under every name
        tensors = {k: v for k, v in tensors.items() if k in parameters or not rebuilt_constant(k, v, buffers)}
    missing = sorted(set(parameters) - set(tensors))
    unexpected = sorted(set(tensors) - set(parameters))
    if missing or unexpected:
        raise ModelFileError(f"{path}: weights do not match the model (missing {missing}, unexpected {unexpected})")
    try:
        with torch.no_grad():
            for name, value in tensors.items():
                if parameters[name].shape != value.shape:
                    raise RuntimeError(f"{name}: shape {tuple(value.shape)} in the file, "
                                       f"{tuple(parameters[name].shape)} in the model")
                parameters[name].copy_(value)
    except RuntimeError as err:  # tensors of the wrong shape for the stored configuration
        raise ModelFileError(f"{path}: weights do not match the model ({err})") from None
    model.model_config, model.statistics = config, stats
    return model.to(device).eval()


def rebuilt_constant(name: str, value: torch.Tensor, buffers: dict) -> bool:
    """Whether a format 2 tensor that is not a parameter is a constant the model rebuilds: a
    buffer of the rebuilt model, an e3nn constant (masks, Clebsch–Gordan blocks of a product
    since replaced by our own kernel), or the empty weight of a product without weights."""
    last = name.rsplit(".", 1)[-1]
    return name in buffers or any(last.startswith(c) for c in E3NN_CONSTANTS) or (last == "weight" and value.numel() == 0)
