"""Phonemes -> visemes -> ICT ARKit expression weights, with coarticulation and blinks.

Phones are ARPAbet (lower case, no stress digits) plus ``sil`` for silence; see
:func:`training.synth.tts.espeak_to_arpabet` for the espeak-ng mapping. The viseme classes are the
usual 15 (sil, PP, FF, TH, DD, kk, CH, SS, nn, RR, aa, E, ih, oh, ou) and each maps to a hand-made
mix of ICT FaceKit expression shapes. Coarticulation is a Gaussian filter applied analytically to
the piecewise-constant target track (exact, no time grid), after shifting every target ``lead``
seconds earlier than the sound (real mouths move before the sound is heard).
"""
from __future__ import annotations

import math
from typing import Iterable, Sequence

import numpy as np
from scipy.special import ndtr

# Expression shapes the generator animates, in this column order.
EXPRESSIONS = (
    "jawOpen", "mouthClose", "mouthFunnel", "mouthPucker",
    "mouthPress_L", "mouthPress_R", "mouthRollLower", "mouthRollUpper",
    "mouthShrugLower", "mouthShrugUpper", "mouthSmile_L", "mouthSmile_R",
    "mouthStretch_L", "mouthStretch_R", "mouthLowerDown_L", "mouthLowerDown_R",
    "mouthUpperUp_L", "mouthUpperUp_R", "eyeBlink_L", "eyeBlink_R",
)
MOUTH_EXPRESSIONS = tuple(e for e in EXPRESSIONS if not e.startswith("eye"))
_COL = {n: i for i, n in enumerate(EXPRESSIONS)}

VISEMES = ("sil", "PP", "FF", "TH", "DD", "kk", "CH", "SS", "nn", "RR", "aa", "E", "ih", "oh", "ou")

# ARPAbet phone -> viseme (diphthongs are split in two, see _DIPHTHONGS).
PHONE_TO_VISEME = {
    "sil": "sil", "pau": "sil", "sp": "sil", "spn": "sil", "h#": "sil",
    "p": "PP", "b": "PP", "m": "PP",
    "f": "FF", "v": "FF",
    "th": "TH", "dh": "TH",
    "t": "DD", "d": "DD", "dx": "DD",
    "k": "kk", "g": "kk", "ng": "kk", "hh": "kk",
    "ch": "CH", "jh": "CH", "sh": "CH", "zh": "CH",
    "s": "SS", "z": "SS",
    "n": "nn", "l": "nn", "el": "nn", "en": "nn", "em": "PP",
    "r": "RR", "er": "RR", "axr": "RR",
    "aa": "aa", "ae": "aa", "ah": "aa", "ay": "aa", "aw": "aa",
    "eh": "E", "ey": "E", "ax": "E",
    "ih": "ih", "iy": "ih", "y": "ih", "ix": "ih",
    "ao": "oh", "ow": "oh", "oy": "oh",
    "uw": "ou", "uh": "ou", "w": "ou",
}
# Reduced vowels are articulated less.
PHONE_SCALE = {"ax": 0.7, "ix": 0.7, "ah": 0.85, "hh": 0.6}
# Diphthongs: (first viseme, second viseme, fraction of the duration spent on the first).
_DIPHTHONGS = {
    "ay": ("aa", "ih", 0.55), "aw": ("aa", "ou", 0.55), "oy": ("oh", "ih", 0.55),
    "ey": ("E", "ih", 0.6), "ow": ("oh", "ou", 0.6),
}


def _sym(name: str, w: float) -> dict:
    return {f"{name}_L": w, f"{name}_R": w}


# Viseme -> expression weights (before the per-subject amplitude and jaw gain).
VISEME_WEIGHTS: dict[str, dict[str, float]] = {
    "sil": {},
    "PP": {"jawOpen": 0.03, **_sym("mouthPress", 0.35), "mouthRollLower": 0.1, "mouthRollUpper": 0.08},
    "FF": {"jawOpen": 0.07, "mouthRollLower": 0.55, **_sym("mouthUpperUp", 0.2), "mouthShrugUpper": 0.1},
    "TH": {"jawOpen": 0.13, **_sym("mouthLowerDown", 0.15), **_sym("mouthStretch", 0.1)},
    "DD": {"jawOpen": 0.12, **_sym("mouthStretch", 0.12), **_sym("mouthLowerDown", 0.1)},
    "kk": {"jawOpen": 0.17, **_sym("mouthStretch", 0.1), **_sym("mouthLowerDown", 0.1)},
    "CH": {"jawOpen": 0.1, "mouthFunnel": 0.45, "mouthPucker": 0.25, **_sym("mouthUpperUp", 0.2),
           **_sym("mouthLowerDown", 0.2)},
    "SS": {"jawOpen": 0.05, **_sym("mouthStretch", 0.25), **_sym("mouthSmile", 0.12),
           **_sym("mouthLowerDown", 0.1), **_sym("mouthUpperUp", 0.1)},
    "nn": {"jawOpen": 0.13, **_sym("mouthStretch", 0.08), **_sym("mouthLowerDown", 0.1)},
    "RR": {"jawOpen": 0.13, "mouthPucker": 0.35, "mouthFunnel": 0.25},
    "aa": {"jawOpen": 0.42, **_sym("mouthLowerDown", 0.35), **_sym("mouthUpperUp", 0.1),
           **_sym("mouthStretch", 0.08)},
    "E": {"jawOpen": 0.3, **_sym("mouthLowerDown", 0.25), **_sym("mouthStretch", 0.25),
          **_sym("mouthSmile", 0.12), **_sym("mouthUpperUp", 0.1)},
    "ih": {"jawOpen": 0.17, **_sym("mouthStretch", 0.3), **_sym("mouthSmile", 0.3),
           **_sym("mouthLowerDown", 0.15), **_sym("mouthUpperUp", 0.1)},
    "oh": {"jawOpen": 0.33, "mouthFunnel": 0.5, "mouthPucker": 0.2, **_sym("mouthLowerDown", 0.15)},
    "ou": {"jawOpen": 0.12, "mouthPucker": 0.7, "mouthFunnel": 0.3},
}
# Lip closure per viseme: mouthClose = closure(t) * CLOSE_PER_JAW * jawOpen(t), which shuts the
# lips whatever the (smoothed) jaw opening is. ICT's mouthClose over-closes at 1:1 with jawOpen.
VISEME_CLOSURE = {"PP": 1.0, "FF": 0.25}
CLOSE_PER_JAW = 0.86
# A bilabial closure lasts at least this long (seconds), centred on its phone: TTS gives /p b m/
# of 30 ms or less, which a 30 fps track would otherwise never show closed. With the closure's
# own Gaussian (half the coarticulation sigma) and CLOSURE_GAIN, the lips stay fully shut for
# about 45 ms or more (>= 1-2 frames at 30 fps), with smooth ramps on both sides.
CLOSURE_MIN_S = 0.09
CLOSURE_GAIN = 1.25
_LIP_OPENERS = ("mouthLowerDown_L", "mouthLowerDown_R", "mouthUpperUp_L", "mouthUpperUp_R", "mouthFunnel")

DEFAULT_STYLE = {
    "amplitude": 1.0,   # gain on all mouth weights
    "jaw_gain": 1.0,    # extra gain on jawOpen
    "sigma": 0.035,     # coarticulation Gaussian, seconds (25-45 ms)
    "lead": 0.035,      # targets this many seconds before the sound
    "asymmetry": 0.0,   # >0: left side stronger, <0: right side stronger (fraction)
}

_VISEME_MATRIX = np.zeros((len(VISEMES), len(EXPRESSIONS)))
for _i, _v in enumerate(VISEMES):
    for _name, _w in VISEME_WEIGHTS[_v].items():
        _VISEME_MATRIX[_i, _COL[_name]] = _w
_VISEME_INDEX = {v: i for i, v in enumerate(VISEMES)}


def phone_to_viseme(phone: str) -> str:
    """Viseme class of an ARPAbet phone (stress digits ignored); unknown phones -> 'E'."""
    p = phone.lower().rstrip("012")
    return PHONE_TO_VISEME.get(p, "E")


def viseme_segments(phonemes: Iterable[Sequence]) -> list[tuple[str, float, float, float]]:
    """(viseme, start_s, end_s, scale) of every phone; diphthongs become two segments."""
    out = []
    for item in phonemes:
        phone, start, end = str(item[0]), float(item[1]), float(item[2])
        if not end > start:
            continue
        p = phone.lower().rstrip("012")
        scale = PHONE_SCALE.get(p, 1.0)
        if p in _DIPHTHONGS:
            a, b, frac = _DIPHTHONGS[p]
            mid = start + frac * (end - start)
            out.append((a, start, mid, scale))
            out.append((b, mid, end, scale))
        else:
            out.append((phone_to_viseme(p), start, end, scale))
    return out


def _smoothed(segments, values: np.ndarray, times: np.ndarray, sigma: float, lead: float) -> np.ndarray:
    """Box targets over [start-lead, end-lead] convolved with a Gaussian, sampled at ``times``.

    values: [S, C] target of each segment. Returns [T, C]. Exact: integral of the Gaussian over
    each box = Phi((t - a) / sigma) - Phi((t - b) / sigma).
    """
    if not segments:
        return np.zeros((len(times), values.shape[1]))
    a = np.array([s[1] for s in segments]) - lead
    b = np.array([s[2] for s in segments]) - lead
    t = times[:, None]
    cover = ndtr((t - a[None]) / sigma) - ndtr((t - b[None]) / sigma)  # [T, S]
    return cover @ values


def closure_track(segs, times: np.ndarray, sigma: float, lead: float) -> np.ndarray:
    """Lip closure 0..1 at ``times``: bilabial (PP) segments widened to CLOSURE_MIN_S around
    their centre, smoothed with sigma/2 and saturated (so short /p b m/ still shut the lips)."""
    wide = []
    for v, a, b, _ in segs:
        if v == "PP" and b - a < CLOSURE_MIN_S:
            mid = 0.5 * (a + b)
            a, b = mid - 0.5 * CLOSURE_MIN_S, mid + 0.5 * CLOSURE_MIN_S
        wide.append((v, a, b))
    clos = np.array([[VISEME_CLOSURE.get(s[0], 0.0)] for s in wide]).reshape(-1, 1)
    c = CLOSURE_GAIN * _smoothed(wide, clos, times, 0.5 * sigma, lead)[:, 0]
    return np.clip(c, 0.0, 1.0)


def viseme_track(phonemes, fps: float, n_frames: int, style: dict | None = None) -> np.ndarray:
    """Expression weights float32 [n_frames, len(EXPRESSIONS)] of a phone sequence.

    phonemes: iterable of (phone, start_s, end_s), ARPAbet or 'sil'. Frame i is at time i / fps.
    style: optional overrides of :data:`DEFAULT_STYLE`. Silence (and any time without a phone)
    gives all-zero weights (the rest pose), apart from the Gaussian tails of nearby speech.
    Blinks are not included (see :func:`blink_track`).
    """
    st = dict(DEFAULT_STYLE)
    if style:
        st.update({k: float(v) for k, v in style.items() if k in DEFAULT_STYLE})
    n_frames = int(n_frames)
    times = np.arange(n_frames, dtype=np.float64) / float(fps)
    segs = [s for s in viseme_segments(phonemes) if s[0] != "sil"]
    if n_frames == 0:
        return np.zeros((0, len(EXPRESSIONS)), np.float32)
    targets = np.array([_VISEME_MATRIX[_VISEME_INDEX[s[0]]] * s[3] for s in segs]).reshape(-1, len(EXPRESSIONS))
    w = _smoothed(segs, targets, times, st["sigma"], st["lead"])
    w *= st["amplitude"]
    w[:, _COL["jawOpen"]] *= st["jaw_gain"]
    # Closures are sharper than the rest (lips must actually meet on p/b/m).
    c = closure_track(segs, times, st["sigma"], st["lead"])
    for name in _LIP_OPENERS:  # a closure overrides what pulls the lips apart
        w[:, _COL[name]] *= 1.0 - c
    w[:, _COL["mouthClose"]] = c * CLOSE_PER_JAW * w[:, _COL["jawOpen"]]
    asym = st["asymmetry"]
    if asym:
        for name in EXPRESSIONS:
            if name.endswith("_L") and not name.startswith("eye"):
                w[:, _COL[name]] *= 1.0 + asym
                w[:, _COL[name[:-2] + "_R"]] *= 1.0 - asym
    w[:, _COL["eyeBlink_L"]] = 0.0
    w[:, _COL["eyeBlink_R"]] = 0.0
    return np.clip(w, 0.0, 1.0).astype(np.float32)


def blink_track(n_frames: int, fps: float, rng: np.random.Generator,
                interval=(2.0, 5.0)) -> np.ndarray:
    """Blink weight [n_frames] in 0..1: a blink every 2-5 s (random), ~0.25 s long, fast close."""
    out = np.zeros(int(n_frames))
    if n_frames == 0:
        return out
    dur_total = (n_frames - 1) / fps
    t = rng.uniform(0.2, interval[1])
    times = np.arange(n_frames) / fps
    while t < dur_total:
        close, opening = rng.uniform(0.06, 0.1), rng.uniform(0.12, 0.2)
        peak = rng.uniform(0.85, 1.0)
        up = (times >= t - close) & (times < t)
        out[up] = np.maximum(out[up], peak * 0.5 * (1 - np.cos(math.pi * (times[up] - (t - close)) / close)))
        dn = (times >= t) & (times < t + opening)
        out[dn] = np.maximum(out[dn], peak * 0.5 * (1 + np.cos(math.pi * (times[dn] - t) / opening)))
        t += rng.uniform(*interval)
    return out
