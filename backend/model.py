"""ScanTalk: DiffusionNet encoder on the neutral mesh + speech encoder → BiLSTM, fused per vertex
and per frame, decoded by a DiffusionNet into per-vertex offsets. Works for any topology.
"""
from __future__ import annotations

from dataclasses import asdict, dataclass, field

import torch
from torch import nn

from .audio_encoders import AudioEncoder, build_audio_encoder
from .diffusionnet.layers import DiffusionNet, TorchOperators


@dataclass
class ModelConfig:
    audio: dict = field(default_factory=lambda: {"kind": "hubert", "config": {}})
    latent: int = 32  # geometry and audio latent width (each)
    width: int = 32  # DiffusionNet width
    n_blocks: int = 4
    lstm_layers: int = 3
    k_eig: int = 128
    grad_eps: float = 1e-5
    log_time: bool = False
    fps: float = 30.0  # native frame rate of the motion the model predicts
    # The frame the model was trained in: meshes are mapped to it at inference (see framing.py).
    # centre: the bounding-box centre of a typical training head; size: its bounding-box diagonal.
    frame_centre: tuple = (0.0, 0.0, 0.0)
    frame_size: float = 0.0  # 0 = unknown: feed coordinates as they are
    name: str = "scantalk"
    # Separate small parts of the input mesh (eyeballs, teeth): "model" keeps the decoder's motion
    # (a model trained on heads that have them, like the official FLAME weights); "ride" moves
    # them with the nearest skin (a model trained on one-piece heads: backend/components.py).
    separate_parts: str = "model"
    # Per-dimension standard deviation of the audio latents over training speech; inference
    # stretches each clip's latents to it (backend/speech_spread.py). Empty: left as they are.
    speech_spread: tuple = ()

    def __post_init__(self):
        if self.separate_parts not in ("model", "ride"):
            raise ValueError(f"separate_parts must be 'model' or 'ride', not {self.separate_parts!r}")

    def to_dict(self) -> dict:
        d = asdict(self)
        d["frame_centre"] = list(self.frame_centre)
        d["speech_spread"] = list(self.speech_spread)
        return d

    @classmethod
    def from_dict(cls, d: dict) -> "ModelConfig":
        known = {k: v for k, v in d.items() if k in cls.__dataclass_fields__}
        for key in ("frame_centre", "speech_spread"):
            if key in known:
                known[key] = tuple(known[key])
        return cls(**known)


class ScanTalk(nn.Module):
    def __init__(self, cfg: ModelConfig):
        super().__init__()
        self.cfg = cfg
        self.audio_encoder: AudioEncoder = build_audio_encoder(cfg.audio)
        self.audio_embedding = nn.Linear(self.audio_encoder.out_dim, cfg.latent)
        self.lstm = nn.LSTM(cfg.latent, cfg.latent // 2, num_layers=cfg.lstm_layers,
                            batch_first=True, bidirectional=True)
        self.encoder = DiffusionNet(3, cfg.latent, cfg.width, cfg.n_blocks, log_time=cfg.log_time)
        self.decoder = DiffusionNet(2 * cfg.latent, 3, cfg.width, cfg.n_blocks, log_time=cfg.log_time)
        # An untrained model returns the neutral face.
        nn.init.zeros_(self.decoder.last_lin.weight)
        nn.init.zeros_(self.decoder.last_lin.bias)

    def num_frames(self, num_samples: int, fps: float | None = None) -> int:
        return self.audio_encoder.num_frames(num_samples, fps or self.cfg.fps)

    def encode_audio(self, wav: torch.Tensor, n_frames: int, feature_transform=None) -> torch.Tensor:
        """wav [1, N] at 16 kHz → audio latents [T, latent] (`feature_transform`: training only)."""
        hidden = self.audio_encoder(wav, n_frames, feature_transform)
        out, _ = self.lstm(self.audio_embedding(hidden))
        return out[0]

    def encode_geometry(self, neutral: torch.Tensor, ops: TorchOperators) -> torch.Tensor:
        """neutral [V, 3] → per-vertex features [V, latent]."""
        return self.encoder(neutral, ops)

    def decode_chunks(self, geom: torch.Tensor, audio: torch.Tensor, ops: TorchOperators,
                      chunk_frames: int | None = None, on_chunk=None):
        """Yield offsets [t, V, 3] for consecutive chunks of frames (see `decode`): a clip of any
        length is decoded with memory bounded by one chunk's activations."""
        dec = self.decoder
        w = dec.first_lin.weight
        L = geom.shape[1]
        g = geom @ w[:, :L].T + dec.first_lin.bias  # [V, C]
        a = audio @ w[:, L:].T  # [T, C]
        T = audio.shape[0]
        step = chunk_frames or T
        for s in range(0, T, step):
            x = g[:, None, :] + a[None, s:s + step, :]  # [V, t, C]
            for block in dec.blocks():
                x = block(x, ops)
            yield dec.last_lin(x).transpose(0, 1)
            if on_chunk is not None:
                on_chunk(min(s + step, T), T)

    def decode(self, geom: torch.Tensor, audio: torch.Tensor, ops: TorchOperators,
               chunk_frames: int | None = None, on_chunk=None) -> torch.Tensor:
        """Offsets [T, V, 3] for geometry features [V, L] and audio latents [T, L].

        The decoder's first linear layer acts on [geometry | audio]; it is split into the two
        halves and broadcast-added, so the [V, T, 2L] concatenation is never materialised.
        Frames are independent in the decoder, so long clips are decoded in chunks.
        """
        return torch.cat(list(self.decode_chunks(geom, audio, ops, chunk_frames, on_chunk)), dim=0)

    def forward(self, wav: torch.Tensor, neutral: torch.Tensor, ops: TorchOperators,
                n_frames: int, chunk_frames: int | None = None) -> torch.Tensor:
        """Absolute vertex positions [T, V, 3] = neutral + predicted offsets."""
        audio = self.encode_audio(wav, n_frames)
        geom = self.encode_geometry(neutral, ops)
        return neutral[None] + self.decode(geom, audio, ops, chunk_frames)
