"""The latents' spread restored at inference (backend/speech_spread.py) and measured over the
training speech (training/speech_spread.py): which frames count as speech, the stretch itself,
the config round trip, and a measured tiny model through the real inference path."""
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import torch

from backend import speech_spread as ss
from backend.audio_io import load_audio
from backend.model import ModelConfig
from tests.meshes import icosphere
from tests.test_audio_pretrain import tiny_model
from tests.test_training import FPS, make_dataset

ROOT = Path(__file__).resolve().parents[1]
DEMO_VOICE = ROOT / "backend" / "assets" / "demo_voice.wav"


@pytest.fixture(scope="module")
def dataset(tmp_path_factory):
    return make_dataset(tmp_path_factory.mktemp("spread") / "data")


def test_speech_frames_are_the_voice_not_the_silence_around_it(monkeypatch):
    voice = load_audio(DEMO_VOICE)
    wav = torch.from_numpy(np.concatenate([np.zeros(16000, np.float32), voice, np.zeros(16000, np.float32)]))
    n = int(len(wav) / 16000 * FPS) + 1
    speech = ss.speech_frames(ss.frame_levels(wav, n, FPS))
    assert speech.shape == (n,) and speech.dtype == torch.bool
    assert not speech[:30].any() and not speech[-30:].any()  # the padded seconds
    assert speech[30:-30].float().mean() > 0.7
    monkeypatch.setattr(ss, "BLOCK_FRAMES", 7)  # block by block: the same frames
    assert torch.equal(ss.speech_frames(ss.frame_levels(wav[None], n, FPS)), speech)


def restore(z, speech, spread):
    """What audio_latents does with a clip's raw latents."""
    return ss.apply_stretch(z, speech, ss.clip_stretch(z, speech, spread))


def test_the_stretch_gives_each_dimension_the_training_spread():
    g = torch.Generator().manual_seed(0)
    z = torch.randn(200, 4, generator=g) * torch.tensor([0.5, 1.0, 2.0, 0.1]) + torch.tensor([1.0, -1.0, 0.0, 3.0])
    speech = torch.ones(200, dtype=torch.bool)
    speech[:40] = False
    target = torch.tensor([1.0, 1.5, 1.0, 0.2])
    out = restore(z, speech, tuple(target.tolist()))
    torch.testing.assert_close(out[speech].std(0), target)
    torch.testing.assert_close(out[speech].mean(0), z[speech].mean(0))  # the clip's own mean stays
    # the silent frames move by the same map as the speech frames
    mean, stretch = z[speech].mean(0), target / z[speech].std(0)
    torch.testing.assert_close(out[:40], mean + (z[:40] - mean) * stretch)
    # nothing to measure, nothing to restore: the latents as they were
    few = torch.zeros(200, dtype=torch.bool)
    few[:ss.MIN_SPEECH_FRAMES - 1] = True
    assert restore(z, few, tuple(target.tolist())) is z
    assert restore(z, speech, ()) is z
    with pytest.raises(ValueError, match="speech_spread has 3 values for 4 latent dimensions"):
        restore(z, speech, (1.0, 1.0, 1.0))
    # a dimension that hardly moves is stretched at most MAX_STRETCH times, never to infinity
    flat = z.clone()
    flat[:, 0] = 2.0 + 1e-9 * torch.arange(200)
    out = restore(flat, speech, tuple(target.tolist()))
    assert torch.isfinite(out).all()
    assert float(out[speech, 0].std()) <= ss.MAX_STRETCH * float(flat[speech, 0].std()) * 1.0001
    torch.testing.assert_close(out[speech, 1:].std(0), target[1:])
    # a clip that varies far less than speech does in most dimensions is not speech: untouched
    quiet = tuple((z[speech].std(0) * (ss.MAX_CLIP_STRETCH + 0.1)).tolist())
    assert restore(z, speech, quiet) is z
    loud = tuple((z[speech].std(0) * (ss.MAX_CLIP_STRETCH - 0.1)).tolist())
    assert restore(z, speech, loud) is not z


def test_config_carries_the_spread_and_reads_files_without_it():
    cfg = ModelConfig(latent=3, speech_spread=(0.1, 0.2, 0.3))
    d = cfg.to_dict()
    assert d["speech_spread"] == [0.1, 0.2, 0.3]
    assert ModelConfig.from_dict(d) == cfg
    del d["speech_spread"]  # a model written before the field: left as it is
    assert ModelConfig.from_dict(d).speech_spread == ()


def test_training_takes_a_file_with_a_spread_or_without_one():
    """The bundled model (with a spread) and files written before the field (without one) can
    be fine-tuned and resumed; another architecture still cannot."""
    from training.config import ConfigError
    from training.train import check_model_config

    mcfg = ModelConfig(latent=3)
    for config in ({**mcfg.to_dict(), "speech_spread": [0.1, 0.2, 0.3]},
                   {k: v for k, v in mcfg.to_dict().items() if k != "speech_spread"}):
        check_model_config("m.pt", config, mcfg, "resume")
    with pytest.raises(ConfigError, match="another model config"):
        check_model_config("m.pt", {**mcfg.to_dict(), "latent": 4}, mcfg, "resume")


def test_measured_spread_reaches_inference(dataset, tmp_path):
    from backend.checkpoint import load_model, save_model
    from backend.inference import animate, audio_latents
    from training.speech_spread import main

    raw_path, out = tmp_path / "raw.pt", tmp_path / "measured.pt"
    model = tiny_model()
    with torch.no_grad():  # an untrained decoder's last layer is zero: give it motion to change
        model.decoder.last_lin.weight.normal_(0.0, 0.1)
    save_model(raw_path, model)
    assert main(["--checkpoint", str(raw_path), "--data", str(dataset), "--out", str(out)]) == 0
    measured = load_model(out)
    spread = torch.tensor(measured.cfg.speech_spread)
    assert spread.shape == (8,) and (spread > 0).all()
    # measuring the measured model again reads the raw latents: the same spread
    assert main(["--checkpoint", str(out), "--data", str(dataset), "--out", str(tmp_path / "again.pt")]) == 0
    torch.testing.assert_close(torch.tensor(load_model(tmp_path / "again.pt").cfg.speech_spread), spread)

    # on a clip it was not measured on (the test split's) the speech frames' latents vary as the
    # training speech's did, as far as MAX_STRETCH allows
    clip = dataset / "wav" / "s04_sent00.wav"
    wav = torch.from_numpy(load_audio(clip))[None]
    n = measured.num_frames(wav.shape[1], FPS)
    speech = ss.speech_frames(ss.frame_levels(wav, n, FPS))
    with torch.inference_mode():
        lat = audio_latents(measured, wav, n, FPS)
        raw_lat = audio_latents(load_model(raw_path), wav, n, FPS)
    raw_sd = raw_lat[speech].std(0)
    assert float((spread / raw_sd).median()) < ss.MAX_CLIP_STRETCH
    within = ((spread / raw_sd) < ss.MAX_STRETCH) & ((spread / raw_sd) > 1 / ss.MAX_STRETCH)
    assert within.any()
    torch.testing.assert_close(lat[speech].std(0)[within], spread[within], rtol=1e-4, atol=1e-6)
    bound = torch.where(spread > raw_sd, ss.MAX_STRETCH * raw_sd, raw_sd / ss.MAX_STRETCH)
    torch.testing.assert_close(lat[speech].std(0)[~within], bound[~within], rtol=1e-4, atol=1e-6)

    # and through animate: the stretch changes the motion; a spread equal to the clip's own none
    v, f = icosphere(2, radius=0.1)
    voice = load_audio(clip)
    base = animate((v, f), voice, checkpoint=raw_path, device="cpu").offsets
    assert not np.allclose(animate((v, f), voice, checkpoint=out, device="cpu").offsets, base, atol=1e-7)
    same = load_model(raw_path)
    same.cfg = replace(same.cfg, speech_spread=tuple(raw_lat[speech].std(0).tolist()))
    save_model(tmp_path / "own.pt", same)
    np.testing.assert_allclose(animate((v, f), voice, checkpoint=tmp_path / "own.pt", device="cpu").offsets,
                               base, atol=1e-6)


def test_noise_is_left_alone_and_the_user_is_told(tmp_path):
    """Through `animate` with the bundled model: white noise moves the lips exactly as the
    weights alone would and the result says it was not heard as speech; a voice says nothing."""
    from backend.checkpoint import load_model, save_model
    from backend.inference import NOT_SPEECH, animate

    v, f = icosphere(2, radius=0.1)
    noise = (0.1 * np.random.default_rng(0).standard_normal(3 * 16000)).astype(np.float32)
    shipped = animate((v, f), noise, device="cpu")
    assert NOT_SPEECH in shipped.meta["warnings"]
    raw = load_model(ROOT / "backend" / "assets" / "default_model.pt")
    raw.cfg = replace(raw.cfg, speech_spread=())
    save_model(tmp_path / "raw.pt", raw)
    alone = animate((v, f), noise, checkpoint=tmp_path / "raw.pt", device="cpu")
    np.testing.assert_array_equal(shipped.offsets, alone.offsets)
    assert NOT_SPEECH not in alone.meta["warnings"]  # without a spread there is nothing to compare
    assert NOT_SPEECH not in animate((v, f), load_audio(DEMO_VOICE), device="cpu").meta["warnings"]


def test_measure_refuses_what_it_cannot_read(tmp_path, capsys):
    from backend.checkpoint import save_model
    from training.speech_spread import main

    save_model(tmp_path / "m.pt", tiny_model())
    assert main(["--checkpoint", str(tmp_path / "m.pt"), "--data", str(tmp_path / "nowhere"),
                 "--out", str(tmp_path / "o.pt")]) == 2
    assert "error:" in capsys.readouterr().err and not (tmp_path / "o.pt").exists()
    assert main(["--checkpoint", str(tmp_path / "missing.pt"), "--data", str(tmp_path),
                 "--out", str(tmp_path / "o.pt")]) == 2


def test_the_bundled_model_carries_its_training_spread():
    from backend.checkpoint import load_model

    from backend.inference import audio_latents

    model = load_model(ROOT / "backend" / "assets" / "default_model.pt")
    spread = np.asarray(model.cfg.speech_spread)
    assert spread.shape == (model.cfg.latent,) and (spread > 0.05).all() and (spread < 1.0).all()
    raw = load_model(ROOT / "backend" / "assets" / "default_model.pt")
    raw.cfg = replace(raw.cfg, speech_spread=())
    noise = torch.from_numpy(0.1 * np.random.default_rng(0).standard_normal(3 * 16000).astype(np.float32))[None]
    voice = torch.from_numpy(load_audio(DEMO_VOICE))[None]
    with torch.inference_mode():
        for wav, is_speech in [(voice, True), (noise, False)]:
            n = model.num_frames(wav.shape[1], FPS)
            stretched, plain = audio_latents(model, wav, n, FPS), audio_latents(raw, wav, n, FPS)
            # a real voice is stretched (its latents vary less than the training speech's); white
            # noise, which would need far more, is left alone rather than made to move the lips
            assert torch.equal(stretched, plain) != is_speech
            if is_speech:
                grow = stretched.std(0) / plain.std(0)
                assert 1.05 < float(grow.median()) < ss.MAX_CLIP_STRETCH
