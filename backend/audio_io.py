"""Read speech audio for the model: any rate and channel count in, float32 mono at 16 kHz out.

Everything goes through soundfile (libsndfile), so there is no ffmpeg dependency; libsndfile
>= 1.1 (bundled with soundfile >= 0.12 wheels) also decodes MP3. Problems a user can fix
(missing file, wrong format, clip too short ...) raise `AudioError`, which the worker reports
as `bad_audio`.
"""
from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import soundfile as sf

from .errors import AudioError

SUPPORTED = ("WAV", "FLAC", "OGG", "MP3")
MIN_SECONDS = 0.1
_FORMATS_HINT = (
    "Supported formats: WAV, FLAC, OGG (Vorbis/Opus) and MP3; convert other files "
    "(m4a, aac, mp4 ...) to WAV first, e.g. `ffmpeg -i input.m4a output.wav`."
)


def _open(path: str | Path) -> sf.SoundFile:
    path = Path(path)
    if not path.exists():
        raise AudioError(f"audio file not found: {path}. Check the sound strip's file path.")
    if not path.is_file():
        raise AudioError(f"audio path is not a file: {path}. Point it at a sound file.")
    if path.suffix.lower() == ".mp3" and "MP3" not in sf.available_formats():
        # Old libsndfile builds say only "Format not recognised", which hides the real cause.
        raise AudioError(
            f"cannot read {path}: this soundfile/libsndfile ({sf.__libsndfile_version__}) has "
            "no MP3 support. Install soundfile>=0.12 (libsndfile>=1.1) or convert the file "
            "to WAV."
        )
    try:
        return sf.SoundFile(str(path))
    except (sf.SoundFileError, RuntimeError, OSError) as e:
        reason = getattr(e, "error_string", None) or str(e)
        raise AudioError(
            f"could not read {path} as audio ({reason}); the file may be corrupt or not a "
            f"sound file. {_FORMATS_HINT}"
        ) from e


def audio_duration(path: str | Path) -> float:
    """Length of the file in seconds, from its header (no decoding for WAV/FLAC)."""
    with _open(path) as f:
        return f.frames / f.samplerate if f.samplerate > 0 else 0.0


def _check_time(name: str, value: float) -> float:
    try:
        value = float(value)
    except (TypeError, ValueError):
        raise AudioError(f"{name} must be a number of seconds, got {value!r}") from None
    if not math.isfinite(value):
        raise AudioError(f"{name} must be a finite number of seconds, got {value}")
    return value


def _check_window(start, duration) -> tuple[float, float | None]:
    start = _check_time("start", start)
    if duration is not None:
        duration = _check_time("duration", duration)
        if duration <= 0:
            raise AudioError(f"duration must be positive, got {duration} s")
    return start, duration


def _window(start: float, duration: float | None, sr: int, total: int, name: str) -> tuple[int, int, int]:
    """(lead, first, count) in source samples for [start, start + duration) of `total` samples:
    `lead` samples of silence before the audio (negative start), then `count` samples from `first`.
    Leading silence is counted in source samples so it goes through the same resampler as the audio
    and the total length stays consistent."""
    lead = round(-start * sr) if start < 0 else 0
    first = round(start * sr) if start > 0 else 0
    if first >= total:
        raise AudioError(f"start {start:.3f} s is past the end of {name} ({total / sr:.3f} s long). "
                         "Check the sound strip's offset/trim.")
    want = total - first if duration is None else round(duration * sr) - lead
    if want <= 0:  # the whole window lies in the silence before the audio starts
        raise AudioError(f"the selected part ({start:.3f} s to {start + duration:.3f} s) ends before "
                         f"{name} begins, so it has no sound. Check the sound strip's offset/trim.")
    return lead, first, min(want, total - first)


def _check_length(seconds: float, name: str) -> None:
    if seconds < MIN_SECONDS:
        raise AudioError(f"the selected audio from {name} is only {seconds:.3f} s long; at least "
                         f"{MIN_SECONDS} s is needed. Use a longer clip or check start/duration.")


def load_audio(
    path: str | Path,
    start: float = 0.0,
    duration: float | None = None,
    target_sr: int = 16000,
) -> np.ndarray:
    """Return the part [start, start + duration) of `path` as float32 mono at `target_sr` Hz.

    A negative `start` pads leading silence (a Blender sound strip may begin before its audio);
    `duration=None` reads to the end, and a duration running past the end stops at the end.
    """
    start, duration = _check_window(start, duration)
    if not isinstance(target_sr, (int, np.integer)) or target_sr <= 0:
        raise AudioError(f"target sample rate must be a positive integer, got {target_sr!r}")
    target_sr = int(target_sr)
    path = Path(path)

    with _open(path) as f:
        sr, total = f.samplerate, f.frames
        if total <= 0:
            raise AudioError(
                f"{path} contains no audio samples (empty file). Use a file with speech."
            )
        lead, first, want = _window(start, duration, sr, total, path.name)
        try:
            # Seek + bounded read: a few seconds out of a long recording never loads it whole.
            if first:
                f.seek(first)
            data = f.read(want, dtype="float32", always_2d=True)
        except (sf.SoundFileError, RuntimeError, OSError) as e:
            reason = getattr(e, "error_string", None) or str(e)
            raise AudioError(
                f"could not decode {path} ({reason}); the file looks truncated or corrupt. "
                "Re-export it as WAV and try again."
            ) from e

    if data.shape[0] == 0:
        # The header promised samples the stream doesn't have (truncated file).
        raise AudioError(
            f"{path} has no decodable audio in the selected part; it may be truncated."
        )
    if not np.isfinite(data).all():
        raise AudioError(
            f"{path} contains NaN or infinite samples; the file is damaged. Re-export it."
        )
    _check_length((lead + data.shape[0]) / sr, path.name)

    mono = data.mean(axis=1, dtype=np.float32) if data.shape[1] > 1 else data[:, 0]
    if lead:
        mono = np.concatenate([np.zeros(lead, np.float32), mono])
    if sr != target_sr:
        # resample_poly low-passes at the lower Nyquist before decimating, so content above
        # target_sr/2 is removed instead of folding back as audible aliases.
        from scipy.signal import resample_poly  # ~1-3 s to import: only when resampling

        g = math.gcd(sr, target_sr)
        mono = resample_poly(mono, target_sr // g, sr // g)
    return np.ascontiguousarray(mono, dtype=np.float32)


def window_samples(samples, start: float = 0.0, duration: float | None = None,
                   sr: int = 16000) -> np.ndarray:
    """`load_audio`'s window [start, start + duration) of samples already in memory (mono at `sr`
    Hz), checked as a file's would be: float32, finite, at least MIN_SECONDS long."""
    start, duration = _check_window(start, duration)
    x = np.asarray(samples)
    if x.ndim != 1 or not np.issubdtype(x.dtype, np.floating):
        raise AudioError(f"audio samples must be a 1-D float array (mono, {sr} Hz), got "
                         f"{x.dtype} of shape {x.shape}")
    lead, first, want = _window(start, duration, sr, len(x), "the audio")
    part = x[first:first + want]
    if not np.isfinite(part).all():  # as load_audio: only the part that will be animated
        raise AudioError("the audio samples contain NaN or infinite values")
    _check_length((lead + want) / sr, "the audio")
    return np.concatenate([np.zeros(lead, np.float32), part.astype(np.float32)])


def save_wav(path: str | Path, samples, sr: int, subtype: str = "FLOAT") -> None:
    """Write samples ([N] mono or [N, C]) as WAV; float by default so round-trips are exact."""
    samples = np.asarray(samples, dtype=np.float32)
    if samples.ndim not in (1, 2):
        raise AudioError(f"samples must be [N] or [N, channels], got shape {samples.shape}")
    sf.write(str(path), samples, int(sr), format="WAV", subtype=subtype)
