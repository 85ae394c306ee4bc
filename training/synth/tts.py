"""Text to speech with phone timings: espeak-ng (through libespeak-ng, ctypes) and flite.

espeak-ng is GPL: it is called as a system library/tool, never vendored. Per-phoneme timings come
from the library's ``espeakEVENT_PHONEME`` events (the command line prints none without MBROLA),
collected by ``espeak_run.py`` in a fresh process per sentence (the library keeps state between
utterances, so in-process synthesis is not reproducible); flite prints them itself with ``-psdur``. Both results are resampled to 16 kHz mono and their
phones mapped to ARPAbet (lower case, ``sil`` for pauses).
"""
from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tempfile
import warnings
from dataclasses import dataclass
from pathlib import Path

import numpy as np

SAMPLE_RATE = 16000


class TTSError(RuntimeError):
    """A voice could not speak a sentence (missing tool, unknown voice, synthesis error)."""


# --------------------------------------------------------------------------- voices

ESPEAK_BASES = ("en-us", "en-gb-x-rp", "en-gb-scotland", "en-029", "en-us-nyc",
                "en-gb-x-gbclan", "en-gb-x-gbcwmd", "en")
ESPEAK_VARIANTS = ("", "m1", "m2", "m3", "m4", "m5", "m6", "m7",
                   "f1", "f2", "f3", "f4", "f5", "klatt", "croak")
FLITE_VOICES = ("slt", "rms", "awb", "kal16")
# Held out for the test split: one flite voice, one espeak accent and two espeak variants.
HELD_OUT_FLITE = ("awb",)
HELD_OUT_ESPEAK_BASES = ("en-gb-scotland",)
HELD_OUT_ESPEAK_VARIANTS = ("f4", "m4")


@dataclass(frozen=True)
class Voice:
    engine: str  # "espeak" or "flite"
    name: str    # espeak voice spec ("en-us+f3") or flite voice ("slt")

    @property
    def id(self) -> str:
        return f"{self.engine}:{self.name}"

    @property
    def held_out(self) -> bool:
        if self.engine == "flite":
            return self.name in HELD_OUT_FLITE
        base, _, variant = self.name.partition("+")
        return base in HELD_OUT_ESPEAK_BASES or variant in HELD_OUT_ESPEAK_VARIANTS


def all_voices() -> list[Voice]:
    """Every voice the generator knows, available or not, in a fixed order."""
    out = [Voice("espeak", b + (f"+{v}" if v else "")) for b in ESPEAK_BASES for v in ESPEAK_VARIANTS]
    out += [Voice("flite", v) for v in FLITE_VOICES]
    return out


# --------------------------------------------------------------------------- phone sets

_ESPEAK_ARPABET = {
    # vowels
    "a": "ae", "aa": "ae", "a#": "ax", "A:": "aa", "A@": "aa", "A": "aa", "0": "aa", "V": "ah",
    "@": "ax", "@2": "ax", "@5": "ax", "@-": "ax", "@L": "el", "3:": "er", "3": "er", "@r": "er",
    "E": "eh", "e@": "eh", "e": "eh", "eI": "ey", "I": "ih", "I2": "ih", "I#": "ih", "i": "iy",
    "i:": "iy", "i@": "iy", "i@3": "iy", "O:": "ao", "O@": "ao", "O": "ao", "O2": "ao", "OI": "oy",
    "o@": "ao", "oU": "ow", "o": "ow", "U": "uh", "u:": "uw", "U@": "uh", "u": "uw", "aI": "ay",
    "aU": "aw", "aI@": "ay", "aU@": "aw", "aI3": "ay", "IR": "ih", "VR": "ah", "ju:": "uw",
    # consonants
    "p": "p", "b": "b", "t": "t", "d": "d", "k": "k", "g": "g", "f": "f", "v": "v", "s": "s",
    "z": "z", "h": "hh", "m": "m", "n": "n", "l": "l", "r": "r", "w": "w", "j": "y", "T": "th",
    "D": "dh", "S": "sh", "Z": "zh", "N": "ng", "tS": "ch", "dZ": "jh", "?": "t", "x": "hh",
    "t2": "t", "d2": "d", "n-": "n", "l/": "l", "l/2": "l", "r-": "r", "z/2": "z", "*": "dx",
    "#": "t", "C": "hh", "W": "w", ";": "y",
}


def espeak_to_arpabet(ph: str) -> str:
    """ARPAbet of an espeak-ng English phoneme mnemonic; pauses -> 'sil', unknown -> 'ax'."""
    ph = ph.strip().lstrip("'%=,")
    if not ph or ph.startswith("_") or ph == ":":
        return "sil"
    if ph in _ESPEAK_ARPABET:
        return _ESPEAK_ARPABET[ph]
    stripped = ph.rstrip("0123456789#-/;")
    if stripped in _ESPEAK_ARPABET:
        return _ESPEAK_ARPABET[stripped]
    for n in (3, 2, 1):
        if ph[:n] in _ESPEAK_ARPABET:
            return _ESPEAK_ARPABET[ph[:n]]
    return "ax"


def flite_to_arpabet(ph: str) -> str:
    ph = ph.strip().lower().rstrip("012")
    return "sil" if ph in ("pau", "h#", "sil", "") else ph


# --------------------------------------------------------------------------- espeak-ng (ctypes)

_ESPEAK_RUN = str(Path(__file__).with_name("espeak_run.py"))


def _espeak_cmd(*args) -> list[str]:
    # -E -s: ignore PYTHON* variables and the user site; the helper needs the standard library only
    return [sys.executable, "-E", "-s", _ESPEAK_RUN, *[str(a) for a in args]]


def espeak_voices_installed(names) -> set[str]:
    """The espeak-ng voice names among ``names`` that libespeak-ng accepts (empty if it is missing)."""
    try:
        res = subprocess.run(_espeak_cmd("voices", *names), capture_output=True, text=True, timeout=60)
        return set(json.loads(res.stdout)) if res.returncode == 0 else set()
    except (OSError, subprocess.SubprocessError, ValueError):
        return set()


def _espeak_synth(text: str, voice: str, rate: int, pitch: int, prange: int):
    """libespeak-ng in a fresh process (the library keeps state between utterances)."""
    try:
        res = subprocess.run(_espeak_cmd("synth", voice, rate, pitch, prange, text),
                             capture_output=True, timeout=120)
    except (OSError, subprocess.SubprocessError) as exc:
        raise TTSError(f"espeak-ng voice '{voice}' failed: {exc}") from None
    if res.returncode != 0:
        raise TTSError(f"espeak-ng voice '{voice}' failed: {res.stderr.decode(errors='replace').strip()[:200]}")
    head, _, pcm = res.stdout.partition(b"\n")
    info = json.loads(head)
    sr = int(info["sample_rate"])
    audio = np.frombuffer(pcm[: len(pcm) // 2 * 2], dtype="<i2").astype(np.float64) / 32768.0
    n = len(audio)
    if n == 0:
        raise TTSError(f"espeak-ng voice '{voice}' produced no audio")
    ev = info["events"]
    phones = []
    for k, (sample, _ms, ph) in enumerate(ev):
        end = ev[k + 1][0] if k + 1 < len(ev) else n
        phones.append((espeak_to_arpabet(ph), sample / sr, min(end, n) / sr))
    return audio, sr, phones


# --------------------------------------------------------------------------- flite

def _flite_exe() -> str:
    exe = shutil.which("flite")
    if exe is None:
        raise TTSError("flite not found; install the Debian package flite")
    return exe


def flite_voices_installed() -> set[str]:
    try:
        out = subprocess.run([_flite_exe(), "-lv"], capture_output=True, text=True, timeout=30)
    except (TTSError, OSError, subprocess.SubprocessError):
        return set()
    text = out.stdout + out.stderr
    return set(text.split(":", 1)[-1].split()) if ":" in text else set()


def _flite_synth(text: str, voice: str, stretch: float):
    import soundfile as sf

    with tempfile.TemporaryDirectory(prefix="synth_flite_") as tmp:
        wav = os.path.join(tmp, "out.wav")
        cmd = [_flite_exe(), "-voice", voice, "-psdur", "--setf", f"duration_stretch={stretch:.3f}",
               "-t", text, "-o", wav]
        try:
            res = subprocess.run(cmd, capture_output=True, text=True, timeout=120)
        except (OSError, subprocess.SubprocessError) as exc:
            raise TTSError(f"flite voice '{voice}' failed: {exc}") from None
        if res.returncode != 0 or not os.path.isfile(wav):
            raise TTSError(f"flite voice '{voice}' failed (exit {res.returncode}): {res.stderr.strip()[:200]}")
        audio, sr = sf.read(wav, dtype="float64", always_2d=True)
    audio = audio.mean(axis=1)
    phones, prev = [], 0.0
    for tok in res.stdout.split():
        name, sep, t = tok.rpartition(":")
        if not sep:
            continue
        try:
            end = float(t)
        except ValueError:
            continue
        phones.append((flite_to_arpabet(name), prev, end))
        prev = end
    if not phones:
        raise TTSError(f"flite voice '{voice}' printed no phone timings (is -psdur supported?)")
    return audio, sr, phones


# --------------------------------------------------------------------------- public

def resample(x: np.ndarray, sr_in: int, sr_out: int) -> np.ndarray:
    """Band-limited (FFT) resampling of a clip that starts and ends in silence."""
    n_out = int(round(len(x) * sr_out / sr_in))
    pad = int(0.05 * sr_in)  # a little silence on both sides keeps the circular FFT clean
    xp = np.concatenate([np.zeros(pad), x, np.zeros(pad)])
    spec = np.fft.rfft(xp)
    n_p = int(round(len(xp) * sr_out / sr_in))
    keep = min(len(spec), n_p // 2 + 1)
    y = np.fft.irfft(spec[:keep], n_p) * (n_p / len(xp))
    start = int(round(pad * sr_out / sr_in))
    return y[start:start + n_out]


def available_voices() -> list[Voice]:
    """The voices of :func:`all_voices` that this machine can speak with (warns about the rest)."""
    known = all_voices()
    es = espeak_voices_installed([v.name for v in known if v.engine == "espeak"])
    if not es:
        warnings.warn("synth: espeak-ng voices skipped: libespeak-ng not found or it accepts no "
                      "voice (install the Debian packages espeak-ng libespeak-ng1)", stacklevel=2)
    fl = flite_voices_installed()
    if not fl:
        warnings.warn("synth: flite voices skipped: flite not installed or lists no voices", stacklevel=2)
    out, missing = [], []
    for v in known:
        ok = v.name in (es if v.engine == "espeak" else fl)
        (out if ok else missing).append(v)
    partial = [m.id for m in missing if (es if m.engine == "espeak" else fl)]
    if partial:
        warnings.warn(f"synth: voices not available here, skipped: {', '.join(partial)}", stacklevel=2)
    return out


def synthesize(text: str, voice: Voice, rate: float = 1.0, pitch: float = 0.0, pitch_range: float = 0.0):
    """Speak ``text``: returns (audio float64 [N] at 16 kHz, phones [(arpabet, start_s, end_s)]).

    rate: speed factor (1 = the voice's normal speed); pitch, pitch_range: -1..1 shifts of the espeak
    pitch and intonation range (flite ignores them). Raises TTSError if the voice fails.
    """
    if voice.engine == "espeak":
        audio, sr, phones = _espeak_synth(text, voice.name, rate=round(175 * rate),
                                          pitch=round(50 + 25 * pitch), prange=round(50 + 25 * pitch_range))
    elif voice.engine == "flite":
        audio, sr, phones = _flite_synth(text, voice.name, stretch=1.0 / rate)
    else:
        raise TTSError(f"unknown engine {voice.engine}")
    if sr != SAMPLE_RATE:
        audio = resample(audio, int(sr), SAMPLE_RATE)
    dur = len(audio) / SAMPLE_RATE
    clean = []
    for p, s, e in phones:
        s, e = min(max(s, 0.0), dur), min(max(e, 0.0), dur)
        if e <= s:
            continue
        if clean and clean[-1][0] == p == "sil":
            clean[-1] = (p, clean[-1][1], e)
        else:
            clean.append((p, s, e))
    return audio, clean
