"""Validation of every option the CLI, the worker and the batch runner accept.

Torch-free and cheap, so a bad request is refused before anything heavy is imported. Each
problem raises `BadRequest` (protocol code `bad_request`, CLI exit code 2) with a message that
says what was wrong and what is allowed.
"""
from __future__ import annotations

import math

from .errors import BadRequest

# Limits: far beyond any real use, small enough that a typo (fps 3000, start 1e9) is caught.
MIN_FPS, MAX_FPS = 1.0, 1000.0
MAX_SECONDS = 6 * 3600.0  # longest clip (start/duration/audio length) accepted: 6 hours
MIN_DURATION = 0.1  # seconds; the audio loader needs at least this much
DEVICES = ("auto", "cpu", "cuda")
NORMALIZE = ("auto", "none")
UNITS = ("m", "dm", "cm", "mm", "in")
DTYPES = ("float32", "float16")
MIN_HEAD_SCALE, MAX_HEAD_SCALE = 0.1, 10.0  # a head this many times life size, in its units


def number(name: str, value, *, lo: float | None = None, hi: float | None = None,
           lo_open: bool = False, unit: str = "") -> float:
    """`value` as a finite float within [lo, hi] (lo excluded if lo_open), else BadRequest."""
    if isinstance(value, bool) or value is None:
        raise BadRequest(f"{name} must be a number, got {value!r}")
    if isinstance(value, str):
        try:
            value = float(value.strip())
        except ValueError:
            raise BadRequest(f"{name} must be a number, got {value!r}") from None
    try:
        value = float(value)
    except (TypeError, ValueError):
        raise BadRequest(f"{name} must be a number, got {value!r}") from None
    if not math.isfinite(value):
        raise BadRequest(f"{name} must be a finite number, got {value}")
    u = f" {unit}" if unit else ""
    if lo is not None and (value < lo or (lo_open and value <= lo)):
        rel = "greater than" if lo_open else "at least"
        raise BadRequest(f"{name} must be {rel} {lo:g}{u}, got {value:g}")
    if hi is not None and value > hi:
        raise BadRequest(f"{name} must be at most {hi:g}{u}, got {value:g}")
    return value


def choice(name: str, value, allowed, default=None):
    if value is None or value == "":
        if default is None:
            return None
        value = default
    if not isinstance(value, str) or value not in allowed:
        raise BadRequest(f"{name} must be one of {', '.join(allowed)}; got {value!r}")
    return value


def device_name(value) -> str:
    """auto, cpu, cuda or cuda:N."""
    if value is None or value == "":
        return "auto"
    if isinstance(value, str) and value.startswith("cuda:") and value[5:].isdigit():
        return value
    return choice("device", value, DEVICES)


def animate_options(fps=None, start=0.0, duration=None, device="auto", normalize="auto", units=None,
                    dtype="float32", head_scale=None) -> dict:
    """Validated keyword arguments for `animate`: fps (None = the model's native rate) in
    [1, 1000], start in [-6 h, 6 h] (negative: leading silence), duration (None = to the end) in
    [0.1 s, 6 h], head_scale (None = 1: life size) in [0.1, 10], and the choices."""
    out = {}
    out["fps"] = None if fps is None else number("fps", fps, lo=MIN_FPS, hi=MAX_FPS, unit="frames per second")
    out["start"] = 0.0 if start is None else number("start", start, lo=-MAX_SECONDS, hi=MAX_SECONDS, unit="s")
    out["duration"] = None if duration is None else number("duration", duration, lo=MIN_DURATION,
                                                           hi=MAX_SECONDS, unit="s")
    out["device"] = device_name(device)
    out["normalize"] = choice("normalize", normalize, NORMALIZE, "auto")
    out["units"] = choice("units", units, UNITS)
    out["dtype"] = choice("dtype", dtype, DTYPES, "float32")
    out["head_scale"] = 1.0 if head_scale is None else number(
        "head_scale", head_scale, lo=MIN_HEAD_SCALE, hi=MAX_HEAD_SCALE, unit="times life size")
    return out


def path_field(name: str, value, required: bool = True):
    if value is None or value == "":
        if required:
            raise BadRequest(f"'{name}' is required")
        return None
    if not isinstance(value, str):
        raise BadRequest(f"'{name}' must be a path string, got {value!r}")
    if "\x00" in value:
        raise BadRequest(f"'{name}' contains a NUL character")
    return value


COMPACT_KEYS = ("max_error_mm", "k_max", "strength", "smoothing", "metres_per_unit")


def compact_options(value) -> dict | None:
    """The `compact` object of a request (None: no Compact basis). max_error_mm in (0, 100]
    (default 0.1), k_max an integer in [1, 512] (64), strength in [0, 10] (1), smoothing in
    [0, 100] frames (0), metres_per_unit null (the result's unit snap) or in (0, 1000]."""
    if value is None:
        return None
    if not isinstance(value, dict):
        raise BadRequest(f"compact must be an object such as {{\"max_error_mm\": 0.1}}, got {value!r}")
    unknown = sorted(set(value) - set(COMPACT_KEYS))
    if unknown:
        raise BadRequest(f"compact: unknown field(s) {', '.join(unknown)}; allowed: {', '.join(COMPACT_KEYS)}")

    def get(key, default, **kw):
        v = value.get(key)
        return default if v is None else number(f"compact.{key}", v, **kw)

    k_max = get("k_max", 64, lo=1, hi=512)
    if k_max != int(k_max):
        raise BadRequest(f"compact.k_max must be a whole number, got {k_max:g}")
    return {"max_error_mm": get("max_error_mm", 0.1, lo=0, lo_open=True, hi=100, unit="mm"), "k_max": int(k_max),
            "strength": get("strength", 1.0, lo=0, hi=10), "smoothing": get("smoothing", 0.0, lo=0, hi=100, unit="frames"),
            "metres_per_unit": get("metres_per_unit", None, lo=0, lo_open=True, hi=1000)}
