"""Give a clip's audio latents the spread the model learned from, before the decoder reads them.

A model trained on synthetic voices encodes real recorded speech with less spread: over the
speech frames of a real clip its latents vary 5-30% less per dimension than over synthetic
speech (the bundled model: 0.70-0.95x, median per set), and a decoder that reads less varied
latents holds the lips half open, between the open vowels and the /p b m/ closures. So each
clip's latents are stretched about the clip's own mean, per dimension, until their spread over
its speech frames is the spread measured over the training speech (`ModelConfig.speech_spread`,
written by `python -m training.speech_spread`). The clip's mean stays: moving it to the training
mean too opened every frame wider, the bilabials most (docs/experiments.md).

On the kind of speech the model was trained on, the spread already matches and the stretch is
close to nothing; a clip that is not speech (MAX_CLIP_STRETCH) and a model without
`speech_spread` (the official weights) are left as they are.
"""
from __future__ import annotations

import torch

from .audio_encoders import SAMPLE_RATE

SPEECH_DB = 30.0  # a speech frame: within 30 dB of the clip's loud frames (95th percentile)
MIN_SPEECH_FRAMES = 8  # fewer: no spread to measure, the latents are left as they are
# A bound on the stretch of one dimension, for degenerate input (a dimension nearly constant over
# the clip). Real recordings need up to 1.5-2.2x (the bundled model, 90th percentile of the
# dimensions of each judged set); only a few dimensions of the telephone set reach 3-4.5x.
MAX_STRETCH = 4.0
# A clip whose latents vary less than half as widely as the training speech's (the median over
# dimensions) is not speech the model knows: music, steady noise, hiss. Stretching it would make
# the lips flap on it as much as on speech, so it is left as it is. Speech needs 0.9-1.9x per
# clip (the median over dimensions, the bundled model: all 200 synthetic test clips and the 91
# real recordings of the articulation judges), white or pink noise, hiss and a chord 2.1-16x.
MAX_CLIP_STRETCH = 2.0
BLOCK_FRAMES = 4096  # frame energies a block at a time: an hour of audio without an hour of doubles


def speech_frames(levels: torch.Tensor) -> torch.Tensor:
    """[n_frames] bool: the animation frames that are speech by energy, given their `levels`
    (frame_levels'): within SPEECH_DB of the clip's 95th-percentile frame."""
    return levels > torch.quantile(levels, 0.95) - SPEECH_DB


def frame_levels(wav: torch.Tensor, n_frames: int, fps: float) -> torch.Tensor:
    """[n_frames] float64: each animation frame's level in dB full scale. Frame i covers the
    samples from i / fps to (i + 1) / fps; frames past the end are silent (-120 dB)."""
    x = wav.reshape(-1)
    edges = torch.round(torch.arange(n_frames + 1, dtype=torch.float64) * (SAMPLE_RATE / fps)).long()
    edges = edges.clamp(max=len(x)).tolist()
    energy = []
    for f0 in range(0, n_frames, BLOCK_FRAMES):
        f1 = min(n_frames, f0 + BLOCK_FRAMES)
        seg = x[edges[f0]:edges[f1]].double()
        power = torch.cat([seg.new_zeros(1), torch.cumsum(seg * seg, 0)])
        e = torch.tensor(edges[f0:f1 + 1], device=seg.device) - edges[f0]
        energy.append((power[e[1:]] - power[e[:-1]]) / (e[1:] - e[:-1]).clamp(min=1))
    return 10 * torch.log10(torch.cat(energy) + 1e-12)


def clip_stretch(latents: torch.Tensor, speech: torch.Tensor, spread) -> torch.Tensor | None:
    """[L]: how much each dimension of the clip's `speech` frames must be stretched to vary as
    the training speech did (`spread`); None when there is nothing to measure (no spread, fewer
    than MIN_SPEECH_FRAMES speech frames)."""
    if spread is None or len(spread) == 0 or int(speech.sum()) < MIN_SPEECH_FRAMES:
        return None
    target = torch.as_tensor(spread, dtype=latents.dtype, device=latents.device)
    if target.shape != latents.shape[1:]:
        raise ValueError(f"speech_spread has {target.numel()} values for {latents.shape[1]} latent dimensions")
    return target / latents[speech.to(latents.device)].std(0).clamp(min=1e-8)


def is_speech_like(stretch: torch.Tensor | None) -> bool:
    """False for a clip the model hears as far less varied than speech (MAX_CLIP_STRETCH)."""
    return stretch is None or float(stretch.detach().median()) <= MAX_CLIP_STRETCH


def apply_stretch(latents: torch.Tensor, speech: torch.Tensor, stretch: torch.Tensor | None) -> torch.Tensor:
    """latents [T, L] stretched by `stretch` (clip_stretch's) about their mean over the `speech`
    frames; every frame moves by the same affine map. As they are when there is nothing to
    stretch or the clip is not speech-like."""
    if stretch is None or not is_speech_like(stretch):
        return latents
    mean = latents[speech.to(latents.device)].mean(0)
    return mean + (latents - mean) * stretch.clamp(1 / MAX_STRETCH, MAX_STRETCH)

