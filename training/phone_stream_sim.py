"""The recogniser's phone stream made from the generator's own phones, for training a model that
reads pocketsphinx's phones beside the log-mel (`model.audio.config.phones = "pocketsphinx"`).

Why: pocketsphinx's acoustic model was trained on real speech. On the text-to-speech voices of
the training data its phone loop names the viseme of 62% of the frames and hears 36% of the
bilabial frames; on real recordings 69-72% and 65-68% (`python -m training.audio_pretrain
--phone-loop`). A model trained only on its output for synthetic voices learns that the stream is
weak evidence, most of all for bilabials, and on real speech leans on the log-mel, which it reads
worse there (51-63% of the frames). `[augment] phones_from_labels_prob` gives that share of the
examples a stream of the generator's true phones instead, each phone swapped for a random one
with probability `phones_from_labels_error` and its edges moved by up to 20 ms, so the model also
learns what the stream is worth when it is about as right as the recogniser is on real speech.
Inference always reads the recogniser.
"""
from __future__ import annotations

from typing import Callable, Sequence

import numpy as np
import torch

from backend.phone_stream import FRAME_SECONDS, HOP, PHONES

# The generator's phone names (lower-case ARPAbet for every language) that are not the recogniser's.
ALIASES = {"ax": "AH", "ix": "IH", "dx": "D", "sil": "SIL"}
_INDEX = {p: i for i, p in enumerate(PHONES)}


def phone_index(name: str) -> int:
    """The recogniser's channel for a generator phone name (SIL for anything it has no phone for)."""
    return _INDEX.get(ALIASES.get(name, name.upper()), 0)


def label_stream(phones: Sequence, times: np.ndarray, rng: np.random.Generator, error: float,
                 jitter: float = 0.02) -> np.ndarray:
    """[len(PHONES), len(times)] one-hot: the phone of `phones` ([(name, start_s, end_s)], the
    generator's timings) sounding at each of `times` (seconds of the original clip), SIL where none
    does. Each phone is swapped for a uniformly drawn other non-silent phone with probability
    `error`, and each edge between phones moves by up to `jitter` seconds either way."""
    out = np.zeros((len(PHONES), len(times)), np.float32)
    out[0] = 1.0
    for name, start, end in phones:
        k = phone_index(name)
        if k and error > 0 and rng.random() < error:
            k = int(rng.integers(1, len(PHONES) - 1))
            k += k >= phone_index(name)  # any phone but its own
        a, b = float(start), float(end)
        if jitter > 0:
            a, b = a + rng.uniform(-jitter, jitter), b + rng.uniform(-jitter, jitter)
        on = (times >= a) & (times < b)
        out[:, on] = 0.0
        out[k, on] = 1.0
    return out


def stream_times(n_samples: int, fps: float, pad0: int = 0, speed: float = 1.0) -> np.ndarray:
    """Original-clip time of each 10 ms feature step of a clip's (padded, sped-up) waveform: the
    log-mel has one step per HOP samples, centred, so n_samples // HOP + 1 of them."""
    steps = np.arange(n_samples // HOP + 1)
    return (steps * FRAME_SECONDS - pad0 / fps) * speed


def replace_phones(stream: np.ndarray) -> Callable[[torch.Tensor], torch.Tensor]:
    """A feature transform (ScanTalk.encode_audio's `feature_transform`) that puts `stream` where
    the encoder's features hold the recogniser's phones (their last len(PHONES) channels)."""
    def apply(features: torch.Tensor) -> torch.Tensor:
        out = features.clone()
        n = min(out.shape[2], stream.shape[1])
        out[:, -len(PHONES):, :] = 0.0
        out[:, -len(PHONES):, :n] = torch.from_numpy(stream[:, :n]).to(out)
        return out
    return apply


def chain(*transforms: Callable | None) -> Callable | None:
    """The transforms that are not None, applied in order; None when there are none."""
    todo = [t for t in transforms if t is not None]
    if not todo:
        return None

    def apply(features: torch.Tensor) -> torch.Tensor:
        for t in todo:
            features = t(features)
        return features
    return apply


def phones_from_labels(aug, phones: Sequence | None, times: np.ndarray,
                       rng: np.random.Generator) -> Callable | None:
    """For one example: the transform that swaps in the generator's phones, with probability
    aug.phones_from_labels_prob (None otherwise, or when the clip has no phone timings). `rng` is a
    stream of its own, so turning this on changes no other random choice of a run."""
    if aug is None or aug.phones_from_labels_prob <= 0 or not phones:
        return None
    if rng.random() >= aug.phones_from_labels_prob:
        return None
    return replace_phones(label_stream(phones, times, rng, aug.phones_from_labels_error))
