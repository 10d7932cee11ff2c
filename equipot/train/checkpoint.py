"""Training checkpoints: everything needed to continue exactly, written atomically.

Stored with torch.save as plain containers of tensors and numbers, and read back with
``torch.load(weights_only=True)``: nothing in a checkpoint is executed on load.
"""

import os

import torch

from ..atomic import atomic_write


class CheckpointError(ValueError):
    pass


def save_checkpoint(path: str, state: dict) -> None:
    atomic_write(path, lambda tmp: torch.save(state, tmp))


def load_checkpoint(path: str) -> dict:
    if not os.path.isfile(path):
        raise CheckpointError(f"no checkpoint to resume from: {path}")
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # truncated zip, wrong format, ...
        raise CheckpointError(f"{path}: corrupt or truncated checkpoint ({type(err).__name__}: {err})") from None
    if not isinstance(state, dict) or state.get("format") != "equipot-checkpoint":
        raise CheckpointError(f"{path}: not an equipot training checkpoint")
    return state
