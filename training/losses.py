"""Training losses on vertex sequences [T, V, 3].

- `mse`: mean squared error over frames, vertices and coordinates.
- `mae` (in `compute_losses`): mean absolute error, the same average: it keeps pulling on
  sub-millimetre errors (far-field drift) that the squared error all but ignores.
- `lip_mse`: the same on the lip vertices only.
- `velocity_mse`: MSE between frame-to-frame differences, along TIME (x[t+1] - x[t]).
  `axis="vertices"` reproduces the official ScanTalk code, which differences neighbouring vertex
  INDICES (x[:, v+1] - x[:, v]) instead: a bug kept only to reproduce its numbers.

- `gap_loss`: squared error of the inner-lip gap (the clearance between the lips, y up, per frame,
  as training.lip_geometry measures it on any topology), weighted up where the
  target lips are closed (`gap_weights`), so that p/b/m closures are not averaged away.
- `phone_loss`: cross-entropy of an auxiliary per-frame viseme classifier (labels -1 = unknown),
  optionally with the bilabial (PP) frames weighted up.

`compute_losses` combines them with configurable weights; coordinates are multiplied by
`unit_scale` first (1000: metres → millimetres, so Adam sees gradients of a sensible size).
`closure_gap_error` is the validation measure: summed |gap error| over target-closed frames.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

from training.lip_geometry import InnerLip
from training.lip_geometry import lip_gap as _lip_gap
from training.synth.visemes import VISEMES

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


def lip_gap(x: torch.Tensor, upper: torch.Tensor, lower: torch.Tensor) -> torch.Tensor:
    """[T, V, 3] → [T]: the inner-lip clearance, exactly as training.lip_geometry.lip_gap measures
    it (lowest upper-lip point minus highest lower-lip point, y up; differentiable)."""
    return _lip_gap(x, InnerLip(upper, lower, "given"))


def gap_weights(target_gap: torch.Tensor, neutral_gap: float, closure_boost: float = 0.0,
                closure_scale: float = 1.0, bilabial: torch.Tensor | None = None,
                bilabial_boost: float = 0.0) -> torch.Tensor:
    """Per-frame weights 1 + closure_boost * exp(-max(opening, 0) / closure_scale), opening = target
    gap minus the neutral's (lips at rest or pressed: the full boost; 1 scale unit open: 37 %),
    plus bilabial_boost on the frames flagged in `bilabial` (inside a p/b/m phone)."""
    opening = (target_gap - neutral_gap).clamp(min=0.0)
    w = 1.0 + closure_boost * torch.exp(-opening / closure_scale)
    if bilabial is not None and bilabial_boost:
        w = w + bilabial_boost * bilabial.to(w.dtype)
    return w.detach()


def gap_loss(pred_gap: torch.Tensor, target_gap: torch.Tensor, weights: torch.Tensor | None = None) -> torch.Tensor:
    """Mean over frames of weight × squared gap error."""
    err = (pred_gap - target_gap) ** 2
    return (err if weights is None else weights * err).mean()


PP_CLASS = VISEMES.index("PP")


def phone_loss(logits: torch.Tensor, labels: torch.Tensor, bilabial_weight: float = 1.0) -> torch.Tensor:
    """Cross-entropy of [T, C] logits against [T] class labels; frames labelled -1 are ignored.
    `bilabial_weight` weighs the PP frames that much more (the mean is over the weights): bilabials
    are ~5% of the frames, and the one viseme whose miss leaves the mouth visibly open."""
    if not bool((labels >= 0).any()):
        return logits.sum() * 0.0
    weight = None
    if bilabial_weight != 1.0:
        weight = torch.ones(logits.shape[-1], dtype=logits.dtype, device=logits.device)
        weight[PP_CLASS] = bilabial_weight
    return F.cross_entropy(logits, labels, weight=weight, ignore_index=-1)


def closure_gap_error(pred_gap: torch.Tensor, target_gap: torch.Tensor, neutral_gap: float,
                      closed: float) -> tuple[float, int]:
    """(sum of |pred - target| gap over frames whose target opening is below `closed`, count)."""
    mask = (target_gap - neutral_gap) < closed
    return float((pred_gap - target_gap).abs()[mask].sum()), int(mask.sum())


@dataclass
class GapInputs:
    """What the gap loss needs besides pred and target: the inner-lip vertices, the (augmented)
    neutral's gap in the same units as pred, and optionally the frames inside p/b/m phones."""

    upper: torch.Tensor
    lower: torch.Tensor
    neutral_gap: float
    bilabial: torch.Tensor | None = None  # [T] bool, aligned with pred's frames


@dataclass
class LossWeights:
    mse: float = 1.0
    mae: float = 0.0
    lip: float = 0.0
    velocity: float = 0.0
    velocity_axis: str = "time"
    unit_scale: float = 1.0
    gap: float = 0.0
    gap_closure_boost: float = 0.0
    gap_closure_mm: float = 1.0  # in scaled units (mm when unit_scale = 1000)
    gap_bilabial_boost: float = 0.0
    lip_closure: float = 0.0
    phone: float = 0.0
    phone_bilabial_weight: float = 1.0

    def __post_init__(self):
        if self.velocity_axis not in VELOCITY_AXES:
            raise ValueError(f"velocity_axis must be one of {VELOCITY_AXES}, not {self.velocity_axis!r}")
        if not self.phone_bilabial_weight > 0:
            raise ValueError(f"phone_bilabial_weight must be above 0, not {self.phone_bilabial_weight}")

    @classmethod
    def from_section(cls, sec) -> "LossWeights":
        return cls(mse=sec.mse, mae=sec.mae, lip=sec.lip, velocity=sec.velocity, velocity_axis=sec.velocity_axis,
                   unit_scale=sec.unit_scale, gap=sec.gap, gap_closure_boost=sec.gap_closure_boost,
                   gap_closure_mm=sec.gap_closure_mm, gap_bilabial_boost=sec.gap_bilabial_boost,
                   lip_closure=sec.lip_closure, phone=sec.phone,
                   phone_bilabial_weight=sec.phone_bilabial_weight)


def compute_losses(pred: torch.Tensor, target: torch.Tensor, weights: LossWeights,
                   lips: torch.Tensor | None = None, gap: GapInputs | None = None,
                   phone_logits: torch.Tensor | None = None,
                   phone_labels: torch.Tensor | None = None) -> dict[str, torch.Tensor]:
    """Every term (unweighted, in scaled units) and `total` = the weighted sum.

    A term with weight 0 is still reported (for logs) but costs no gradient. The lip term needs
    `lips`, the gap term `gap`, the phone term logits and labels; a term without its inputs is left
    out and reported as NaN (logits without labels still join the graph at zero cost, so every
    parameter gets a gradient, as DDP wants).
    """
    s = weights.unit_scale
    p, t = pred * s, target * s
    out = {"mse": mse(p, t)}
    total = weights.mse * out["mse"]
    if weights.mae:
        out["mae"] = (p - t).abs().mean()
        total = total + weights.mae * out["mae"]
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
    nan = torch.tensor(float("nan"))
    if gap is not None:
        with torch.set_grad_enabled(torch.is_grad_enabled() and weights.gap > 0):
            tg = lip_gap(t, gap.upper, gap.lower)
            w = gap_weights(tg, gap.neutral_gap * s, weights.gap_closure_boost, weights.gap_closure_mm,
                            gap.bilabial, weights.gap_bilabial_boost)
            out["gap"] = gap_loss(lip_gap(p, gap.upper, gap.lower), tg, w)
        if weights.gap:
            total = total + weights.gap * out["gap"]
        if lips is not None and len(lips):
            with torch.set_grad_enabled(torch.is_grad_enabled() and weights.lip_closure > 0):
                per_frame = ((p[:, lips] - t[:, lips]) ** 2).mean(dim=(1, 2))
                out["lip_closure"] = ((w - 1.0) * per_frame).mean()
            if weights.lip_closure:
                total = total + weights.lip_closure * out["lip_closure"]
        else:
            out["lip_closure"] = nan
    else:
        out["gap"] = nan
        out["lip_closure"] = nan
    if phone_logits is not None and phone_labels is not None:
        out["phone"] = phone_loss(phone_logits, phone_labels, weights.phone_bilabial_weight)
        total = total + weights.phone * out["phone"]
    else:
        out["phone"] = nan
        if phone_logits is not None:
            total = total + phone_logits.sum() * 0.0
    out["total"] = total
    return out
