"""An exponential moving average of a model's weights (Polyak averaging).

One checkpoint of a run is one sample of where the optimiser wanders at the end: on real speech,
version 11's weights at step 2,400 and at step 3,000 differ by as much as version 11 and version 4
(LibriVox bilabials 1.45 against 1.91 mm). The average over the last ~1/(1 - decay) steps should
be a steadier thing to judge and to ship. Measured once (v12, decay 0.998): the average beat the
optimised weights on the studio prompts (1.08x the open/bilabial ratio, 90% interval 1.06-1.11)
and the LibriVox clips (1.07x) and matched them on the telephone set, where a mean of three of v11b's checkpoints taken afterwards had widened the
prompts' bilabials (model card). The trainer optimises the model's own weights, and validates and
saves the average; last.pt keeps the optimised ones beside it (`train_model`), for --resume and for

    python -m training.weight_average --optimised runs/NAME/last.pt optimised.pt

which writes them as a model file of their own, to judge them against the average.
"""
from __future__ import annotations

import argparse
import sys
from contextlib import contextmanager

import torch
from torch import nn

from backend.checkpoint import read_file, save_model
from backend.model import ModelConfig, ScanTalk


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


def write_optimised(last_pt, out) -> None:
    """A run's optimised weights (last.pt's `train_model`) as a model file the backend loads."""
    data = read_file(last_pt)
    if "train_model" not in data:
        raise ValueError(f"{last_pt} holds no optimised weights beside its model: it was written without "
                         "train.ema_decay (its model is already the optimised weights) or it is not a last.pt")
    model = ScanTalk(ModelConfig.from_dict(data["config"]))
    model.load_state_dict(data["train_model"])
    save_model(out, model, step=data.get("step"), train_config=data.get("train_config"))


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="python -m training.weight_average", description=__doc__.splitlines()[0])
    p.add_argument("--optimised", nargs=2, metavar=("LAST_PT", "OUT"), required=True,
                   help="write LAST_PT's optimised weights (not their average) as the model file OUT")
    args = p.parse_args(argv)
    try:
        write_optimised(*args.optimised)
    except ValueError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
