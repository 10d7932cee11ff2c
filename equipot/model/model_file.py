"""Model files: configuration + statistics + weights in one safetensors file.

The configuration and statistics are JSON in the file's metadata; the weights are plain
tensors. Loading rebuilds the network with :func:`build_model` and never unpickles or
executes anything from the file.
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
FORMAT_VERSION = 2


class ModelFileError(ValueError):
    pass


def save_model(path: str, model: Potential, config: ModelConfig, stats: Statistics) -> None:
    tensors = {k: v.detach().cpu().contiguous().clone() for k, v in model.state_dict().items()}
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
    if version != FORMAT_VERSION:
        raise ModelFileError(
            f"{path}: model file format version {version}; this equipot reads version {FORMAT_VERSION}"
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
    try:
        missing, unexpected = model.load_state_dict(tensors, strict=False)
    except RuntimeError as err:  # tensors of the wrong shape for the stored configuration
        raise ModelFileError(f"{path}: weights do not match the model ({err})") from None
    if missing or unexpected:
        raise ModelFileError(f"{path}: weights do not match the model (missing {missing}, unexpected {unexpected})")
    model.model_config, model.statistics = config, stats
    return model.to(device).eval()
