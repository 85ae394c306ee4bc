"""Text to speech with phone timings: espeak-ng (through libespeak-ng, ctypes) and flite.

espeak-ng is GPL: it is called as a system library/tool, never vendored. Per-phoneme timings come
from the library's ``espeakEVENT_PHONEME`` events (the command line prints none without MBROLA),
collected by ``espeak_run.py`` in a fresh process per sentence (the library keeps state between
utterances, so in-process synthesis is not reproducible); flite prints them itself with ``-psdur``.
Both results are resampled to 16 kHz mono and their phones mapped to ARPAbet (lower case, ``sil``
for pauses; espeak-ng mnemonics of every language through :mod:`.phones`).

English voices (espeak-ng English accents and flite) speak the Harvard sentences; the espeak-ng
voices of :data:`LANGUAGES` speak :mod:`.sentences_multi`. The languages of
:data:`HELD_OUT_LANGUAGES` (Uralic, Dravidian, Niger-Congo) are test-only.
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

from . import phones

SAMPLE_RATE = 16000


class TTSError(RuntimeError):
    """A voice could not speak a sentence (missing tool, unknown voice, synthesis error)."""


# --------------------------------------------------------------------------- voices

ESPEAK_BASES = ("en-us", "en-gb-x-rp", "en-gb-scotland", "en-029", "en-us-nyc",
                "en-gb-x-gbclan", "en-gb-x-gbcwmd", "en")
ESPEAK_VARIANTS = ("", "m1", "m2", "m3", "m4", "m5", "m6", "m7",
                   "f1", "f2", "f3", "f4", "f5", "klatt", "croak")
FLITE_VOICES = ("slt", "rms", "awb", "kal16")
# Optional English engine (Debian festival festlex-cmu festlex-poslex, and the voices
# festvox-us-slt-hts festvox-kallpc16k festvox-kdlpc16k): an HTS voice and two diphone voices, each
# built from a real speaker's recordings, all on festival's US phone set (radio: ARPAbet). A voice
# that is not installed is skipped.
FESTIVAL_VOICES = ("cmu_us_slt_arctic_hts", "kal_diphone", "ked_diphone")
# espeak-ng voices of the other languages (keys of sentences_multi.SENTENCES), in a fixed order.
LANGUAGES = ("de", "nl", "sv", "fr", "es", "it", "pt", "ro", "pl", "cs", "ru", "uk", "el", "tr",
             "fi", "id", "vi", "hi", "bn", "ar", "fa", "cmn-latn-pinyin", "ja", "ko",
             "hu", "ta", "sw")
# Variants used for the other languages (fewer than for English: the language is what varies).
LANGUAGE_VARIANTS = ("", "m1", "m3", "m4", "f1", "f2", "f4", "klatt")
# Held out for the test split: one flite voice, one espeak accent, two espeak variants and three
# languages from three families that no train language shares (Uralic Hungarian has Finnish as a
# cousin in train; Dravidian Tamil and Niger-Congo Swahili have no relative there).
HELD_OUT_FLITE = ("awb",)
HELD_OUT_ESPEAK_BASES = ("en-gb-scotland",)
HELD_OUT_ESPEAK_VARIANTS = ("f4", "m4")
HELD_OUT_LANGUAGES = ("hu", "ta", "sw")


def language_of(espeak_voice: str) -> str:
    """'en' for every English accent, else the espeak voice name without its variant."""
    base = espeak_voice.partition("+")[0]
    return "en" if base == "en" or base.startswith("en-") else base


@dataclass(frozen=True)
class Voice:
    engine: str  # "espeak", "flite" or "festival"
    name: str    # espeak voice spec ("en-us+f3", "de+m1") or flite voice ("slt")

    @property
    def id(self) -> str:
        return f"{self.engine}:{self.name}"

    @property
    def language(self) -> str:
        return language_of(self.name) if self.engine == "espeak" else "en"

    @property
    def held_out(self) -> bool:
        if self.engine == "flite":
            return self.name in HELD_OUT_FLITE
        if self.engine == "festival":
            return False
        base, _, variant = self.name.partition("+")
        return (base in HELD_OUT_ESPEAK_BASES or variant in HELD_OUT_ESPEAK_VARIANTS
                or self.language in HELD_OUT_LANGUAGES)


def all_voices(languages=None) -> list[Voice]:
    """Every voice the generator knows, available or not, in a fixed order.

    languages: None for all; else an iterable of language codes ('en' = English accents + flite).
    """
    want = None if languages is None else set(languages)
    out = []
    if want is None or "en" in want:
        out += [Voice("espeak", b + (f"+{v}" if v else "")) for b in ESPEAK_BASES for v in ESPEAK_VARIANTS]
        out += [Voice("flite", v) for v in FLITE_VOICES]
        out += [Voice("festival", v) for v in FESTIVAL_VOICES]
    out += [Voice("espeak", lang + (f"+{v}" if v else "")) for lang in LANGUAGES
            if want is None or lang in want for v in LANGUAGE_VARIANTS]
    return out


# --------------------------------------------------------------------------- phone sets

def espeak_to_arpabet(ph: str, lang: str = "en") -> str:
    """ARPAbet of an espeak-ng phoneme mnemonic; pauses -> 'sil', unknown -> 'ax' (see .phones)."""
    return phones.espeak_to_arpabet(ph, lang)


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
    lang = language_of(voice)
    out, unknown = [], []
    for k, (sample, _ms, ph) in enumerate(ev):
        end = min(ev[k + 1][0] if k + 1 < len(ev) else n, n)
        parts, known = phones.espeak_phones(ph, lang)
        if not known:
            unknown.append((ph, (end - sample) / sr))
        # a diphthong outside ARPAbet (or an affricate) shares the phone's time between its parts
        step = (end - sample) / len(parts)
        for i, p in enumerate(parts):
            out.append((p, (sample + i * step) / sr, (sample + (i + 1) * step) / sr))
    return audio, sr, out, unknown


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
    out, prev = [], 0.0
    for tok in res.stdout.split():
        name, sep, t = tok.rpartition(":")
        if not sep:
            continue
        try:
            end = float(t)
        except ValueError:
            continue
        out.append((flite_to_arpabet(name), prev, end))
        prev = end
    if not out:
        raise TTSError(f"flite voice '{voice}' printed no phone timings (is -psdur supported?)")
    return audio, sr, out, []


# --------------------------------------------------------------------------- festival (optional)

def festival_voices_installed() -> set[str]:
    """The FESTIVAL_VOICES installed here (festival on PATH and the voice folder present)."""
    if shutil.which("festival") is None:
        return set()
    roots = [Path("/usr/share/festival/voices"), Path("/usr/lib/festival/voices")]
    return {v for v in FESTIVAL_VOICES for r in roots if r.is_dir() and any(r.glob(f"*/{v}"))}


def _festival_synth(text: str, voice: str, stretch: float = 1.0):
    """festival -b on a script: the utterance's wave and its Segment relation (phone end times).
    stretch: duration factor (> 1 is slower)."""
    import soundfile as sf

    exe = shutil.which("festival")
    if exe is None:
        raise TTSError("festival not found; install the Debian packages festival festvox-us-slt-hts "
                       "festvox-kallpc16k festvox-kdlpc16k")
    quoted = text.replace("\\", " ").replace('"', "'")
    with tempfile.TemporaryDirectory(prefix="synth_festival_") as tmp:
        wav, segs, scm = (os.path.join(tmp, n) for n in ("out.wav", "out.segs", "run.scm"))
        Path(scm).write_text(f'(voice_{voice})\n(Parameter.set \'Duration_Stretch {stretch:.4f})\n(set! utt (Utterance Text "{quoted}"))\n(utt.synth utt)\n'
                             f'(utt.save.wave utt "{wav}" (quote riff))\n(utt.save.segs utt "{segs}")\n',
                             encoding="utf-8")
        try:
            res = subprocess.run([exe, "-b", scm], capture_output=True, text=True, timeout=120)
        except (OSError, subprocess.SubprocessError) as exc:
            raise TTSError(f"festival voice '{voice}' failed: {exc}") from None
        if res.returncode != 0 or not os.path.isfile(wav) or not os.path.isfile(segs):
            raise TTSError(f"festival voice '{voice}' failed (exit {res.returncode}): "
                           f"{(res.stderr + res.stdout).strip()[:200]}")
        audio, sr = sf.read(wav, dtype="float64", always_2d=True)
        lines = Path(segs).read_text(encoding="utf-8", errors="replace").splitlines()
    out, prev = [], 0.0
    for line in lines:
        parts = line.split()
        if len(parts) != 3:
            continue
        try:
            end = float(parts[0])
        except ValueError:
            continue
        out.append((flite_to_arpabet(parts[2]), prev, end))
        prev = end
    if not out:
        raise TTSError(f"festival voice '{voice}' gave no phone timings")
    return audio.mean(axis=1), sr, out, []


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


def available_voices(languages=None, festival_voices=None) -> list[Voice]:
    """The voices of :func:`all_voices` that this machine can speak with (warns about the rest).

    festival_voices: the festival voices that may speak (default: every installed one). A filter
    keeps all_voices' order, and with it a generator's draws; an unknown name is a ValueError.
    """
    if festival_voices is not None:
        unknown = sorted(set(festival_voices) - set(FESTIVAL_VOICES))
        if unknown:
            raise ValueError(f"unknown festival voices {unknown}; the generator knows "
                             f"{', '.join(FESTIVAL_VOICES)}")
    known = [v for v in all_voices(languages)
             if festival_voices is None or v.engine != "festival" or v.name in festival_voices]
    es = espeak_voices_installed([v.name for v in known if v.engine == "espeak"])
    if not es and any(v.engine == "espeak" for v in known):
        warnings.warn("synth: espeak-ng voices skipped: libespeak-ng not found or it accepts no "
                      "voice (install the Debian packages espeak-ng libespeak-ng1)", stacklevel=2)
    fl = flite_voices_installed() if any(v.engine == "flite" for v in known) else set()
    if not fl and any(v.engine == "flite" for v in known):
        warnings.warn("synth: flite voices skipped: flite not installed or lists no voices", stacklevel=2)
    fe = festival_voices_installed() if any(v.engine == "festival" for v in known) else set()
    out, missing = [], []
    for v in known:
        ok = v.name in {"espeak": es, "flite": fl, "festival": fe}[v.engine]
        (out if ok else missing).append(v)
    # festival is optional: its absence is not worth a warning
    partial = [m.id for m in missing if m.engine != "festival" and (es if m.engine == "espeak" else fl)]
    if partial:
        warnings.warn(f"synth: voices not available here, skipped: {', '.join(partial)}", stacklevel=2)
    return out


def synthesize(text: str, voice: Voice, rate: float = 1.0, pitch: float = 0.0, pitch_range: float = 0.0,
               info: dict | None = None):
    """Speak ``text``: returns (audio float64 [N] at 16 kHz, phones [(arpabet, start_s, end_s)]).

    rate: speed factor (1 = the voice's normal speed); pitch, pitch_range: -1..1 shifts of the espeak
    pitch and intonation range (flite and festival take the rate only).
    Raises TTSError if the voice fails.
    info: optional dict that receives ``unknown`` (espeak mnemonics that fell back to the default
    phone, with their durations), ``unknown_s`` and ``speech_s`` (seconds of non-pause phones).
    """
    if voice.engine == "espeak":
        audio, sr, raw, unknown = _espeak_synth(text, voice.name, rate=round(175 * rate),
                                                pitch=round(50 + 25 * pitch),
                                                prange=round(50 + 25 * pitch_range))
    elif voice.engine == "flite":
        audio, sr, raw, unknown = _flite_synth(text, voice.name, stretch=1.0 / rate)
    elif voice.engine == "festival":
        audio, sr, raw, unknown = _festival_synth(text, voice.name, stretch=1.0 / rate)
    else:
        raise TTSError(f"unknown engine {voice.engine}")
    if sr != SAMPLE_RATE:
        audio = resample(audio, int(sr), SAMPLE_RATE)
    dur = len(audio) / SAMPLE_RATE
    clean = []
    for p, s, e in raw:
        s, e = min(max(s, 0.0), dur), min(max(e, 0.0), dur)
        if e <= s:
            continue
        if clean and clean[-1][0] == p == "sil":
            clean[-1] = (p, clean[-1][1], e)
        else:
            clean.append((p, s, e))
    if info is not None:
        info["unknown"] = unknown
        info["unknown_s"] = float(sum(d for _, d in unknown))
        info["speech_s"] = float(sum(e - s for p, s, e in clean if p != "sil"))
    return audio, clean
