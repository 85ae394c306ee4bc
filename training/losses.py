"""Training losses on vertex sequences [T, V, 3].

- `mse`: mean squared error over frames, vertices and coordinates.
- `lip_mse`: the same on the lip vertices only.
- `velocity_mse`: MSE between frame-to-frame differences, along TIME (x[t+1] - x[t]).
  `axis="vertices"` reproduces the official ScanTalk code, which differences neighbouring vertex
  INDICES (x[:, v+1] - x[:, v]) instead: a bug kept only to reproduce its numbers.

`compute_losses` combines them with configurable weights; coordinates are multiplied by
`unit_scale` first (1000: metres → millimetres, so Adam sees gradients of a sensible size).
"""
from __future__ import annotations

from dataclasses import dataclass

import torch

VELOCITY_AXES = ("time", "vertices")


def mse(pred: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    return ((pred - target) ** 2).mean()


def lip_mse(pred: torch.Tensor, target: torch.Tensor, lips: torch.Tensor) -> torch.Tensor:
    return mse(pred[:, lips], target[:, lips])


def differences(x: torch.Tensor, axis: str = "time") -> torch.Tensor:
    """[T, V, 3] → differences along time [T-1, V, 3] or along the vertex index [T, V-1, 3]."""
    if axis == "time":
        return x[1:] - x[:-1]
    if axis == "vertices":
        return x[:, 1:] - x[:, :-1]
    raise ValueError(f"velocity axis must be one of {VELOCITY_AXES}, not {axis!r}")


def velocity_mse(pred: torch.Tensor, target: torch.Tensor, axis: str = "time") -> torch.Tensor:
    dp, dt = differences(pred, axis), differences(target, axis)
    if dp.numel() == 0:  # a single frame has no velocity
        return pred.sum() * 0.0
    return mse(dp, dt)


@dataclass
class LossWeights:
    mse: float = 1.0
    lip: float = 0.0
    velocity: float = 0.0
    velocity_axis: str = "time"
    unit_scale: float = 1.0

    def __post_init__(self):
        if self.velocity_axis not in VELOCITY_AXES:
            raise ValueError(f"velocity_axis must be one of {VELOCITY_AXES}, not {self.velocity_axis!r}")

    @classmethod
    def from_section(cls, sec) -> "LossWeights":
        return cls(mse=sec.mse, lip=sec.lip, velocity=sec.velocity, velocity_axis=sec.velocity_axis,
                   unit_scale=sec.unit_scale)


def compute_losses(pred: torch.Tensor, target: torch.Tensor, weights: LossWeights,
                   lips: torch.Tensor | None = None) -> dict[str, torch.Tensor]:
    """Every term (unweighted, in scaled units) and `total` = the weighted sum.

    A term with weight 0 is still reported (for logs) but costs no gradient. The lip term needs
    `lips`; without a mask it is left out (and reported as NaN).
    """
    s = weights.unit_scale
    p, t = pred * s, target * s
    out = {"mse": mse(p, t)}
    total = weights.mse * out["mse"]
    if lips is not None and len(lips):
        out["lip"] = lip_mse(p, t, lips)
        total = total + weights.lip * out["lip"]
    else:
        out["lip"] = torch.tensor(float("nan"))
    if weights.velocity:
        out["velocity"] = velocity_mse(p, t, weights.velocity_axis)
    else:
        with torch.no_grad():
            out["velocity"] = velocity_mse(p, t, weights.velocity_axis)
    total = total + weights.velocity * out["velocity"]
    out["total"] = total
    return out
