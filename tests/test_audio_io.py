"""backend.audio_io on real files written with soundfile, plus one real speech clip."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

from backend.audio_io import audio_duration, load_audio, save_wav, window_samples
from backend.errors import AudioError

REPO = Path(__file__).resolve().parents[1]
SPEECH = REPO / ".." / "shared" / "data" / "speech"
HAS_MP3 = "MP3" in sf.available_formats()


def tone(freq, seconds, sr, amp=0.5):
    t = np.arange(round(seconds * sr)) / sr
    return (amp * np.sin(2 * np.pi * freq * t)).astype(np.float32)


def peak_hz(x, sr):
    spec = np.abs(np.fft.rfft(x * np.hanning(len(x))))
    return np.fft.rfftfreq(len(x), 1 / sr)[np.argmax(spec)]


def band_energy(x, sr, lo, hi):
    spec = np.abs(np.fft.rfft(x * np.hanning(len(x)))) ** 2
    f = np.fft.rfftfreq(len(x), 1 / sr)
    return spec[(f >= lo) & (f <= hi)].sum() / spec.sum()


def ramp_file(tmp_path, sr=16000, seconds=2.0):
    """Sample i holds i / N: any output sample tells exactly where in the file it came from."""
    n = round(sr * seconds)
    path = tmp_path / "ramp.wav"
    save_wav(path, np.arange(n, dtype=np.float32) / n, sr)
    return path, n


# --- formats and resampling -------------------------------------------------------------------

FORMATS = ["wav", "flac", "ogg"] + (["mp3"] if HAS_MP3 else [])


@pytest.mark.parametrize("ext", FORMATS)
def test_formats_read_back_a_tone(tmp_path, ext):
    path = tmp_path / f"tone.{ext}"
    sf.write(str(path), tone(440, 1.0, 16000), 16000)
    x = load_audio(path)
    assert x.dtype == np.float32 and x.ndim == 1
    assert abs(len(x) - 16000) <= 1  # lossy codecs keep the length too (libsndfile trims padding)
    assert abs(peak_hz(x, 16000) - 440) < 3
    assert abs(audio_duration(path) - 1.0) < 1e-3


def test_mp3_without_libsndfile_support_says_so(tmp_path, monkeypatch):
    path = tmp_path / "voice.mp3"
    path.write_bytes(b"ID3" + bytes(100))
    formats = {k: v for k, v in sf.available_formats().items() if k != "MP3"}
    monkeypatch.setattr(sf, "available_formats", lambda: formats)
    msg = err(path)
    assert "no MP3 support" in msg and "soundfile>=0.12" in msg and "WAV" in msg


def test_stereo_44k1_downmixed_resampled_no_alias(tmp_path):
    sr = 44100
    # 12 kHz is above the 8 kHz Nyquist of the output; without a proper low-pass it would fold
    # to 16 - 12 = 4 kHz.
    left = tone(1000, 1.0, sr, 0.4) + tone(12000, 1.0, sr, 0.4)
    right = tone(12000, 1.0, sr, 0.4)  # the 1 kHz tone only on the left: mean halves it
    path = tmp_path / "stereo.wav"
    save_wav(path, np.stack([left, right], axis=1), sr)
    x = load_audio(path)
    assert abs(len(x) - 16000) <= 1
    assert abs(peak_hz(x, 16000) - 1000) < 3
    mid = x[2000:-2000]
    assert abs(np.sqrt(2) * mid.std() - 0.2) < 0.01  # 1 kHz at amplitude (0.4 + 0) / 2
    assert band_energy(x, 16000, 3800, 4200) < 1e-4  # alias of 12 kHz removed


@pytest.mark.parametrize("sr", [8000, 22050, 48000, 96000, 11025])
def test_other_rates_give_correct_length_and_pitch(tmp_path, sr):
    path = tmp_path / "t.wav"
    save_wav(path, tone(300, 0.75, sr), sr)
    x = load_audio(path)
    assert abs(len(x) - 0.75 * 16000) <= 1
    assert abs(peak_hz(x, 16000) - 300) < 3


def test_other_target_rate(tmp_path):
    path = tmp_path / "t.wav"
    save_wav(path, tone(500, 1.0, 44100), 44100)
    x = load_audio(path, target_sr=22050)
    assert abs(len(x) - 22050) <= 1
    assert abs(peak_hz(x, 22050) - 500) < 3


def test_silence_is_valid(tmp_path):
    path = tmp_path / "silence.wav"
    save_wav(path, np.zeros((48000, 2), np.float32), 48000)
    x = load_audio(path)
    assert len(x) == 16000 and not x.any()


# --- trimming --------------------------------------------------------------------------------

def test_start_and_duration_pick_the_right_samples(tmp_path):
    path, n = ramp_file(tmp_path)
    x = load_audio(path, start=0.5, duration=0.25)
    assert len(x) == 4000
    np.testing.assert_allclose(x, np.arange(8000, 12000) / n, atol=1e-7)


def test_only_the_selected_part_is_read(tmp_path, monkeypatch):
    path, _ = ramp_file(tmp_path)
    asked = []
    read = sf.SoundFile.read

    def spy(self, frames=-1, *a, **k):
        asked.append(frames)
        return read(self, frames, *a, **k)

    monkeypatch.setattr(sf.SoundFile, "read", spy)
    load_audio(path, start=1.0, duration=0.5)
    assert asked == [8000]


def test_trimming_with_resampling(tmp_path):
    sr = 48000
    path, n = ramp_file(tmp_path, sr=sr)
    x = load_audio(path, start=0.5, duration=1.0)
    assert abs(len(x) - 16000) <= 1
    # Away from the edges the resampled ramp is the ramp itself, at 16 kHz times.
    k = np.arange(1000, 15000)
    np.testing.assert_allclose(x[k], (0.5 + k / 16000) * sr / n, atol=2e-3)


def test_duration_past_the_end_stops_at_the_end(tmp_path):
    path, n = ramp_file(tmp_path)
    x = load_audio(path, start=1.5, duration=10.0)
    assert len(x) == 8000 and x[-1] == pytest.approx((n - 1) / n)


def test_negative_start_pads_leading_silence(tmp_path):
    path, n = ramp_file(tmp_path)
    x = load_audio(path, start=-0.25, duration=0.75)
    assert len(x) == 12000
    assert not x[:4000].any()
    np.testing.assert_allclose(x[4000:], np.arange(8000) / n, atol=1e-7)
    assert len(load_audio(path, start=-0.5)) == 8000 + n  # no duration: pad, then to the end


@pytest.mark.parametrize("start,duration", [(0.0, None), (0.5, 0.25), (1.5, 10.0), (-0.25, 0.75),
                                            (-0.5, None)])
def test_samples_in_memory_take_the_same_window_as_the_file(tmp_path, start, duration):
    path, n = ramp_file(tmp_path)
    np.testing.assert_array_equal(window_samples(np.arange(n, dtype=np.float32) / n, start, duration),
                                  load_audio(path, start=start, duration=duration))


@pytest.mark.parametrize("samples,kw,words", [
    (np.zeros((100, 2), np.float32), {}, "1-D float"),
    (np.zeros(16000, np.int16), {}, "1-D float"),
    (np.r_[np.zeros(16000), np.nan], {}, "NaN"),
    (np.zeros(16000), {"start": 2.0}, "past the end"),
    (np.zeros(16000), {"start": -1.0, "duration": 0.5}, "ends before"),
    (np.zeros(800), {}, "at least"),
    (np.zeros(16000), {"duration": 0.0}, "positive"),
])
def test_bad_samples_in_memory_are_refused(samples, kw, words):
    with pytest.raises(AudioError, match=words):
        window_samples(samples, **kw)


# --- errors ----------------------------------------------------------------------------------

def err(path, **kw) -> str:
    with pytest.raises(AudioError) as e:
        load_audio(path, **kw)
    assert e.value.code == "bad_audio"
    return str(e.value)


def test_missing_file(tmp_path):
    msg = err(tmp_path / "nope.wav")
    assert "not found" in msg and "nope.wav" in msg
    with pytest.raises(AudioError, match="not found"):
        audio_duration(tmp_path / "nope.wav")


def test_directory(tmp_path):
    assert "not a file" in err(tmp_path)


@pytest.mark.parametrize("name,content", [
    ("garbage.wav", b"this is not audio at all " * 40),
    ("notes.mp3", b"hello"),
    ("zero.flac", b""),
    ("voice.m4a", b"\x00\x00\x00\x20ftypM4A " + bytes(200)),
])
def test_unreadable_files(tmp_path, name, content):
    path = tmp_path / name
    path.write_bytes(content)
    msg = err(path)
    assert "could not read" in msg and name in msg
    assert "WAV" in msg and "MP3" in msg and "FLAC" in msg  # tells the user what does work
    with pytest.raises(AudioError, match="could not read"):
        audio_duration(path)


def test_empty_audio(tmp_path):
    path = tmp_path / "empty.wav"
    save_wav(path, np.zeros(0, np.float32), 16000)
    assert "no audio samples" in err(path)
    assert audio_duration(path) == 0.0


def test_too_short(tmp_path):
    path = tmp_path / "blip.wav"
    save_wav(path, tone(440, 0.05, 16000), 16000)
    msg = err(path)
    assert "0.050 s" in msg and "at least 0.1 s" in msg
    path, _ = ramp_file(tmp_path)
    assert "at least 0.1 s" in err(path, start=1.0, duration=0.05)
    assert "at least 0.1 s" in err(path, start=1.95)  # only 0.05 s left after start


def test_start_past_end(tmp_path):
    path, _ = ramp_file(tmp_path)
    msg = err(path, start=5.0)
    assert "past the end" in msg and "2.000 s" in msg
    assert "past the end" in err(path, start=2.0)


def test_window_entirely_before_audio(tmp_path):
    path, _ = ramp_file(tmp_path)
    assert "no sound" in err(path, start=-3.0, duration=1.0)


def test_nan_samples(tmp_path):
    x = tone(440, 1.0, 16000)
    x[123] = np.nan
    path = tmp_path / "nan.wav"
    save_wav(path, x, 16000)
    assert "NaN" in err(path)


@pytest.mark.parametrize("kw,words", [
    ({"duration": 0.0}, "duration must be positive"),
    ({"duration": -1.0}, "duration must be positive"),
    ({"start": float("nan")}, "finite"),
    ({"start": "soon"}, "number of seconds"),
    ({"target_sr": 0}, "sample rate"),
    ({"target_sr": 16000.5}, "sample rate"),
])
def test_bad_arguments(tmp_path, kw, words):
    path, _ = ramp_file(tmp_path)
    assert words in err(path, **kw)


# --- helpers and real data -------------------------------------------------------------------

def test_save_wav_round_trip(tmp_path):
    x = np.random.default_rng(0).uniform(-1, 1, (4410, 2)).astype(np.float32)
    path = tmp_path / "rt.wav"
    save_wav(path, x, 44100)
    back, sr = sf.read(str(path), dtype="float32")
    assert sr == 44100 and np.array_equal(back, x)
    assert audio_duration(path) == pytest.approx(0.1)


def test_real_speech_clip():
    clips = sorted(SPEECH.glob("*.wav")) if SPEECH.is_dir() else []
    if not clips:
        pytest.skip(f"no shared speech clips at {SPEECH.resolve()} (../shared is absent)")
    path = clips[0]
    x = load_audio(path)
    assert x.dtype == np.float32 and x.ndim == 1 and np.isfinite(x).all()
    assert abs(len(x) - audio_duration(path) * 16000) <= 1
    assert np.sqrt(np.mean(x**2)) > 1e-3  # it is speech, not silence
    part = load_audio(path, start=1.0, duration=1.0)
    assert len(part) == 16000
    if sf.info(str(path)).samplerate == 16000:  # no resampler edge effects: exact slice
        np.testing.assert_array_equal(part, x[16000:32000])
