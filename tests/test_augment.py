"""Audio augmentation (training/augment.py): SNR, lengths and frame alignment, determinism, range."""
import numpy as np
import pytest

from training import augment as A
from training.config import AugmentSection, ConfigError, load_config

SR = 16000


def speechlike(seconds=2.0, seed=0):
    """Tone bursts with silences between them, peak 0.8."""
    rng = np.random.default_rng(seed)
    t = np.arange(int(seconds * SR)) / SR
    env = (np.sin(2 * np.pi * 1.5 * t) > 0.2).astype(np.float64)
    x = env * (np.sin(2 * np.pi * 180 * t) + 0.5 * np.sin(2 * np.pi * 1100 * t) + 0.05 * rng.standard_normal(len(t)))
    return (0.8 * x / np.abs(x).max()).astype(np.float32)


ALL_ON = AugmentSection(vtlp_prob=1.0, gain_prob=1.0, noise_prob=1.0, reverb_prob=1.0, telephone_prob=0.5, lowpass_prob=1.0,
                        codec_prob=1.0, speed_prob=1.0)


@pytest.mark.parametrize("pink", [False, True])
@pytest.mark.parametrize("snr", [15.0, 25.0, 40.0])
def test_noise_snr(snr, pink):
    x = speechlike()
    y = A.add_noise(x, snr, np.random.default_rng(3), pink=pink)
    assert y.shape == x.shape and y.dtype == np.float32
    n = y.astype(np.float64) - x
    measured = 10 * np.log10(A.active_power(x) / np.mean(n ** 2))
    assert measured == pytest.approx(snr, abs=0.3)


def test_pink_noise_has_more_low_frequencies():
    w = A.noise(SR * 2, np.random.default_rng(0), pink=False)
    p = A.noise(SR * 2, np.random.default_rng(0), pink=True)
    for z in (w, p):
        assert np.mean(z ** 2) == pytest.approx(1.0, rel=1e-6)

    def low_share(z):
        s = np.abs(np.fft.rfft(z)) ** 2
        f = np.fft.rfftfreq(len(z), 1 / SR)
        return s[f < 500].sum() / s.sum()

    assert low_share(p) > 5 * low_share(w)


@pytest.mark.parametrize("factor", [0.9, 0.937, 1.0, 1.05, 1.1])
@pytest.mark.parametrize("seconds", [1.0, 2.7531])
def test_speed_perturbation_keeps_frame_alignment(factor, seconds):
    fps = 30.0
    x = speechlike(seconds)
    T = A.n_frames(len(x), fps)
    y = A.speed_perturb(x, factor)
    assert len(y) == int(round(len(x) / A.exact_factor(factor)))
    assert abs(A.exact_factor(factor) - factor) < 1e-3
    pos = A.speed_frame_positions(len(y), fps, factor, T)
    assert len(pos) == A.n_frames(len(y), fps)  # frames = floor(duration * fps) + 1
    assert pos[0] == 0.0 and pos.max() <= T - 1 and np.all(np.diff(pos) >= 0)
    # frame j of the new clip is at time j / fps of y, which was j * factor / fps of x
    j = len(pos) // 2
    assert pos[j] == pytest.approx(j * A.exact_factor(factor))
    # the sped-up audio is the same signal, time-scaled: its envelope lines up with the original's
    env = lambda z: np.abs(z[: len(z) // 160 * 160]).reshape(-1, 160).mean(1)  # noqa: E731
    ex, ey = env(x), env(y)
    src = np.clip(np.round(np.arange(len(ey)) * A.exact_factor(factor)).astype(int), 0, len(ex) - 1)
    assert np.corrcoef(ex[src], ey)[0, 1] > 0.9


@pytest.mark.parametrize("alpha", [0.87, 0.95, 1.1, 1.15])
def test_vocal_tract_warp_moves_every_frequency_and_keeps_the_timing(alpha):
    t = np.arange(2 * SR) / SR
    burst = (t > 0.5) & (t < 1.5)
    x = (0.5 * burst * (np.sin(2 * np.pi * 400 * t) + 0.5 * np.sin(2 * np.pi * 1500 * t))).astype(np.float32)
    y = A.vocal_tract_warp(x, alpha)
    assert y.dtype == np.float32 and len(y) == len(x)
    seg = y[int(0.7 * SR): int(1.3 * SR)].astype(np.float64)
    spec = np.abs(np.fft.rfft(seg * np.hanning(len(seg)))) ** 2
    f = np.fft.rfftfreq(len(seg), 1 / SR)
    near = lambda hz: spec[np.abs(f - hz) < 6].sum()  # noqa: E731
    for hz in (400.0, 1500.0):  # below the knee both harmonics scale by alpha, cleanly
        moved = float(A.vtlp_warp(np.array(hz), alpha))
        assert moved == pytest.approx(alpha * hz)
        assert near(moved) > 100 * near(hz)
    assert (near(400 * alpha) + near(1500 * alpha)) > 0.9 * spec.sum()
    # the timing does not move (the motion target stays aligned): the onset within a hop (8 ms)
    env = np.convolve(y.astype(np.float64) ** 2, np.ones(160) / 160, "same")
    assert np.argmax(env > 0.5 * env.max()) / SR == pytest.approx(0.5, abs=0.008)
    assert A.active_power(y) == pytest.approx(A.active_power(x), rel=0.1)
    assert np.abs(y[: int(0.45 * SR)]).max() < 0.01  # the silence before stays silent


def test_vtlp_warp_is_monotone_and_keeps_the_band():
    f = np.linspace(0, SR / 2, 1001)
    for alpha in (0.87, 1.0, 1.15):
        w = A.vtlp_warp(f, alpha)
        assert w[0] == 0.0 and w[-1] == pytest.approx(SR / 2) and np.all(np.diff(w) > 0)
    assert np.array_equal(A.vocal_tract_warp(np.zeros(100, np.float32), 1.1), np.zeros(100, np.float32))


def test_interpolate_frames_linear_and_on_memory_maps(tmp_path):
    motion = np.arange(5 * 2 * 3, dtype=np.float32).reshape(5, 2, 3)
    np.save(tmp_path / "m.npy", motion)
    mm = np.load(tmp_path / "m.npy", mmap_mode="r")
    out = A.interpolate_frames(mm, np.array([0.0, 1.5, 4.0]))
    assert out.dtype == np.float32 and out.shape == (3, 2, 3)
    assert np.allclose(out[0], motion[0]) and np.allclose(out[1], 0.5 * (motion[1] + motion[2]))
    assert np.allclose(out[2], motion[4])


def test_chain_is_deterministic_finite_and_in_range():
    x = speechlike()
    a, done_a = A.augment_audio(x, ALL_ON, np.random.default_rng(7))
    b, done_b = A.augment_audio(x, ALL_ON, np.random.default_rng(7))
    c, _ = A.augment_audio(x, ALL_ON, np.random.default_rng(8))
    assert done_a == done_b and np.array_equal(a, b) and not np.array_equal(a, c)
    assert done_a[0] == "vtlp" and "reverb" in done_a and "gain" in done_a and len(a) == len(x)
    for seed in range(20):
        y, _ = A.augment_audio(x, ALL_ON, np.random.default_rng(seed))
        assert y.dtype == np.float32 and len(y) == len(x)
        assert np.isfinite(y).all() and np.abs(y).max() <= 1.0
    off, done = A.augment_audio(x, AugmentSection(), np.random.default_rng(0))
    assert done == [] and np.array_equal(off, x)


def test_every_effect_stays_in_range_on_loud_input():
    rng = np.random.default_rng(0)
    x = np.clip(rng.standard_normal(SR) * 0.7, -1, 1).astype(np.float32)  # full-scale noise
    outs = [A.gain(x, 10.0), A.add_noise(x, 15, rng), A.reverb(x, 0.6, 0.6, rng), A.telephone(x),
            A.lowpass(x, 3000), A.mu_law(x), A.narrowband(x), A.vocal_tract_warp(x, 0.87), A.vocal_tract_warp(x, 1.15),
            A.speed_perturb(x, 0.9), A.speed_perturb(x, 1.1)]
    for y in outs:
        assert np.isfinite(y).all() and np.abs(y).max() <= 1.0
    quiet = x * 0.1
    assert np.abs(A.gain(quiet, 10.0)).max() == pytest.approx(np.abs(quiet).max() * 10 ** 0.5, rel=1e-4)  # +10 dB
    assert np.abs(A.gain(x, 10.0)).max() == pytest.approx(0.99)  # scaled down, not clipped
    assert np.all(A.mu_law(np.zeros(100)) == 0)  # silence stays silent
    assert len(A.narrowband(x[:1001])) == 1001 and len(A.telephone(x[:10])) == 10  # short inputs


def test_band_limits_remove_what_they_should():
    t = np.arange(SR) / SR
    hi = (0.5 * np.sin(2 * np.pi * 6000 * t)).astype(np.float32)
    lo = (0.5 * np.sin(2 * np.pi * 100 * t)).astype(np.float32)
    mid = (0.5 * np.sin(2 * np.pi * 1000 * t)).astype(np.float32)
    rms = lambda z: float(np.sqrt(np.mean(z[2000:-2000] ** 2)))  # noqa: E731
    assert rms(A.telephone(hi)) < 0.01 * rms(hi) and rms(A.telephone(lo)) < 0.1 * rms(lo)
    assert rms(A.telephone(mid)) > 0.9 * rms(mid)
    assert rms(A.lowpass(hi, 3000)) < 0.01 * rms(hi) and rms(A.narrowband(hi)) < 0.05 * rms(hi)
    assert rms(A.narrowband(mid)) > 0.9 * rms(mid)


def test_reverb_decays_as_rt60_says():
    rng = np.random.default_rng(0)
    ir = A.room_impulse(0.4, rng)
    e = ir ** 2
    first = e[: int(0.05 * SR)].sum()
    later = e[int(0.4 * SR): int(0.45 * SR)].sum()  # 60 dB down at rt60
    assert 10 * np.log10(later / first) == pytest.approx(-60, abs=6)


def test_augment_config_section():
    cfg = load_config(None, ["augment.noise_prob=0.5", "augment.speed=[0.95, 1.05]", "augment.vtlp_alpha=[0.9, 1.1]"])
    assert cfg.augment.noise_prob == 0.5 and cfg.augment.speed == [0.95, 1.05] and cfg.augment.vtlp_alpha == [0.9, 1.1]
    assert load_config(None, ["augment.vtlp_prob=0.5"]).augment.any_audio
    assert not load_config(None).augment.any_audio and load_config(None).augment.speed_prob == 0.0
    with pytest.raises(ConfigError, match="augment.speed"):
        load_config(None, ["augment.speed=[1.1, 0.9]"])
    with pytest.raises(ConfigError, match="augment.noise_snr_db"):
        load_config(None, ["augment.noise_snr_db=20"])
