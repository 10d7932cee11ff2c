"""Exponential moving average of model weights."""

from typing import Dict

import torch


class EMA:
    def __init__(self, model: torch.nn.Module, decay: float):
        self.decay = decay
        self.shadow: Dict[str, torch.Tensor] = {
            k: v.detach().clone() for k, v in model.named_parameters()
        }
        self.num_updates = 0

    @torch.no_grad()
    def update(self, model: torch.nn.Module) -> None:
        self.num_updates += 1
        # warm-up as in TensorFlow's EMA: early averages do not drag in the initial weights
        decay = min(self.decay, (1 + self.num_updates) / (10 + self.num_updates))
        for k, v in model.named_parameters():
            self.shadow[k].mul_(decay).add_(v.detach(), alpha=1 - decay)

    @torch.no_grad()
    def swap(self, model: torch.nn.Module) -> None:
        """Exchange the model's weights with the averaged ones (call twice to undo)."""
        for k, v in model.named_parameters():
            tmp = v.detach().clone()
            v.copy_(self.shadow[k])
            self.shadow[k].copy_(tmp)

    def state_dict(self) -> dict:
        return {"shadow": self.shadow, "num_updates": self.num_updates}

    def load_state_dict(self, state: dict) -> None:
        for k, v in state["shadow"].items():
            self.shadow[k].copy_(v)
        self.num_updates = int(state["num_updates"])
