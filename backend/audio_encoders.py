"""Speech encoders behind one interface: 16 kHz mono waveform → features at the mesh frame rate.

- `TransformerSpeechEncoder`: HuBERT or wav2vec2 from `transformers`, built from a config (weights
  come from a checkpoint or a LOCAL pretrained directory; nothing is fetched from a hub). Runs the
  official ScanTalk way: per-utterance normalisation, conv features resampled to the frame count
  before the projection and the transformer.
- `LogMelEncoder`: log-mel features → small conv stack; needs no pretrained weights (the bundled
  default model uses it).
"""
from __future__ import annotations

import math

import numpy as np
import scipy.fft
import torch
import torch.nn.functional as F
from torch import nn

from .phone_stream import PHONES, phone_frames

SAMPLE_RATE = 16000


def normalize_waveform(wav: torch.Tensor, stats: tuple | None = None) -> torch.Tensor:
    """Zero mean, unit variance per utterance, as Wav2Vec2Processor does (population variance);
    `stats` = (mean, var) measured over a longer clip that `wav` is a window of."""
    if stats is None:
        var, mean = torch.var_mean(wav, dim=-1, keepdim=True, unbiased=False)
    else:
        mean, var = stats
    return (wav - mean) / torch.sqrt(var + 1e-7)


def resample_frames(feats: torch.Tensor, n_frames: int) -> torch.Tensor:
    """[B, C, N] → [B, C, n_frames], linear with align_corners=True (the official rule)."""
    return F.interpolate(feats, size=n_frames, mode="linear", align_corners=True)


def clip_frames(num_samples: int, fps: float) -> int:
    """Animation frames of a clip, the synthetic data's rule: floor(duration * fps) + 1 (a frame
    on the first and on the last sample). The log-mel encoder and anything scored like it use it."""
    return int(math.floor(num_samples / SAMPLE_RATE * fps + 1e-6)) + 1


class AudioEncoder(nn.Module):
    """Interface: `forward(wav [1, N] float32 at 16 kHz, n_frames, feature_transform=None,
    stats=None) -> [1, n_frames, out_dim]`. `feature_transform` is a trainer's augmentation of the
    features the encoder computes (training.feature_mask); only encoders that compute features
    support it. Every encoder normalises its input per utterance; `stats` (from `clip_stats` on a
    whole clip) makes a window of that clip normalise as the whole clip does, so a window of room
    tone between two lines stays quiet instead of being scaled up to the level of speech."""

    out_dim: int

    def num_frames(self, num_samples: int, fps: float) -> int:
        raise NotImplementedError

    def clip_stats(self, wav: torch.Tensor) -> tuple:
        raise NotImplementedError


# --------------------------------------------------------------------------------------------
# HuBERT / wav2vec2


def hubert_config(**overrides):
    """A HubertConfig with HuBERT-base defaults (the architecture ScanTalk uses)."""
    from transformers import HubertConfig

    base = dict(
        hidden_size=768, num_hidden_layers=12, num_attention_heads=12, intermediate_size=3072,
        conv_dim=(512,) * 7, conv_kernel=(10, 3, 3, 3, 3, 2, 2), conv_stride=(5, 2, 2, 2, 2, 2, 2),
        conv_bias=False, feat_extract_norm="group", do_stable_layer_norm=False,
        num_conv_pos_embeddings=128, num_conv_pos_embedding_groups=16,
    )
    base.update(overrides)
    return HubertConfig(**base)


class TransformerSpeechEncoder(AudioEncoder):
    """HuBERT (default) or wav2vec2; `config` is a dict of the transformers config fields."""

    def __init__(self, kind: str = "hubert", config: dict | None = None, pretrained_dir: str | None = None):
        super().__init__()
        import transformers

        self.kind = kind
        if kind == "hubert":
            cfg_cls, model_cls = transformers.HubertConfig, transformers.HubertModel
        elif kind == "wav2vec2":
            cfg_cls, model_cls = transformers.Wav2Vec2Config, transformers.Wav2Vec2Model
        else:
            raise ValueError(f"unknown speech encoder kind {kind!r} (hubert or wav2vec2)")
        if pretrained_dir is not None:
            # A local folder written by save_pretrained; local_files_only forbids any download.
            self.model = model_cls.from_pretrained(pretrained_dir, local_files_only=True)
        else:
            cfg = hubert_config(**(config or {})) if kind == "hubert" else cfg_cls(**(config or {}))
            self.model = model_cls(cfg)
        self.model.eval()
        self.out_dim = self.model.config.hidden_size

    def config_dict(self) -> dict:
        c = self.model.config
        keys = ["hidden_size", "num_hidden_layers", "num_attention_heads", "intermediate_size",
                "conv_dim", "conv_kernel", "conv_stride", "conv_bias", "feat_extract_norm",
                "do_stable_layer_norm", "num_conv_pos_embeddings", "num_conv_pos_embedding_groups"]
        return {k: (list(v) if isinstance(v, tuple) else v) for k in keys for v in [getattr(c, k)]}

    def conv_frames(self, num_samples: int) -> int:
        n = num_samples
        for k, s in zip(self.model.config.conv_kernel, self.model.config.conv_stride):
            n = (n - k) // s + 1
        return n

    def num_frames(self, num_samples: int, fps: float) -> int:
        # The official inference rule: int(N50 / 50 * fps).
        return int(self.conv_frames(num_samples) / 50.0 * fps)

    def _group_norm_layer(self) -> nn.Module | None:
        """The first convolution layer when it ends in a GroupNorm (feat_extract_norm "group":
        HuBERT-base, wav2vec2-base), which normalises each channel over the whole input again,
        over time: a window of pause alone would be scaled up to the level of speech there."""
        first = self.model.feature_extractor.conv_layers[0]
        return first if isinstance(getattr(first, "layer_norm", None), nn.GroupNorm) else None

    def clip_stats(self, wav: torch.Tensor, block_frames: int = 8192) -> tuple:
        """(mean, population variance, conv) of the whole waveform [1, N]; `conv` is None, or with
        a GroupNorm first layer each channel's (mean, population variance) of that layer's
        convolution over the whole clip, `block_frames` of its output at a time (an hour of audio
        is 11.5 M of them; a block of 512 channels holds 17 MB in float32)."""
        var, mean = torch.var_mean(wav, dim=-1, keepdim=True, unbiased=False)
        layer = self._group_norm_layer()
        if layer is None:
            return mean, var, None
        k, s = layer.conv.kernel_size[0], layer.conv.stride[0]
        n_out = (wav.shape[-1] - k) // s + 1
        sums = torch.zeros(2, layer.conv.out_channels, dtype=torch.float64, device=wav.device)
        for o0 in range(0, n_out, block_frames):
            o1 = min(n_out, o0 + block_frames)
            y = layer.conv(normalize_waveform(wav[:, o0 * s:(o1 - 1) * s + k], (mean, var))[:, None])[0].double()
            sums += torch.stack([y.sum(-1), (y * y).sum(-1)])
        conv_mean = sums[0] / n_out
        conv_var = (sums[1] / n_out - conv_mean ** 2).clamp(min=0)
        return mean, var, (conv_mean.float(), conv_var.float())

    def _conv_features(self, x: torch.Tensor, conv_stats: tuple | None) -> torch.Tensor:
        """The feature extractor on the normalised waveform [1, N]; with `conv_stats` its first
        layer's GroupNorm uses the clip's statistics instead of this window's."""
        if conv_stats is None:
            return self.model.feature_extractor(x)
        first, *rest = self.model.feature_extractor.conv_layers
        gn, (mean, var) = first.layer_norm, conv_stats
        # GroupNorm with one channel per group, given its statistics: batch norm in eval form
        h = F.batch_norm(first.conv(x[:, None]), mean, var, gn.weight, gn.bias, training=False, eps=gn.eps)
        h = first.activation(h)
        for layer in rest:
            h = layer(h)
        return h

    def forward(self, wav: torch.Tensor, n_frames: int, feature_transform=None, stats=None) -> torch.Tensor:
        if feature_transform is not None:
            raise ValueError(f"feature masking needs the logmel audio encoder, not {self.kind}")
        x = normalize_waveform(wav, None if stats is None else stats[:2])
        feats = self._conv_features(x, None if stats is None else stats[2])  # [1, 512, N50]
        feats = resample_frames(feats, n_frames).transpose(1, 2)
        proj = self.model.feature_projection(feats)
        hidden = proj[0] if isinstance(proj, tuple) else proj
        return self.model.encoder(hidden).last_hidden_state


# --------------------------------------------------------------------------------------------
# Log-mel


def mel_filterbank(n_fft: int, n_mels: int, sr: int = SAMPLE_RATE, fmin: float = 20.0, fmax: float = 7600.0) -> np.ndarray:
    """Slaney-style triangular filters on the HTK mel scale, [n_mels, n_fft // 2 + 1]."""
    def hz_to_mel(f):
        return 2595.0 * np.log10(1.0 + np.asarray(f) / 700.0)

    def mel_to_hz(m):
        return 700.0 * (10 ** (np.asarray(m) / 2595.0) - 1.0)

    freqs = np.linspace(0, sr / 2, n_fft // 2 + 1)
    edges = mel_to_hz(np.linspace(hz_to_mel(fmin), hz_to_mel(fmax), n_mels + 2))
    lower = (freqs[None, :] - edges[:-2, None]) / (edges[1:-1] - edges[:-2])[:, None]
    upper = (edges[2:, None] - freqs[None, :]) / (edges[2:] - edges[1:-1])[:, None]
    fb = np.maximum(0.0, np.minimum(lower, upper))
    fb *= (2.0 / (edges[2:] - edges[:-2]))[:, None]  # equal area per filter
    return fb.astype(np.float32)


def lifter_matrix(n: int, keep: int) -> np.ndarray:
    """[n, n] projection of an n-bin log spectrum onto its first `keep` orthonormal DCT-II
    coefficients and back (cepstral liftering): a smoothed spectrum on the same bins."""
    dct = scipy.fft.dct(np.eye(n), norm="ortho", axis=0)[:keep]  # [keep, n]: row k, coefficient k
    return (dct.T @ dct).astype(np.float32)


class LogMelEncoder(AudioEncoder):
    """80-bin log-mel at 100 Hz → conv stack → features at the frame rate.

    The log has a floor so digital silence maps to a finite, constant input (a still face);
    features are normalised per utterance like the waveform of the transformer encoders.
    `norm="bin"` also removes each mel bin's mean over the utterance (cepstral mean normalisation):
    a microphone's or codec's colouring is a constant offset per bin in the log domain, so this
    takes the recording channel out of what the conv stack sees.
    `phones="pocketsphinx"` adds one channel per phone (backend/phone_stream.py): the phone a
    recogniser trained on real speech hears in each 10 ms step, one-hot beside the log-mel.
    `mel=False` leaves the log-mel out (phones alone, plus the loudness of each step).
    `dilation=d` spaces layer i's taps d**i steps apart (a temporal conv net): the context each
    feature hears grows from 1 + (kernel-1)*n_layers steps to 1 + (kernel-1)*(d**n_layers-1)/(d-1)
    at the same weights and cost; a phone is told apart partly by the formant transitions into
    and out of its neighbours.
    `lifter=K` keeps only the first K DCT coefficients of each step's log-mel (0 keeps all): the
    vocal tract's envelope, which names the phone, without most of the pitch harmonics that the
    low bins resolve, in case a path trained on a few synthetic voices leans on them (measured at
    K=20: no gain on real speech beyond the seed spread; docs/experiments.md).
    """

    def __init__(self, n_mels: int = 80, hidden: int = 128, out_dim: int = 128, n_layers: int = 2,
                 kernel: int = 5, hop: int = 160, n_fft: int = 400, norm: str = "utterance",
                 phones: str = "none", mel: bool = True, dilation: int = 1, lifter: int = 0):
        super().__init__()
        if norm not in ("utterance", "bin"):
            raise ValueError(f"logmel norm must be 'utterance' or 'bin', got {norm!r}")
        if phones not in ("none", "pocketsphinx"):
            raise ValueError(f"logmel phones must be 'none' or 'pocketsphinx', got {phones!r}")
        if not mel and phones == "none":
            raise ValueError("logmel with mel = false needs phones = 'pocketsphinx' (it would hear nothing)")
        if int(dilation) != dilation or dilation < 1:
            raise ValueError(f"logmel dilation must be a whole number >= 1, got {dilation!r}")
        if int(lifter) != lifter or not 0 <= lifter <= n_mels:
            raise ValueError(f"logmel lifter must be a whole number from 0 (off) to n_mels = {n_mels}, got {lifter!r}")
        if kernel % 2 == 0:
            raise ValueError(f"logmel kernel must be odd (features stay on their frames), got {kernel}")
        if phones != "none" and hop != 160:
            raise ValueError(f"logmel phones need hop = 160 (10 ms, the recogniser's frame), got {hop}")
        self.norm, self.phones, self.mel = norm, phones, bool(mel)
        self.n_mels, self.hidden, self.n_layers, self.kernel = n_mels, hidden, n_layers, kernel
        self.hop, self.n_fft, self.out_dim, self.dilation = hop, n_fft, out_dim, int(dilation)
        self.lifter = int(lifter)
        if self.lifter:
            self.register_buffer("smoothing", torch.from_numpy(lifter_matrix(n_mels, self.lifter)), persistent=False)
        self.register_buffer("mel_fb", torch.from_numpy(mel_filterbank(n_fft, n_mels)), persistent=False)
        self.register_buffer("window", torch.hann_window(n_fft), persistent=False)
        layers, c = [], (n_mels if mel else 1) + (len(PHONES) if phones != "none" else 0)
        for i in range(n_layers):
            d = self.dilation ** i
            # replicate padding: a clip's edges look like its neighbouring audio, not like a click of zeros
            layers += [nn.Conv1d(c, hidden, kernel, padding=(kernel // 2) * d, dilation=d, padding_mode="replicate"),
                       nn.GELU()]
            c = hidden
        self.convs = nn.Sequential(*layers)
        self.proj = nn.Linear(hidden, out_dim)

    def config_dict(self) -> dict:
        return dict(n_mels=self.n_mels, hidden=self.hidden, out_dim=self.out_dim, n_layers=self.n_layers,
                    kernel=self.kernel, hop=self.hop, n_fft=self.n_fft, norm=self.norm,
                    phones=self.phones, mel=self.mel, dilation=self.dilation, lifter=self.lifter)

    def num_frames(self, num_samples: int, fps: float) -> int:
        return clip_frames(num_samples, fps)

    def log_mel(self, wav: torch.Tensor) -> torch.Tensor:
        spec = torch.stft(wav, self.n_fft, self.hop, window=self.window, center=True, return_complex=True)
        return self._log(spec)

    def _log(self, spec: torch.Tensor) -> torch.Tensor:
        mel = torch.log(self.mel_fb @ spec.abs().pow(2) + 1e-6)  # [B, n_mels, N100]
        return self.smoothing @ mel if self.lifter else mel

    def _log_mel_steps(self, wav: torch.Tensor, j0: int, j1: int, peak) -> torch.Tensor:
        """Steps [j0, j1) of `log_mel(wav / peak)` computed from only the samples they need: what
        the whole clip's transform gives there, to float rounding (reflected at the clip's own ends
        only), without a scaled copy of the whole clip."""
        half, n = self.n_fft // 2, wav.shape[-1]
        idx = torch.arange(j0 * self.hop - half, (j1 - 1) * self.hop - half + self.n_fft, device=wav.device)
        idx = torch.where(idx < 0, -idx, torch.where(idx >= n, 2 * (n - 1) - idx, idx))  # stft's reflect
        return self._log(torch.stft(wav[:, idx] / peak, self.n_fft, self.hop, window=self.window,
                                    center=False, return_complex=True))

    def clip_stats(self, wav: torch.Tensor, block_steps: int = 2048) -> tuple:
        """(peak, mean, std) of `features`' normalisation over the whole clip [1, N], a block of
        steps at a time (an hour's spectrogram at once would take gigabytes)."""
        low, high = torch.aminmax(wav, dim=-1, keepdim=True)  # no |wav| copy of an hour of samples
        peak = torch.maximum(-low, high) + 1e-4
        n_steps = wav.shape[-1] // self.hop + 1
        total = torch.zeros(self.n_mels, dtype=torch.float64, device=wav.device)
        squares = torch.zeros_like(total)
        for j0 in range(0, n_steps, block_steps):
            m = self._log_mel_steps(wav, j0, min(j0 + block_steps, n_steps), peak)[0].double()
            total += m.sum(dim=1)
            squares += m.pow(2).sum(dim=1)
        count = self.n_mels * n_steps
        bins = total / n_steps
        mean = bins if self.norm == "bin" else total.sum() / count
        # What torch.std(dim=(1, 2)) gives after the mean is removed (unbiased, over bins and steps).
        spread = squares.sum() - n_steps * (bins.pow(2).sum() if self.norm == "bin" else self.n_mels * mean ** 2)
        std = (spread.clamp(min=0) / (count - 1)).sqrt()
        mean = (mean[:, None] if self.norm == "bin" else mean.reshape(1, 1))[None]
        return peak, mean.to(wav.dtype), std.reshape(1, 1, 1).to(wav.dtype)

    def features(self, wav: torch.Tensor, stats: tuple | None = None) -> torch.Tensor:
        """[B, C, N100] what the conv stack reads: the normalised log-mel (or, with mel=False,
        its mean over the bins: loudness), then the one-hot phones when the config has them.
        `stats`: `clip_stats` of the clip that `wav` is a window of (default: of `wav` itself)."""
        if stats is None:
            x = wav / (wav.abs().amax(dim=-1, keepdim=True) + 1e-4)  # loudness-invariant, silence stays ~0
            m = self.log_mel(x)
            m = m - m.mean(dim=2 if self.norm == "bin" else (1, 2), keepdim=True)
            m = m / (m.std(dim=(1, 2), keepdim=True) + 1.0)
        else:
            peak, mean, std = stats
            x = wav / peak
            m = (self.log_mel(x) - mean) / (std + 1.0)
        if not self.mel:
            m = m.mean(dim=1, keepdim=True)
        if self.phones == "none":
            return m
        ph = [torch.from_numpy(phone_frames(row, m.shape[2])) for row in x.detach().float().cpu().numpy()]
        return torch.cat([m, torch.stack(ph).to(m)], dim=1)

    def forward(self, wav: torch.Tensor, n_frames: int, feature_transform=None, stats=None) -> torch.Tensor:
        f = self.features(wav, stats)
        h = self.convs(f if feature_transform is None else feature_transform(f))
        h = resample_frames(h, n_frames).transpose(1, 2)
        return self.proj(h)


def build_audio_encoder(spec: dict) -> AudioEncoder:
    """`spec` = {"kind": "hubert"|"wav2vec2"|"logmel", "config": {...}}."""
    kind = spec.get("kind", "hubert")
    if kind in ("hubert", "wav2vec2"):
        return TransformerSpeechEncoder(kind, spec.get("config"), spec.get("pretrained_dir"))
    if kind == "logmel":
        return LogMelEncoder(**spec.get("config", {}))
    raise ValueError(f"unknown audio encoder {kind!r}; use hubert, wav2vec2 or logmel")
