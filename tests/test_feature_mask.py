"""Log-mel feature masking (training/feature_mask.py): what it zeroes, that only a log-mel encoder
accepts it, and that the trainer uses it in both stages without touching its other random draws."""
import numpy as np
import pytest
import torch

from backend.audio_encoders import LogMelEncoder, build_audio_encoder
from tests.test_training import FEATURES, add_phones, make_dataset, tiny_cfg
from training.config import load_config
from training.feature_mask import feature_masker, mask_features


@pytest.fixture(scope="module")
def phone_dataset(tmp_path_factory):
    return add_phones(make_dataset(tmp_path_factory.mktemp("masking") / "data"))


def test_masks_zero_bands_and_spans_and_leave_the_input():
    x = torch.randn(1, 20, 50) + 5.0  # nothing is zero before masking
    out = mask_features(x, np.random.default_rng(3), freq_masks=2, freq_width=4, time_masks=3, time_width=6)
    assert out.shape == x.shape and bool((x != 0).all())  # the input is not modified
    zero_rows = (out == 0).all(dim=2)[0]  # a band: every step of those bins
    zero_cols = (out == 0).all(dim=1)[0]  # a span: every bin of those steps
    assert 0 < int(zero_rows.sum()) <= 2 * 4 and 0 < int(zero_cols.sum()) <= 3 * 6
    kept = ~zero_rows[:, None] & ~zero_cols[None, :]
    assert torch.equal(out[0][kept], x[0][kept])  # everything else as it was
    again = mask_features(x, np.random.default_rng(3), freq_masks=2, freq_width=4, time_masks=3, time_width=6)
    assert torch.equal(out, again)  # the generator decides everything
    assert torch.equal(mask_features(x, np.random.default_rng(0), 0, 4, 0, 6), x)
    # a width beyond the features is cut to them
    full = mask_features(x, np.random.default_rng(1), freq_masks=5, freq_width=100, time_masks=0, time_width=0)
    assert full.shape == x.shape


def test_masker_only_when_asked_and_only_for_log_mel():
    cfg = load_config(None, [])
    assert feature_masker(cfg.augment, np.random.default_rng(0)) is None and feature_masker(None, None) is None
    cfg = load_config(None, ["augment.spec_freq_masks=2", "augment.spec_freq_width=30"])
    masker = feature_masker(cfg.augment, np.random.default_rng(0))
    with pytest.raises(ValueError, match="spec_freq_width"):
        feature_masker(load_config(None, ["augment.spec_time_masks=1", "augment.spec_time_width=-2"]).augment, None)
    enc = LogMelEncoder(n_mels=40, hidden=8, out_dim=4).eval()
    wav = torch.from_numpy(np.random.default_rng(1).standard_normal(16000).astype(np.float32))[None]
    seen = []
    with torch.no_grad():
        plain = enc(wav, 31)
        masked = enc(wav, 31, lambda f: seen.append(f.shape) or masker(f))
    assert seen == [(1, 40, 101)] and masked.shape == plain.shape == (1, 31, 4)
    assert not torch.allclose(masked, plain)
    hubert = build_audio_encoder({"kind": "hubert", "config": dict(
        hidden_size=32, num_hidden_layers=1, num_attention_heads=2, intermediate_size=37, conv_dim=(16, 16),
        conv_kernel=(10, 3), conv_stride=(5, 2), num_conv_pos_embeddings=8, num_conv_pos_embedding_groups=4)})
    with pytest.raises(ValueError, match="logmel"):
        hubert(wav, 31, masker)


def test_trainer_masks_in_both_stages(phone_dataset, tmp_path, monkeypatch):
    from training import audio_pretrain, train

    calls = {"pretrain": 0, "joint": 0}
    real = train.feature_masker

    def counting(stage):
        def masker(aug, rng):
            m = real(aug, rng)
            calls[stage] += m is not None
            return m
        return masker

    monkeypatch.setattr(audio_pretrain, "feature_masker", counting("pretrain"))
    monkeypatch.setattr(train, "feature_masker", counting("joint"))
    masks = ["augment.spec_freq_masks=2", "augment.spec_time_masks=1"]
    res = train.train(load_config(None, tiny_cfg(phone_dataset, tmp_path / "run", "train.steps=3",
                                                 "train.val_every=3", "train.audio_pretrain_steps=4",
                                                 *FEATURES, *masks)))
    assert res["step"] == 3 and np.isfinite(res["val"]["total"])
    assert calls == {"pretrain": 4, "joint": 3}
