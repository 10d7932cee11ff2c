"""Training: loss, metrics, EMA, checkpoints and the loop."""

from .checkpoint import CheckpointError, load_checkpoint
from .loop import CHECKPOINT, LAST_MODEL, MODEL, Trainer
from .world import World

__all__ = ["CheckpointError", "load_checkpoint", "CHECKPOINT", "LAST_MODEL", "MODEL", "Trainer", "World"]
