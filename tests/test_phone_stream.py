"""The phone stream (backend/phone_stream.py) on real speech, and the log-mel encoder that reads it."""
import numpy as np
import pytest
import soundfile as sf
import torch

from backend.audio_encoders import LogMelEncoder
from backend.phone_stream import PHONES, phone_frames, recognise_phones
from tests.conftest import ROOT

pytest.importorskip("pocketsphinx", reason="pip install pocketsphinx")

DEMO_VOICE = ROOT / "backend" / "assets" / "demo_voice.wav"
DEMO_TEXT = "unless to be rather cold hearted and rather selfish is to be ill disposed"


@pytest.fixture(scope="module")
def voice():
    x, sr = sf.read(str(DEMO_VOICE), dtype="float32")
    assert sr == 16000
    return x


def test_recognised_phones_agree_with_the_forced_alignment(voice):
    """The recogniser knows no words, yet most of its 10 ms frames fall in the viseme class the
    aligner (which knows the text) gives them, and it hears the bilabials of "be" and "disposed"."""
    from training.articulation import align
    from training.train import frame_visemes

    segs = recognise_phones(voice)
    assert all(b > a for _, a, b in segs) and all(p in PHONES for p, _, _ in segs)
    assert all(s1[2] <= s2[1] for s1, s2 in zip(segs, segs[1:]))  # in order, no overlap
    assert segs[-1][2] <= len(voice) // 160 + 1
    times = np.arange(len(voice) // 160) * 0.01 + 0.005
    ref = frame_visemes(align(voice, 16000, DEMO_TEXT)[0], times)
    hyp = frame_visemes([(p, a * 0.01, b * 0.01) for p, a, b in segs], times)
    both = (ref >= 0) & (hyp >= 0)
    assert both.mean() > 0.9 and (ref[both] == hyp[both]).mean() > 0.5
    names = [p for p, _, _ in segs]
    assert sum(names.count(p) for p in ("P", "B", "M")) >= 2


def test_phone_frames_are_one_hot_and_the_same_whatever_came_before(voice):
    n = len(voice) // 160 + 1
    first = phone_frames(voice, n)
    assert first.shape == (len(PHONES), n) and np.array_equal(first.sum(0), np.ones(n, np.float32))
    noise = np.random.default_rng(0).normal(0, 0.1, 16000).astype(np.float32)
    phone_frames(noise, 101)  # another utterance in between must not change the next result
    assert np.array_equal(phone_frames(voice, n), first)
    longer = phone_frames(np.concatenate([voice, np.zeros(8000, np.float32)]), n + 50)
    assert longer[0, -30:].all()  # half a second of digital silence after the voice: SIL
    assert np.array_equal(phone_frames(np.zeros(16000, np.float32), 101)[0], np.ones(101, np.float32))


def test_logmel_encoder_with_phones(voice):
    wav = torch.from_numpy(voice)[None]
    both = LogMelEncoder(n_mels=80, hidden=16, out_dim=8, phones="pocketsphinx")
    feats = both.features(wav)
    assert feats.shape[1] == 80 + len(PHONES)
    assert torch.equal(feats[:, :80], LogMelEncoder(n_mels=80, hidden=16, out_dim=8).features(wav))
    assert torch.equal(feats[0, 80:], torch.from_numpy(phone_frames(wav[0].numpy() / (wav.abs().max().item() + 1e-4),
                                                                    feats.shape[2])))
    alone = LogMelEncoder(n_mels=80, hidden=16, out_dim=8, phones="pocketsphinx", mel=False)
    assert alone.features(wav).shape[1] == 1 + len(PHONES)
    assert alone(wav, 75).shape == (1, 75, 8)
    assert alone.config_dict()["phones"] == "pocketsphinx" and alone.config_dict()["mel"] is False


@pytest.mark.parametrize("kw, match", [(dict(phones="whisper"), "phones must be"),
                                       (dict(mel=False), "needs phones"),
                                       (dict(phones="pocketsphinx", hop=320), "hop = 160")])
def test_logmel_phone_configs_refused(kw, match):
    with pytest.raises(ValueError, match=match):
        LogMelEncoder(**kw)


def test_a_phone_model_round_trips_through_its_file_and_holds_still_in_silence(voice, tmp_path):
    from backend.checkpoint import load_model, save_model
    from backend.model import ModelConfig, ScanTalk

    torch.manual_seed(0)
    audio = {"kind": "logmel", "config": {"n_mels": 16, "hidden": 16, "out_dim": 8, "phones": "pocketsphinx"}}
    model = ScanTalk(ModelConfig(audio=audio, latent=8, width=8, n_blocks=2, lstm_layers=1, k_eig=16)).eval()
    save_model(tmp_path / "m.pt", model)
    again = load_model(tmp_path / "m.pt")
    assert again.audio_encoder.phones == "pocketsphinx"
    wav = torch.from_numpy(voice)[None]
    n = model.num_frames(wav.shape[1])
    with torch.no_grad():
        torch.testing.assert_close(again.encode_audio(wav, n), model.encode_audio(wav, n))
        silent = model.audio_encoder(torch.zeros(1, 32000), 61)
    assert torch.allclose(silent, silent[:, :1].expand_as(silent), atol=1e-5)
