"""Audio-path pre-training: the speech encoder, its BiLSTM and the trainer's viseme head learn to
tell visemes apart on whole clips before any mesh is decoded (`train.audio_pretrain_steps`).

Why a stage of its own: in joint training the audio path hears about phones only through a
cross-entropy term that is small beside the millimetre losses, and the decoded window's gradient is
noisy; at the joint learning rate version 3's audio latents separated the 15 visemes on 42% of the
frames (a third of all frames are silence), so the decoder could not tell an open vowel from a
closure and averaged them. The same path trained alone from scratch, at a lower rate with clipped
gradients, reached 91% on those frames in 8,000 steps on 2 processes (12 min): a whole-clip audio
step costs tens of milliseconds on a CPU core where a joint step costs over a second.
"""
from __future__ import annotations

import argparse
import json
import math
import sys
from pathlib import Path
from typing import Callable, Sequence

import numpy as np
import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import nn

from backend.model import ScanTalk
from training.augment import augment_audio


def audio_parameters(model: ScanTalk) -> list[nn.Parameter]:
    """The parameters between the waveform and the audio latents the decoder reads."""
    mods = (model.audio_encoder, model.audio_embedding, model.lstm)
    return [p for m in mods for p in m.parameters() if p.requires_grad]


def _frame_scores(model, head, wav: np.ndarray, labels: torch.Tensor):
    """(cross-entropy sum, correct frames, labelled frames) of one clip; labels -1 are skipped."""
    x = torch.from_numpy(np.ascontiguousarray(wav, np.float32))[None].to(labels.device)
    logits = head(model.encode_audio(x, len(labels)))
    known = labels >= 0
    ce = F.cross_entropy(logits[known], labels[known], reduction="sum")
    correct = (logits[known].argmax(1) == labels[known]).sum()
    return ce, correct, int(known.sum())


@torch.no_grad()
def viseme_scores(model, head, clips: Sequence, wav_of: Callable, labels_of: Callable, d) -> dict:
    """Mean cross-entropy and accuracy of the viseme head over every labelled frame of `clips`
    (sharded over the ranks, summed across them)."""
    was = model.training, head.training
    model.eval()
    head.eval()
    ce = correct = n = 0.0
    for clip in clips[d.rank::d.world]:
        c, k, m = _frame_scores(model, head, wav_of(clip), labels_of(clip))
        ce, correct, n = ce + float(c), correct + float(k), n + m
    if d.on:
        t = torch.tensor([ce, correct, n], dtype=torch.float64)
        dist.all_reduce(t)
        ce, correct, n = t.tolist()
    model.train(was[0])
    head.train(was[1])
    return {"ce": ce / max(n, 1.0), "acc": correct / max(n, 1.0), "frames": n}


def pretrain_audio(model: ScanTalk, head: nn.Module, clips: Sequence, wav_of: Callable,
                   labels_of: Callable, *, steps: int, lr: float, grad_clip: float, aug, seed: int,
                   d, log, val_clips: Sequence = (), log_every: int = 250) -> dict:
    """Train the audio path and `head` on viseme cross-entropy for `steps` steps of one clip per
    rank (gradients averaged over the ranks, so the replicas stay identical). `wav_of(clip)` gives
    the 16 kHz waveform, `labels_of(clip)` the viseme class of every motion frame (-1 unknown).
    Audio augmentation as in joint training; cosine decay from lr to lr/10. Returns the validation
    scores before and after."""
    params = audio_parameters(model) + list(head.parameters())
    opt = torch.optim.Adam(params, lr=lr)
    before = viseme_scores(model, head, val_clips, wav_of, labels_of, d) if val_clips else None
    if before:
        log(f"audio pre-training: {steps} steps; validation visemes before: "
            f"accuracy {before['acc']:.3f}, cross-entropy {before['ce']:.3f}")
    n, per_rank = len(clips), max(1, len(clips) // d.world)
    ce_sum = acc_sum = 0.0
    for step in range(steps):
        epoch, k = divmod(step, per_rank)
        clip = clips[np.random.default_rng([seed, 17, epoch]).permutation(n)[(k * d.world + d.rank) % n]]
        rng = np.random.default_rng([seed, 19, d.rank, step])
        wav = wav_of(clip)
        if aug is not None and aug.any_audio:
            wav, _ = augment_audio(wav, aug, rng)
        ce, correct, m = _frame_scores(model, head, wav, labels_of(clip))
        loss = ce / max(m, 1)
        for g in opt.param_groups:
            g["lr"] = lr * (0.1 + 0.45 * (1 + math.cos(math.pi * step / max(1, steps))))
        opt.zero_grad(set_to_none=True)
        loss.backward()
        if d.on:  # one collective for every gradient, not one per tensor
            grads = [torch.zeros_like(p) if p.grad is None else p.grad for p in params]
            flat = torch.cat([g.reshape(-1) for g in grads])
            dist.all_reduce(flat)
            flat /= d.world
            for p, part in zip(params, torch.split(flat, [g.numel() for g in grads])):
                p.grad = part.view_as(p)
        if grad_clip > 0:
            torch.nn.utils.clip_grad_norm_(params, grad_clip)
        opt.step()
        ce_sum, acc_sum = ce_sum + loss.item(), acc_sum + float(correct) / max(m, 1)
        if (step + 1) % log_every == 0 or step + 1 == steps:
            done = (step % log_every) + 1
            log(f"audio pre-training step {step + 1}: viseme cross-entropy {ce_sum / done:.3f}, "
                f"accuracy {acc_sum / done:.3f}")
            ce_sum = acc_sum = 0.0
    after = viseme_scores(model, head, val_clips, wav_of, labels_of, d) if val_clips else None
    if after:
        log(f"audio pre-training done; validation visemes: accuracy {after['acc']:.3f}, "
            f"cross-entropy {after['ce']:.3f}")
    return {"before": before, "after": after}


# --------------------------------------------------------------------------- real speech

def real_speech_scores(checkpoint, speech_dir) -> dict:
    """The viseme head's accuracy on real recordings: a folder of .wav files with a CMU
    `transcription` file, phones from pocketsphinx forced alignment (training.articulation).
    `checkpoint` is a trainer's last.pt (the head lives there, not in the model file). This is the
    synthetic-to-real gap of the audio path itself, before any mesh: labels from an aligner are
    rougher than the generator's, so compare models on the same clips, not with the synthetic score."""
    from backend.audio_io import load_audio
    from backend.checkpoint import read_file
    from backend.model import ModelConfig
    from training.articulation import align, read_transcriptions
    from training.train import N_VISEMES, Dist, viseme_labels

    data = read_file(checkpoint)
    if "phone" not in (data.get("aux_heads") or {}):
        raise ValueError(f"{checkpoint} has no viseme head: give a trainer's last.pt trained with loss.phone > 0")
    model = ScanTalk(ModelConfig.from_dict(data["config"]))
    model.load_state_dict(data["model"])
    head = nn.Linear(model.cfg.latent, N_VISEMES)
    head.load_state_dict(data["aux_heads"]["phone"])
    # labels as the head learned them: phones shifted by the run's lead
    phone_lead = float(((data.get("train_config") or {}).get("loss") or {}).get("phone_lead", 0.06))
    folder = Path(speech_dir)
    texts = read_transcriptions(folder / "transcription") if (folder / "transcription").is_file() else {}
    wavs, labels = {}, {}
    for path in sorted(folder.glob("*.wav")):
        samples = load_audio(path)
        phones, _ = align(samples, 16000, texts.get(path.stem))
        n = model.num_frames(len(samples))
        wavs[path.stem] = samples
        labels[path.stem] = viseme_labels(phones, n, model.cfg.fps, phone_lead)
    per_clip = {c: viseme_scores(model, head, [c], wavs.__getitem__, labels.__getitem__, Dist()) for c in sorted(wavs)}
    n = sum(s["frames"] for s in per_clip.values())
    pooled = {k: sum(s[k] * s["frames"] for s in per_clip.values()) / max(n, 1.0) for k in ("ce", "acc")}
    return {"checkpoint": str(checkpoint), "pooled": {**pooled, "frames": n}, "clips": per_clip}


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="python -m training.audio_pretrain",
                                description="Viseme accuracy of a trainer checkpoint's audio path on real recordings.")
    p.add_argument("--checkpoint", required=True, help="a trainer's last.pt (it holds the viseme head)")
    p.add_argument("--speech-dir", required=True, help="folder of .wav files with a CMU `transcription` file")
    p.add_argument("--json", help="write the scores here too")
    a = p.parse_args(argv)
    try:
        res = real_speech_scores(a.checkpoint, a.speech_dir)
    except (ValueError, RuntimeError, OSError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    for name, s in res["clips"].items():
        print(f"{name}: accuracy {s['acc']:.3f}, cross-entropy {s['ce']:.3f} ({s['frames']:.0f} frames)")
    s = res["pooled"]
    print(f"all: accuracy {s['acc']:.3f}, cross-entropy {s['ce']:.3f} ({s['frames']:.0f} frames)")
    if a.json:
        Path(a.json).write_text(json.dumps(res, indent=2), encoding="utf-8")
    return 0


if __name__ == "__main__":
    sys.exit(main())
