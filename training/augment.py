"""Audio augmentation for training (numpy/scipy only), so a model trained on clean TTS hears
something closer to real recordings: another vocal tract (formants and pitch scaled), gain, noise,
room reverb, band limits, codec artefacts, and speed perturbation (which also time-scales the motion
target).

Every effect takes the random generator it must use, so the trainer's seeded rng makes a run
reproducible. Audio is mono float at 16 kHz; every output is finite and within [-1, 1].

`augment_audio(wav, cfg, rng)` (cfg: training.config.AugmentSection, the [augment] section)
applies the configured chain, each effect with its probability:
vocal-tract warp (the speaker) -> reverb (the room) -> noise (in the room) -> a band limit (the
channel) -> a codec -> gain.
Speed perturbation is separate because it changes the clip's length: the trainer resamples the
audio with `speed_perturb` and reads the motion at `speed_frame_positions` (fractional source
frames, linearly interpolated), so frames = floor(duration * fps) + 1 still holds.
"""
from __future__ import annotations

from fractions import Fraction

import numpy as np
from scipy import signal

SAMPLE_RATE = 16000


# --------------------------------------------------------------------------- measures

def active_power(x: np.ndarray, sr: int = SAMPLE_RATE, floor_db: float = 40.0) -> float:
    """Mean power of the 20 ms frames within floor_db of the loudest (speech, not the silences)."""
    x = np.asarray(x, np.float64)
    n = max(1, int(0.02 * sr))
    k = len(x) // n
    if k == 0:
        return float(np.mean(x ** 2)) if len(x) else 0.0
    p = (x[:k * n].reshape(k, n) ** 2).mean(1)
    top = p.max()
    if top <= 0:
        return 0.0
    return float(p[p >= top * 10 ** (-floor_db / 10)].mean())


def _finish(x: np.ndarray) -> np.ndarray:
    """float32, finite, and scaled down (not clipped) if its peak exceeds 0.99."""
    x = np.nan_to_num(np.asarray(x, np.float64), nan=0.0, posinf=0.0, neginf=0.0)
    peak = float(np.abs(x).max()) if len(x) else 0.0
    if peak > 0.99:
        x = x * (0.99 / peak)
    return x.astype(np.float32)


# --------------------------------------------------------------------------- effects

def gain(x: np.ndarray, db: float) -> np.ndarray:
    return _finish(np.asarray(x, np.float64) * 10 ** (db / 20))


def noise(n: int, rng: np.random.Generator, pink: bool = False) -> np.ndarray:
    """Unit-power white or pink (1/f power) noise."""
    w = rng.standard_normal(n)
    if pink and n > 1:
        spec = np.fft.rfft(w)
        f = np.arange(len(spec), dtype=np.float64)
        f[0] = 1.0
        w = np.fft.irfft(spec / np.sqrt(f), n)
    return w / (np.sqrt(np.mean(w ** 2)) or 1.0)


def add_noise(x: np.ndarray, snr_db: float, rng: np.random.Generator, pink: bool = False,
              sr: int = SAMPLE_RATE) -> np.ndarray:
    """x plus noise at snr_db below x's active power (see active_power)."""
    x = np.asarray(x, np.float64)
    p = active_power(x, sr)
    if p <= 0:
        return _finish(x)
    return _finish(x + noise(len(x), rng, pink) * np.sqrt(p / 10 ** (snr_db / 10)))


def room_impulse(rt60: float, rng: np.random.Generator, sr: int = SAMPLE_RATE) -> np.ndarray:
    """A synthetic room: noise under an exponential decay reaching -60 dB at rt60 seconds."""
    n = max(2, int(1.2 * rt60 * sr))
    t = np.arange(n) / sr
    ir = rng.standard_normal(n) * np.exp(-6.9078 * t / rt60)
    ir[0] = 0.0
    return ir / np.sqrt(np.sum(ir ** 2))


def reverb(x: np.ndarray, rt60: float, wet: float, rng: np.random.Generator,
           sr: int = SAMPLE_RATE) -> np.ndarray:
    """(1 - wet) * dry + wet * (x convolved with a room impulse, at x's RMS). Same length, no delay."""
    x = np.asarray(x, np.float64)
    rev = signal.fftconvolve(x, room_impulse(rt60, rng, sr))[: len(x)]
    rx, rr = np.sqrt(np.mean(x ** 2)), np.sqrt(np.mean(rev ** 2))
    if rr > 0:
        rev *= rx / rr
    return _finish((1 - wet) * x + wet * rev)


def _sosfiltfilt(sos, x):
    x = np.asarray(x, np.float64)
    if len(x) <= 3 * (2 * len(sos) + 1):  # too short for filtfilt's padding
        return signal.sosfilt(sos, x)
    return signal.sosfiltfilt(sos, x)


def telephone(x: np.ndarray, sr: int = SAMPLE_RATE) -> np.ndarray:
    """300-3400 Hz band-pass (zero phase: no delay)."""
    return _finish(_sosfiltfilt(signal.butter(4, [300, 3400], "bandpass", fs=sr, output="sos"), x))


def lowpass(x: np.ndarray, cutoff_hz: float, sr: int = SAMPLE_RATE) -> np.ndarray:
    """Butterworth low-pass (zero phase)."""
    cutoff_hz = min(float(cutoff_hz), 0.45 * sr)
    return _finish(_sosfiltfilt(signal.butter(6, cutoff_hz, "lowpass", fs=sr, output="sos"), x))


def mu_law(x: np.ndarray, bits: int = 8, mu: float = 255.0) -> np.ndarray:
    """G.711-like companding and quantisation to 2**bits levels."""
    x = np.clip(np.asarray(x, np.float64), -1.0, 1.0)
    y = np.sign(x) * np.log1p(mu * np.abs(x)) / np.log1p(mu)
    half = 2 ** (bits - 1) - 1  # 255 levels, zero kept at zero
    y = np.round(y * half) / half
    return _finish(np.sign(y) * np.expm1(np.abs(y) * np.log1p(mu)) / mu)


def narrowband(x: np.ndarray, sr: int = SAMPLE_RATE, low_sr: int = 8000) -> np.ndarray:
    """Down to low_sr and back (what an 8 kHz codec path leaves): same length."""
    x = np.asarray(x, np.float64)
    f = Fraction(low_sr, sr).limit_denominator(100)
    y = signal.resample_poly(signal.resample_poly(x, f.numerator, f.denominator), f.denominator, f.numerator)
    y = y[: len(x)]
    if len(y) < len(x):
        y = np.pad(y, (0, len(x) - len(y)))
    return _finish(y)


def vtlp_warp(f_hz: np.ndarray, alpha: float, sr: int = SAMPLE_RATE, f_hi: float = 4800.0) -> np.ndarray:
    """Vocal-tract-length perturbation's frequency map (Jaitly & Hinton 2013): f -> alpha * f up to
    a knee, then a straight line to Nyquist so the band stays [0, sr/2]. alpha > 1 sounds like a
    shorter tract (higher formants)."""
    nyq = sr / 2
    knee = f_hi * min(alpha, 1.0) / alpha
    return np.interp(f_hz, [0.0, knee, nyq], [0.0, alpha * knee, nyq])


def vocal_tract_warp(x: np.ndarray, alpha: float, sr: int = SAMPLE_RATE, n_fft: int = 512,
                     hop: int = 128) -> np.ndarray:
    """The same words from another vocal tract: every frequency moved by vtlp_warp (formants and
    harmonics alike), timing unchanged, so the motion target stays aligned.

    Why: the training voices are variants of a few synthesizers, real speakers differ most in formant
    scale, and a log-mel encoder that keys on one voice's formant positions misreads the next one.
    Magnitudes are read at the warped frequency; phases are re-accumulated from each source bin's
    instantaneous frequency, warped (a phase vocoder), so harmonics stay harmonics. Same length;
    the active level is kept."""
    x = np.asarray(x, np.float64)
    if len(x) < n_fft or abs(alpha - 1.0) < 1e-6:
        return _finish(x)
    _, _, z = signal.stft(x, sr, nperseg=n_fft, noverlap=n_fft - hop)
    bins = np.arange(z.shape[0], dtype=np.float64)
    df = sr / n_fft
    # instantaneous frequency (Hz) of every source bin and frame, from the phase advance per hop
    ph = np.angle(z)
    adv = np.diff(ph, axis=1, prepend=ph[:, :1]) - 2 * np.pi * bins[:, None] * hop / n_fft
    adv = (adv + np.pi) % (2 * np.pi) - np.pi
    inst = (bins[:, None] + adv * n_fft / (2 * np.pi * hop)) * df
    # target bin k holds what the source had at inverse-warped frequency
    src = np.interp(bins * df, vtlp_warp(bins * df, alpha, sr), bins * df) / df
    lo = np.clip(np.floor(src).astype(np.int64), 0, len(bins) - 1)
    hi = np.minimum(lo + 1, len(bins) - 1)
    a = (src - lo)[:, None]
    mag = np.abs(z)
    mag_new = (1 - a) * mag[lo] + a * mag[hi]
    inst_new = vtlp_warp(inst[np.clip(np.rint(src).astype(np.int64), 0, len(bins) - 1)], alpha, sr)
    phase = np.cumsum(2 * np.pi * inst_new * hop / sr, axis=1)
    _, y = signal.istft(mag_new * np.exp(1j * phase), sr, nperseg=n_fft, noverlap=n_fft - hop)
    y = y[: len(x)] if len(y) >= len(x) else np.pad(y, (0, len(x) - len(y)))
    p_in, p_out = active_power(x, sr), active_power(y, sr)
    if p_out > 0:
        y = y * np.sqrt(p_in / p_out)
    return _finish(y)


def speed_perturb(x: np.ndarray, factor: float) -> np.ndarray:
    """Play x `factor` times faster (pitch moves with it): length round(len(x) / factor)."""
    x = np.asarray(x, np.float64)
    f = Fraction(float(factor)).limit_denominator(200)  # up/down as small integers
    y = signal.resample_poly(x, f.denominator, f.numerator)
    n = int(round(len(x) / float(f)))
    y = y[:n] if len(y) >= n else np.pad(y, (0, n - len(y)))
    return _finish(y)


def exact_factor(factor: float) -> float:
    """The factor speed_perturb really applies (its rational approximation)."""
    return float(Fraction(float(factor)).limit_denominator(200))


def n_frames(num_samples: int, fps: float, sr: int = SAMPLE_RATE) -> int:
    """frames = floor(duration * fps) + 1 (the synthetic data's rule and the log-mel encoder's)."""
    return int(np.floor(num_samples / sr * fps + 1e-6)) + 1


def speed_frame_positions(num_samples_new: int, fps: float, factor: float, n_src_frames: int,
                          sr: int = SAMPLE_RATE) -> np.ndarray:
    """Fractional source frame of every frame of the sped-up clip (frame j at time j / fps of the
    new audio was at time j * factor / fps of the original), clipped to the source's frames."""
    j = np.arange(n_frames(num_samples_new, fps, sr), dtype=np.float64)
    return np.clip(j * exact_factor(factor), 0.0, n_src_frames - 1)


def interpolate_frames(motion, positions: np.ndarray) -> np.ndarray:
    """motion [T, V, 3] (an array or a memory map) read at fractional frame positions -> float32."""
    positions = np.asarray(positions, np.float64)
    i0 = np.floor(positions).astype(np.int64)
    i1 = np.minimum(i0 + 1, motion.shape[0] - 1)
    lo, hi = int(i0.min()), int(i1.max()) + 1
    block = np.asarray(motion[lo:hi], dtype=np.float32)
    a = (positions - i0).astype(np.float32)[:, None, None]
    return (1 - a) * block[i0 - lo] + a * block[i1 - lo]


# --------------------------------------------------------------------------- the chain

def augment_audio(x: np.ndarray, cfg, rng: np.random.Generator,
                  sr: int = SAMPLE_RATE) -> tuple[np.ndarray, list[str]]:
    """The configured effects, each with its probability; returns (audio, names of what ran).
    The length never changes (speed perturbation is done separately)."""
    x = np.asarray(x, np.float32)
    done = []
    if rng.random() < cfg.vtlp_prob:
        x = vocal_tract_warp(x, float(np.exp(rng.uniform(*np.log(cfg.vtlp_alpha)))), sr)
        done.append("vtlp")
    if rng.random() < cfg.reverb_prob:
        x = reverb(x, rng.uniform(*cfg.reverb_rt60), rng.uniform(*cfg.reverb_wet), rng, sr)
        done.append("reverb")
    if rng.random() < cfg.noise_prob:
        pink = bool(rng.random() < cfg.noise_pink)
        x = add_noise(x, rng.uniform(*cfg.noise_snr_db), rng, pink, sr)
        done.append("pink" if pink else "white")
    if rng.random() < cfg.telephone_prob:
        x = telephone(x, sr)
        done.append("telephone")
    elif rng.random() < cfg.lowpass_prob:
        x = lowpass(x, rng.uniform(*cfg.lowpass_hz), sr)
        done.append("lowpass")
    if rng.random() < cfg.codec_prob:
        if rng.random() < 0.5:
            x = mu_law(x)
            done.append("mulaw")
        else:
            x = narrowband(x, sr)
            done.append("8k")
    if rng.random() < cfg.gain_prob:
        x = gain(x, rng.uniform(-cfg.gain_db, cfg.gain_db))
        done.append("gain")
    return _finish(x), done
