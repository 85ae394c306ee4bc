"""An exponential moving average of a model's weights (Polyak averaging).

One checkpoint of a run is one sample of where the optimiser wanders at the end: on real speech,
version 11's weights at step 2,400 and at step 3,000 differ by as much as version 11 and version 4
(LibriVox bilabials 1.45 against 1.91 mm). The average over the last ~1/(1 - decay) steps should
be a steadier thing to judge and to ship; not yet measured in training (a mean of three of v11b's
checkpoints afterwards widened the studio prompts' bilabials: see the model card). The trainer
optimises the model's own weights, and validates and saves the average.
"""
from __future__ import annotations

from contextlib import contextmanager

import torch
from torch import nn


class WeightAverage:
    def __init__(self, model: nn.Module, decay: float):
        if not 0.0 < decay < 1.0:
            raise ValueError(f"the average's decay must be in (0, 1), got {decay}")
        self.decay = decay
        self.shadow = {k: v.detach().clone() for k, v in model.state_dict().items()}

    def rate(self, step: int) -> float:
        """The decay at an update: short memory at first, so the starting weights fade quickly
        (1/10, 2/11, 3/12 ... up to `decay`)."""
        return min(self.decay, (1.0 + step) / (10.0 + step))

    @torch.no_grad()
    def update(self, model: nn.Module, step: int) -> None:
        d = self.rate(step)
        for k, v in model.state_dict().items():
            s = self.shadow[k]
            if s.dtype.is_floating_point:
                s.mul_(d).add_(v.detach(), alpha=1.0 - d)
            else:
                s.copy_(v)

    @contextmanager
    def applied(self, model: nn.Module):
        """Inside the block the model holds the average; its own weights come back after."""
        own = {k: v.detach().clone() for k, v in model.state_dict().items()}
        model.load_state_dict(self.shadow)
        try:
            yield model
        finally:
            model.load_state_dict(own)

    def state_dict(self) -> dict:
        return self.shadow

    def load_state_dict(self, state: dict) -> None:
        missing = set(self.shadow) ^ set(state)
        if missing:
            raise KeyError(f"the average's weights do not match the model's: {sorted(missing)[:5]}")
        for k, v in state.items():
            self.shadow[k].copy_(v)
