"""The ScanTalk model: official parity, sparse vs dense DiffusionNet, audio encoders."""
import json

import numpy as np
import pytest
import soundfile as sf
import torch
from scipy.signal import lfilter

from backend.audio_encoders import LogMelEncoder, TransformerSpeechEncoder, build_audio_encoder
from backend.checkpoint import infer_hubert_config, load_model, read_file
from backend.diffusionnet import DiffusionNet, TorchOperators, compute_operators
from backend.model import ModelConfig, ScanTalk
from tests.conftest import shared_path
from tests.meshes import icosphere

FIXTURE = ("fixtures", "official_scantalk_tiny")


@pytest.fixture(scope="module")
def official_prediction(flame_mesh):
    v, f = flame_mesh
    model = load_model(shared_path(*FIXTURE, "official_format_tiny.pth.tar"))
    wav, sr = sf.read(shared_path(*FIXTURE, "speech_16k.wav"), dtype="float32")
    assert sr == 16000
    wav = torch.from_numpy(wav)[None]
    ops = TorchOperators.from_numpy(compute_operators(v, f, k_eig=model.cfg.k_eig))
    n = model.num_frames(wav.shape[1])
    with torch.no_grad():
        hidden = model.audio_encoder(wav, n)[0].numpy()
        latent = model.encode_audio(wav, n).numpy()
        verts = model(wav, torch.from_numpy(v).float(), ops, n).numpy()
    return dict(n=n, hidden=hidden, latent=latent, verts=verts)


def test_official_fixture_frame_count(official_prediction):
    assert official_prediction["n"] == 89  # int(N50 / 50 * 30)


@pytest.mark.parametrize("name,key", [("expected_hubert_hidden.npy", "hidden"),
                                      ("expected_audio_latent.npy", "latent"),
                                      ("expected_vertices.npy", "verts")])
def test_official_fixture_parity(official_prediction, name, key):
    expected = np.load(shared_path(*FIXTURE, name))
    got = official_prediction[key]
    assert got.shape == expected.shape
    assert np.abs(got - expected).max() < 1e-4


def test_hubert_architecture_is_read_from_shapes():
    arch = json.loads(shared_path(*FIXTURE, "hubert_arch.json").read_text())
    sd = read_file(shared_path(*FIXTURE, "official_format_tiny.pth.tar"))["autoencoder_state_dict"]
    cfg = infer_hubert_config(sd)
    for k, v in arch.items():
        assert cfg[k] == v, k
    assert cfg["conv_kernel"] == [10, 3, 3, 3, 3, 2, 2] and cfg["conv_stride"] == [5, 2, 2, 2, 2, 2, 2]
    assert cfg["feat_extract_norm"] == "group" and cfg["conv_bias"] is False


def _dense_reference_forward(net, x_frames, ops_np):
    """The official design: dense V×V operators and a loop over frames."""
    evecs = torch.from_numpy(ops_np.evecs)
    mass = torch.from_numpy(ops_np.mass)
    evals = torch.from_numpy(ops_np.evals)
    gx = torch.from_numpy(ops_np.gradX.toarray())
    gy = torch.from_numpy(ops_np.gradY.toarray())
    outs = []
    for x in x_frames:
        h = net.first_lin(x)
        for b in net.blocks():
            t = b.diffusion.times()
            spec = evecs.T @ (h * mass[:, None])
            hd = evecs @ (torch.exp(-evals[:, None] * t[None]) * spec)
            g = b.gradient_features(gx @ hd, gy @ hd)
            h = h + b.mlp(torch.cat([h, hd, g], -1))
        outs.append(net.last_lin(h))
    return torch.stack(outs)


def test_batched_sparse_diffusionnet_equals_dense_reference():
    torch.manual_seed(0)
    v, f = icosphere(2)
    ops_np = compute_operators(v * [1.0, 0.8, 1.2], f, k_eig=24)
    net = DiffusionNet(5, 3, width=8, n_blocks=2)
    for b in net.blocks():
        b.diffusion.diffusion_time.data.uniform_(0.001, 0.1)
    x = torch.randn(6, len(v), 5)
    with torch.no_grad():
        sparse = net(x, TorchOperators.from_numpy(ops_np))
        dense = _dense_reference_forward(net, x, ops_np)
    torch.testing.assert_close(sparse, dense, rtol=1e-4, atol=1e-5)


def _tiny_model(audio=None, **kw):
    cfg = ModelConfig(audio=audio or {"kind": "logmel", "config": {"n_mels": 16, "hidden": 16, "out_dim": 16}},
                      latent=8, width=8, n_blocks=2, lstm_layers=1, k_eig=16, **kw)
    return ScanTalk(cfg).eval()


def test_untrained_model_returns_the_neutral_mesh_and_chunking_is_exact():
    torch.manual_seed(1)
    v, f = icosphere(2)
    ops = TorchOperators.from_numpy(compute_operators(v, f, k_eig=16))
    model = _tiny_model()
    wav = torch.randn(1, 16000)
    neutral = torch.from_numpy(v).float()
    n = model.num_frames(wav.shape[1])
    with torch.no_grad():
        out = model(wav, neutral, ops, n)
        assert torch.equal(out, neutral.expand_as(out))
        torch.nn.init.normal_(model.decoder.last_lin.weight, std=0.1)
        geom, aud = model.encode_geometry(neutral, ops), model.encode_audio(wav, n)
        whole = model.decode(geom, aud, ops)
        chunked = model.decode(geom, aud, ops, chunk_frames=7)
    assert whole.shape == (n, len(v), 3) and whole.abs().max() > 0
    torch.testing.assert_close(whole, chunked, rtol=1e-5, atol=1e-6)


def test_logmel_encoder_frame_rule_and_silence():
    enc = LogMelEncoder(n_mels=16, hidden=16, out_dim=8).eval()
    assert enc.num_frames(16000 * 2, 30) == 61  # floor(2 s × 30) + 1
    with torch.no_grad():
        silent = enc(torch.zeros(1, 32000), 61)
        speech = enc(torch.randn(1, 32000), 61)
    assert silent.shape == (1, 61, 8)
    assert torch.allclose(silent, silent[:, :1].expand_as(silent), atol=1e-5)  # constant over time
    assert speech.std(dim=1).mean() > silent.std(dim=1).mean()


def test_logmel_bin_norm_takes_out_the_recording_channel():
    """A microphone's colouring (a fixed filter) shifts each log-mel bin by a constant: per-bin
    normalisation removes it, the default per-utterance one does not; both keep the frame rule."""
    from scipy import signal

    rng = np.random.default_rng(0)
    t = np.arange(32000) / 16000
    env = (np.sin(2 * np.pi * 2 * t) > 0).astype(np.float64)  # bursts and pauses
    x = (env + 0.01) * rng.standard_normal(len(t)) * 0.3  # a recording's noise floor in the pauses
    coloured = signal.lfilter(*signal.butter(2, 4000, fs=16000), x)  # a dull microphone
    gaps = {}
    for norm in ("utterance", "bin"):
        enc = LogMelEncoder(n_mels=16, hidden=8, out_dim=4, norm=norm).eval()
        assert enc.config_dict()["norm"] == norm
        with torch.no_grad():
            a, b = (enc.features(torch.tensor(z, dtype=torch.float32)[None]) for z in (x, coloured))
            assert enc(torch.tensor(x, dtype=torch.float32)[None], 61).shape == (1, 61, 4)
        speech = torch.from_numpy(env[np.minimum(np.arange(a.shape[-1]) * 160, len(env) - 1)] > 0)  # in bursts
        gaps[norm] = float((a - b)[..., speech].abs().mean())
    assert gaps["bin"] < 0.2 * gaps["utterance"]
    with pytest.raises(ValueError, match="norm"):
        LogMelEncoder(norm="channel")


@pytest.mark.parametrize("dilation, layers, span", [(1, 3, 13), (2, 3, 29), (3, 2, 17)])
def test_logmel_dilation_widens_the_context_and_keeps_the_frames(dilation, layers, span):
    """One changed log-mel step moves exactly the outputs within the receptive field,
    1 + (kernel-1) * sum(dilation**i): 130 ms at version 4's shape, 290 ms at dilation 2."""
    torch.manual_seed(0)
    enc = LogMelEncoder(n_mels=8, hidden=8, out_dim=4, n_layers=layers, kernel=5, dilation=dilation).eval()
    assert enc.config_dict()["dilation"] == dilation
    x = torch.zeros(1, 8, 200)
    poked = x.clone()
    poked[..., 100] = 1.0
    with torch.no_grad():
        a, b = enc.convs(x), enc.convs(poked)
        assert enc(torch.randn(1, 32000), 61).shape == (1, 61, 4)  # the frame rule holds
    assert a.shape == x.shape[:1] + (8, 200)
    moved = ((b - a).abs().amax(dim=1)[0] > 0).nonzero().flatten()
    assert (int(moved.min()), int(moved.max())) == (100 - span // 2, 100 + span // 2)
    for bad in (dict(dilation=0), dict(dilation=1.5), dict(kernel=4)):
        with pytest.raises(ValueError, match="dilation|kernel"):
            LogMelEncoder(**bad)


def _voiced(f0: float, seconds: float = 0.5, sr: int = 16000) -> torch.Tensor:
    """A pulse train at pitch f0 through two fixed resonances (one vowel's formants, 700 and
    1200 Hz): one vocal tract, any voice's pitch."""
    x = np.zeros(int(seconds * sr))
    x[::int(round(sr / f0))] = 1.0
    for f, bw in ((700.0, 80.0), (1200.0, 90.0)):
        r, th = np.exp(-np.pi * bw / sr), 2 * np.pi * f / sr
        x = lfilter([1.0], [1.0, -2 * r * np.cos(th), r * r], x)
    return torch.from_numpy((x / np.abs(x).max()).astype(np.float32))[None]


def test_logmel_lifter_keeps_the_vocal_tract_and_drops_the_pitch():
    """One vowel said at 110 and 210 Hz: unliftered, the low bins resolve each pitch's harmonics;
    liftered, the two differ about half as much (what is left: a sparser line spectrum reads
    lower in the log domain, as in any cepstrum)."""
    def gap(enc):
        a, b = (enc.log_mel(_voiced(f0))[0, :, 5:-5].mean(dim=1) for f0 in (110.0, 210.0))
        return float(((a - a.mean()) - (b - b.mean())).abs().mean())
    plain, lifted = LogMelEncoder(lifter=0), LogMelEncoder(lifter=20)
    assert lifted.config_dict()["lifter"] == 20
    assert gap(lifted) < 0.65 * gap(plain)
    # the projection keeps the envelope exactly: a spectrum made of the kept cosines passes unchanged
    smooth = torch.cos(np.pi * 19 * (2 * torch.arange(80.0) + 1) / 160)[None, :, None]
    torch.testing.assert_close(lifted.smoothing @ smooth, smooth, rtol=0, atol=1e-5)
    for bad in (-1, 81, 2.5):
        with pytest.raises(ValueError, match="lifter"):
            LogMelEncoder(lifter=bad)


TINY_TRANSFORMER = dict(hidden_size=32, num_hidden_layers=1, num_attention_heads=2, intermediate_size=37,
                        conv_dim=(16, 16), conv_kernel=(10, 3), conv_stride=(5, 2),
                        num_conv_pos_embeddings=8, num_conv_pos_embedding_groups=4)


def _tiny_hubert():
    return build_audio_encoder({"kind": "hubert", "config": TINY_TRANSFORMER}).eval()


def _tiny_stable_wav2vec2():  # LayerNorm over channels (wav2vec2-large): nothing normalised over time
    return build_audio_encoder({"kind": "wav2vec2", "config": {**TINY_TRANSFORMER, "feat_extract_norm": "layer",
                                                               "do_stable_layer_norm": True}}).eval()


def _speech_then_room_tone(seconds_of_tone: float) -> torch.Tensor:
    wav, sr = sf.read(shared_path(*FIXTURE, "speech_16k.wav"), dtype="float32")
    tone = 1e-3 * np.random.default_rng(0).standard_normal(int(seconds_of_tone * sr))  # -60 dBFS
    return torch.from_numpy(np.concatenate([wav, tone]).astype(np.float32))[None]


@pytest.mark.parametrize("make", [lambda: LogMelEncoder(n_mels=16, hidden=8, out_dim=4),
                                  lambda: LogMelEncoder(n_mels=16, hidden=8, out_dim=4, norm="bin"),
                                  lambda: LogMelEncoder(n_mels=16, hidden=8, out_dim=4, lifter=5),
                                  _tiny_hubert, _tiny_stable_wav2vec2],
                         ids=["logmel", "logmel-bin", "logmel-lifter", "hubert", "wav2vec2-layer-norm"])
def test_an_encoder_given_its_own_clip_stats_computes_what_it_computes_alone(make):
    """The statistics, summed a block at a time, are the per-utterance ones."""
    torch.manual_seed(0)
    enc = make()
    wav = _speech_then_room_tone(3.0)
    n = enc.num_frames(wav.shape[1], 30)
    blocks = dict(block_steps=37) if isinstance(enc, LogMelEncoder) else dict(block_frames=333)
    with torch.no_grad():
        torch.testing.assert_close(enc(wav, n, stats=enc.clip_stats(wav, **blocks)), enc(wav, n),
                                   rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("make", [lambda: LogMelEncoder(n_mels=16, hidden=8, out_dim=4),
                                  lambda: LogMelEncoder(n_mels=16, hidden=8, out_dim=4, norm="bin"),
                                  _tiny_hubert], ids=["logmel", "logmel-bin", "hubert"])
def test_a_window_of_room_tone_stays_quiet_given_its_clip_stats(make):
    """Alone, a window of room tone is scaled up like speech; given the whole clip's statistics
    it stays far quieter than the clip's speech. (HuBERT's first convolution normalises over time
    too, GroupNorm: its statistics come from the whole clip as well.)"""
    torch.manual_seed(0)
    enc = make()
    wav = _speech_then_room_tone(3.0)
    with torch.no_grad():
        tone = wav[:, -32000:]  # the last 2 s: room tone only
        alone, in_clip = (enc(tone, 60, stats=s) for s in (None, enc.clip_stats(wav)))
        speech = enc(wav[:, :32000], 60)
    assert in_clip.std(dim=1).mean() < 0.5 * speech.std(dim=1).mean()
    assert (alone - in_clip).abs().mean() > 0.1 * speech.std(dim=1).mean()


def test_logmel_clip_stats_are_exact_block_by_block():
    """The log-mel of any run of steps equals the whole clip's there, reflected at the clip's ends
    only; so the block-wise mean and spread are the whole clip's."""
    enc = LogMelEncoder(n_mels=16, hidden=8, out_dim=4)
    wav = _speech_then_room_tone(1.0)
    peak = wav.abs().amax() + 1e-4
    whole = enc.log_mel(wav / peak)
    n = whole.shape[-1]
    for j0, j1 in [(0, n), (0, 7), (5, 90), (n - 9, n), (n - 1, n)]:
        torch.testing.assert_close(enc._log_mel_steps(wav, j0, j1, peak), whole[..., j0:j1], rtol=0, atol=1e-5)
    peak, mean, std = enc.clip_stats(wav, block_steps=10)
    torch.testing.assert_close(mean, whole.mean().reshape(1, 1, 1), rtol=0, atol=1e-5)
    torch.testing.assert_close(std, whole.std().reshape(1, 1, 1), rtol=0, atol=1e-5)
    assert float(peak) == pytest.approx(float(wav.abs().max()) + 1e-4)


@pytest.mark.parametrize("kind", ["hubert", "wav2vec2"])
def test_transformer_encoders_from_tiny_config_and_local_dir(kind, tmp_path):
    enc = build_audio_encoder({"kind": kind, "config": TINY_TRANSFORMER}).eval()
    enc.model.save_pretrained(tmp_path / "local")  # what a user has on disk
    again = TransformerSpeechEncoder(kind, pretrained_dir=str(tmp_path / "local")).eval()
    wav = torch.randn(1, 8000)
    n = enc.num_frames(8000, 30)
    with torch.no_grad():
        a, b = enc(wav, n), again(wav, n)
    assert a.shape == (1, n, 32)
    torch.testing.assert_close(a, b)
    # loud and quiet versions of the same utterance look the same after normalisation
    with torch.no_grad():
        torch.testing.assert_close(enc(wav * 7.0, n), a, rtol=1e-4, atol=1e-4)


def test_sparse_operator_forward_and_backward_equal_dense():
    v, f = icosphere(1)
    ops = TorchOperators.from_numpy(compute_operators(v, f, k_eig=8))
    x = torch.randn(len(v), 6, requires_grad=True)
    y = ops.grad @ x
    (y ** 2).sum().backward()
    dense = torch.from_numpy(ops.grad.csr.toarray())
    x2 = x.detach().clone().requires_grad_()
    ((dense @ x2) ** 2).sum().backward()
    torch.testing.assert_close(y, (dense @ x2).detach(), rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(x.grad, x2.grad, rtol=1e-4, atol=1e-4)
    torch.testing.assert_close((ops.grad * 2.0) @ x.detach(), 2 * y.detach())
