"""Map a user's mesh into the frame a model was trained in, and offsets back out of it.

The model reads raw xyz, so units and placement matter. Axes are the caller's job (y up, face
looking along +z; the Blender add-on converts from Z-up). Here: units are snapped to the nearest
of m, dm, cm, mm or inches by comparing the bounding-box diagonal with the training heads' (a
metric snap, not a free rescale, so a head-and-shoulders scan is not shrunk to a face), and the
bounding-box centre is moved onto the training heads' centre. A head made larger or smaller than
life (a sculpt at 2x) is the caller's to say (`head_scale`): the model then sees it at life size,
and its offsets come back scaled with the head.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

UNIT_SCALES = {"m": 1.0, "dm": 0.1, "cm": 0.01, "mm": 0.001, "in": 0.0254}


@dataclass(frozen=True)
class Frame:
    """model_xyz = (xyz - centre) * scale + target; scale = the unit's metres / head_scale."""

    scale: float = 1.0
    centre: tuple = (0.0, 0.0, 0.0)
    target: tuple = (0.0, 0.0, 0.0)
    units: str = "as-is"
    head_scale: float = 1.0  # the head's size in life sizes, as the caller gave it

    def to_model(self, verts: np.ndarray) -> np.ndarray:
        return (np.asarray(verts, np.float64) - self.centre) * self.scale + self.target

    def offsets_from_model(self, offsets: np.ndarray) -> np.ndarray:
        return offsets / np.float32(self.scale)

    def to_dict(self) -> dict:
        return {"scale": self.scale, "centre": list(self.centre), "target": list(self.target),
                "units": self.units, "head_scale": self.head_scale}


def metres_per_unit(frame: dict | None) -> float:
    """A result's unit in metres at life size, from its meta's frame (Frame.to_dict): the unit
    over the head scale, so tolerances in millimetres stay in proportion to a head made at 2x,
    as-is or snapped. 1 for results written before frames recorded their units."""
    frame = frame or {}
    return float(frame["scale"]) if frame.get("units") is not None and frame.get("scale") else 1.0


def bbox(verts: np.ndarray) -> tuple[np.ndarray, float]:
    lo, hi = verts.min(0), verts.max(0)
    return (lo + hi) / 2, float(np.linalg.norm(hi - lo))


def guess_units(diagonal: float, reference_size: float) -> str:
    """The unit whose metre conversion puts the diagonal closest (in log) to the reference."""
    if diagonal <= 0 or reference_size <= 0:
        return "m"
    return min(UNIT_SCALES, key=lambda u: abs(np.log(diagonal * UNIT_SCALES[u] / reference_size)))


def fit_frame(verts: np.ndarray, reference_centre, reference_size: float,
              mode: str = "auto", units: str | None = None, head_scale: float = 1.0) -> Frame:
    """`mode`: "auto" (snap units, centre) or "none" (as is). `units` forces the unit;
    `head_scale` (> 0) says how many times life size the head is in those units."""
    if not head_scale > 0:
        raise ValueError(f"head_scale must be greater than 0, not {head_scale!r}")
    if mode == "none" or reference_size <= 0:
        return Frame(scale=1.0 / head_scale, head_scale=head_scale)
    if mode != "auto":
        raise ValueError(f"normalize must be 'auto' or 'none', not {mode!r}")
    centre, diag = bbox(np.asarray(verts, np.float64))
    unit = units or guess_units(diag, reference_size)
    if unit not in UNIT_SCALES:
        raise ValueError(f"unknown unit {unit!r}; use one of {', '.join(UNIT_SCALES)}")
    return Frame(scale=UNIT_SCALES[unit] / head_scale, centre=tuple(centre), target=tuple(reference_centre),
                 units=unit, head_scale=head_scale)
