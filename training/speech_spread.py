"""Measure how widely a model's audio latents vary over its training speech, and write that
spread into the model, so that inference stretches every clip's latents to it
(backend/speech_spread.py explains why):

    python -m training.speech_spread --checkpoint RUN/last.pt --data DATA --out model.pt

DATA is the run's dataset (the general layout: training.synth's output); the clean audio of
`--split` (train by default: what the model learned from) is encoded, and the standard deviation
of each latent dimension over all speech frames, pooled, is stored as `speech_spread` in the
model's config. The output holds the weights and config only (what the backend loads); it may
be the input file. A checkpoint measured again gets the same spread: the measure reads the
latents as they come out of the BiLSTM, never stretched.

Judge a model with and without its spread (tools/evaluate_model.sh on both files) before shipping
it: the stretch helped version 4 and v14 on every set of real speech and hurt version 3, whose
audio path hardly tells visemes apart there (docs/experiments.md).
"""
from __future__ import annotations

import argparse
import sys
from dataclasses import replace

import numpy as np
import torch


@torch.no_grad()
def measure_spread(model, wavs) -> tuple[np.ndarray, int]:
    """Per-dimension standard deviation of `model`'s raw audio latents over the speech frames of
    every waveform in `wavs` (16 kHz float arrays), pooled; and the number of those frames."""
    from backend.inference import raw_latents
    from backend.speech_spread import frame_levels, speech_frames

    fps = model.cfg.fps
    frames = []
    for wav in wavs:
        w = torch.from_numpy(np.ascontiguousarray(wav, np.float32))[None]
        n = model.num_frames(w.shape[1], fps)
        frames.append(raw_latents(model, w, n, fps)[speech_frames(frame_levels(w, n, fps))].double())
    pooled = torch.cat(frames) if frames else torch.zeros(0, model.cfg.latent, dtype=torch.float64)
    if len(pooled) < 2:
        raise ValueError("no speech frames to measure: are the clips silent?")
    return pooled.std(0).numpy(), len(pooled)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="python -m training.speech_spread", description=__doc__.split("\n\n")[0])
    p.add_argument("--checkpoint", required=True, help="the model (a run's last.pt or best.pt, or a model file)")
    p.add_argument("--data", required=True, help="the dataset it was trained on (general layout)")
    p.add_argument("--split", default="train", help="whose audio to measure (default: train)")
    p.add_argument("--out", required=True, help="model file to write (may be the checkpoint itself)")
    args = p.parse_args(argv)

    from backend.audio_io import load_audio
    from backend.checkpoint import CheckpointError, load_model, save_model
    from training.datasets import DatasetError, read_dataset

    try:
        model = load_model(args.checkpoint)
        clips = list(read_dataset("general", args.data, args.split))
        spread, frames = measure_spread(model, (load_audio(c.wav_path) for c in clips))
    except (CheckpointError, DatasetError, FileNotFoundError, ValueError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    before = np.asarray(model.cfg.speech_spread, np.float64)
    model.cfg = replace(model.cfg, speech_spread=tuple(round(float(v), 6) for v in spread))
    save_model(args.out, model)
    change = "" if before.size != spread.size else \
        f"; largest change against the spread it had: {float(np.abs(spread / before - 1).max()):.1%}"
    print(f"{args.out}: speech_spread over {frames} speech frames of {len(clips)} clips "
          f"(mean {spread.mean():.3f}, {spread.min():.3f}-{spread.max():.3f}){change}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
