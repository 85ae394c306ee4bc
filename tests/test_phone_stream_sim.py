"""The generator's phones in place of the recogniser's (training/phone_stream_sim.py): the stream
it builds, where it goes in the encoder's features, and that the trainer swaps it in, in both
stages, only when asked and without touching the run's other random draws."""
import numpy as np
import pytest
import torch

from backend.phone_stream import PHONES
from tests.test_training import FEATURES, add_phones, make_dataset, tiny_cfg
from training import phone_stream_sim as sim
from training.config import ConfigError, load_config

PHONE_STREAM = ["model.audio.config.phones=pocketsphinx"]


def names(stream):
    return [PHONES[i] for i in stream.argmax(0)]


def test_stream_is_the_generators_phones_at_each_step():
    phones = [("sil", 0.0, 0.1), ("m", 0.1, 0.25), ("ax", 0.25, 0.4), ("aa", 0.4, 0.6)]
    s = sim.label_stream(phones, np.arange(70) * 0.01, np.random.default_rng(0), error=0.0, jitter=0.0)
    assert s.shape == (len(PHONES), 70) and np.array_equal(s.sum(0), np.ones(70))
    # 'ax' (the generator's schwa) is the recogniser's AH; nothing after the last phone: silence
    assert names(s) == ["SIL"] * 10 + ["M"] * 15 + ["AH"] * 15 + ["AA"] * 20 + ["SIL"] * 10


def test_errors_swap_phones_for_others_and_jitter_moves_edges():
    rng = np.random.default_rng(1)
    phones = [(p, 0.1 * i, 0.1 * i + 0.1) for i, p in enumerate(["m", "aa", "p", "iy", "b", "uw"] * 50)]
    times = np.arange(0.05, 30.0, 0.1)  # one step in the middle of each phone
    truth = names(sim.label_stream(phones, times, rng, error=0.0, jitter=0.0))
    every = names(sim.label_stream(phones, times, rng, error=1.0, jitter=0.0))
    assert all(a != b and b != "SIL" for a, b in zip(truth, every))
    some = names(sim.label_stream(phones, times, rng, error=0.3, jitter=0.0))
    assert 0.22 < np.mean([a != b for a, b in zip(truth, some)]) < 0.38
    # edges move by at most 20 ms: 30 ms inside a phone it is always itself
    fine = np.arange(3000) * 0.01
    inner = np.array([(t % 0.1) >= 0.03 - 1e-9 and (t % 0.1) <= 0.07 + 1e-9 for t in fine])
    ref = names(sim.label_stream(phones, fine, rng, error=0.0, jitter=0.0))
    moved = names(sim.label_stream(phones, fine, rng, error=0.0, jitter=0.02))
    assert [a for a, keep in zip(ref, inner) if keep] == [b for b, keep in zip(moved, inner) if keep]
    assert ref != moved


def test_stream_times_follow_padding_and_speed():
    t = sim.stream_times(16000, 30.0)
    assert len(t) == 101 and t[0] == 0.0 and t[100] == pytest.approx(1.0)
    # 3 silent frames first (0.1 s at 30 fps), audio 1.1x faster: step k is at (k/100 - 0.1) * 1.1
    t = sim.stream_times(16000, 30.0, pad0=3, speed=1.1)
    assert t[0] == pytest.approx(-0.11) and t[10] == pytest.approx(0.0) and t[60] == pytest.approx(0.55)


def test_the_stream_replaces_the_encoders_phone_channels():
    pytest.importorskip("pocketsphinx", reason="pip install pocketsphinx")
    from backend.audio_encoders import LogMelEncoder

    enc = LogMelEncoder(n_mels=20, hidden=8, out_dim=4, phones="pocketsphinx").eval()
    wav = torch.from_numpy(0.1 * np.random.default_rng(2).standard_normal(16000).astype(np.float32))[None]
    f = enc.features(wav)
    stream = sim.label_stream([("m", 0.0, 0.5), ("aa", 0.5, 1.0)], sim.stream_times(16000, 30.0),
                              np.random.default_rng(0), 0.0, 0.0)
    g = sim.replace_phones(stream)(f)
    assert g.shape == f.shape == (1, 20 + len(PHONES), 101)
    assert torch.equal(g[:, :20], f[:, :20]) and torch.equal(g[0, 20:], torch.from_numpy(stream))
    with torch.no_grad():
        assert not torch.allclose(enc(wav, 31, sim.replace_phones(stream)), enc(wav, 31))


def test_only_a_model_that_reads_phones_takes_them(tmp_path):
    from training import train

    data = add_phones(make_dataset(tmp_path / "data"))
    with pytest.raises(ConfigError, match="model.audio.config.phones"):
        train.train(load_config(None, tiny_cfg(data, tmp_path / "run", "augment.phones_from_labels_prob=0.5")))


@pytest.fixture(scope="module")
def phone_dataset(tmp_path_factory):
    return add_phones(make_dataset(tmp_path_factory.mktemp("phone_stream") / "data"))


def test_trainer_swaps_the_stream_in_both_stages(phone_dataset, tmp_path, monkeypatch):
    pytest.importorskip("pocketsphinx", reason="pip install pocketsphinx")
    from training import train

    seen = []
    real = sim.label_stream

    def spy(phones, times, rng, error, jitter=0.02):
        seen.append((times[0], len(times), error))
        return real(phones, times, rng, error, jitter)

    applied = []

    def replacing(stream):
        swap = real_replace(stream)
        return lambda f: applied.append(f.shape) or swap(f)

    real_replace = sim.replace_phones
    monkeypatch.setattr(sim, "label_stream", spy)
    monkeypatch.setattr(sim, "replace_phones", replacing)

    def run(name, *extra):
        return train.train(load_config(None, tiny_cfg(phone_dataset, tmp_path / name, "train.steps=3",
                                                      "train.val_every=3", "train.audio_pretrain_steps=4",
                                                      *FEATURES, *PHONE_STREAM, *extra)))

    off = run("off")
    assert seen == []
    # asked for every example: four pre-training steps (whole clips from their start), three joint
    # steps (clips that may start with silence padding, hence a first time at or below zero)
    on = run("on", "augment.phones_from_labels_prob=1", "augment.phones_from_labels_error=0.25")
    assert len(seen) == 7 and all(e == 0.25 for _, _, e in seen)
    assert [n for _, n, _ in seen] == [shape[2] for shape in applied]  # each one read by its forward pass
    assert all(t0 == 0.0 for t0, _, _ in seen[:4]) and all(t0 <= 0.0 for t0, _, _ in seen[4:])
    assert on["step"] == off["step"] == 3 and np.isfinite(on["val"]["total"])
    assert on["val"]["total"] != off["val"]["total"]
    # a share too small ever to be drawn: the stream's own random draws leave the run as it was
    seen.clear()
    never = run("never", "augment.phones_from_labels_prob=1e-12")
    assert seen == [] and never["val"] == off["val"] and len(applied) == 7
