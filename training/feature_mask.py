"""SpecAugment-style masking of the log-mel features during training (Park et al., 2019): a few
random bands of mel bins and spans of 10 ms steps are set to the utterance mean (zero after the
encoder's normalisation), so the audio path cannot lean on any one band of a voice's spectrum or
on one instant, and must read visemes from what is left around them. The trainer passes the
masker to `ScanTalk.encode_audio(..., feature_transform=)`; inference never masks.

`[augment] spec_freq_masks / spec_freq_width / spec_time_masks / spec_time_width` (training.config);
each band or span is 0 to its width wide, placed uniformly. Every draw comes from the generator
given, which the trainer seeds per step in a stream of its own, so turning masking on leaves every
other random choice of a run as it was.
"""
from __future__ import annotations

from functools import partial
from typing import Callable

import numpy as np
import torch


def mask_features(features: torch.Tensor, rng: np.random.Generator, freq_masks: int, freq_width: int,
                  time_masks: int, time_width: int) -> torch.Tensor:
    """[B, C, N] features with `freq_masks` bands of channels and `time_masks` spans of steps zeroed
    (the same for every row of the batch); the input is not modified."""
    out = features.clone()
    _, c, n = features.shape
    for _ in range(freq_masks):
        w = int(rng.integers(0, min(freq_width, c) + 1))
        f0 = int(rng.integers(0, c - w + 1))
        out[:, f0:f0 + w, :] = 0.0
    for _ in range(time_masks):
        w = int(rng.integers(0, min(time_width, n) + 1))
        t0 = int(rng.integers(0, n - w + 1))
        out[:, :, t0:t0 + w] = 0.0
    return out


def feature_masker(aug, rng: np.random.Generator) -> Callable | None:
    """The masking `aug` (an [augment] section) asks for, drawing from `rng`; None when it asks for none."""
    if aug is None or (aug.spec_freq_masks <= 0 and aug.spec_time_masks <= 0):
        return None
    if min(aug.spec_freq_width, aug.spec_time_width) < 0:
        raise ValueError("augment.spec_freq_width and spec_time_width must be 0 or more")
    return partial(mask_features, rng=rng, freq_masks=aug.spec_freq_masks, freq_width=aug.spec_freq_width,
                   time_masks=aug.spec_time_masks, time_width=aug.spec_time_width)
