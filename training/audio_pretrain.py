"""Audio-path pre-training: the speech encoder, its BiLSTM and the trainer's viseme head learn to
tell visemes apart on whole clips before any mesh is decoded (`train.audio_pretrain_steps`).

Why a stage of its own: in joint training the audio path hears about phones only through a
cross-entropy term that is small beside the millimetre losses, and the decoded window's gradient is
noisy; at the joint learning rate version 3's audio latents separated the 15 visemes on 42% of the
frames (a third of all frames are silence), so the decoder could not tell an open vowel from a
closure and averaged them. The same path trained alone from scratch, at a lower rate with clipped
gradients, reached 91% on those frames in 8,000 steps on 2 processes (12 min): a whole-clip audio
step costs tens of milliseconds on a CPU core where a joint step costs over a second.

`python -m training.audio_pretrain --checkpoint last.pt` scores a run's audio path alone: on real
recordings (`--speech-dir`, pocketsphinx-aligned) or on a synthetic split (`--data`, the
generator's phones; `--aligned` also scores its English clips against pocketsphinx's phones);
`--confusion` adds each viseme's recall and how often the bilabials are heard after silence, a
vowel or a consonant (a bilabial the head misses after an open vowel leaves the mouth open).
`--phone-loop` scores pocketsphinx's free phone loop in the same way: what a recogniser trained
on real speech hears, beside an audio path that has heard only text-to-speech.
"""
from __future__ import annotations

import argparse
import json
import math
import re
import sys
from itertools import groupby
from pathlib import Path
from typing import Callable, NamedTuple, Sequence

import numpy as np
import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import nn

from backend.audio_encoders import clip_frames
from backend.model import ScanTalk
from training.augment import augment_audio, speed_frame_positions, speed_perturb
from training.feature_mask import feature_masker
from training.losses import PP_CLASS, phone_loss
from training.phone_stream_sim import chain


def audio_parameters(model: ScanTalk) -> list[nn.Parameter]:
    """The parameters between the waveform and the audio latents the decoder reads."""
    mods = (model.audio_encoder, model.audio_embedding, model.lstm)
    return [p for m in mods for p in m.parameters() if p.requires_grad]


def sped_up(wav: np.ndarray, labels: torch.Tensor, fps: float, factor: float) -> tuple[np.ndarray, torch.Tensor]:
    """The clip played `factor` times faster (pitch moves with it, as joint training's speed
    perturbation) and each new frame's label: the one of the source frame nearest its time."""
    wav = speed_perturb(wav, factor)
    src = np.rint(speed_frame_positions(len(wav), fps, factor, len(labels))).astype(np.int64)
    return wav, labels[torch.from_numpy(src).to(labels.device)]


def _logits(model, head, wav: np.ndarray, labels: torch.Tensor, feature_transform=None) -> torch.Tensor:
    """[frames, visemes] of one clip, one frame per label, on the labels' device."""
    x = torch.from_numpy(np.ascontiguousarray(wav, np.float32))[None].to(labels.device)
    return head(model.encode_audio(x, len(labels), feature_transform))


def _frame_scores(logits: torch.Tensor, labels: torch.Tensor):
    """(cross-entropy sum, correct frames, labelled frames, predicted class of each labelled frame)
    of one clip; labels -1 are skipped."""
    known = labels >= 0
    ce = F.cross_entropy(logits[known], labels[known], reduction="sum")
    pred = logits[known].argmax(1)
    return ce, (pred == labels[known]).sum(), int(known.sum()), pred


@torch.no_grad()
def viseme_scores(model, head, clips: Sequence, wav_of: Callable, labels_of: Callable, d) -> dict:
    """Mean cross-entropy and accuracy of the viseme head over every labelled frame of `clips`
    (sharded over the ranks, summed across them)."""
    was = model.training, head.training
    model.eval()
    head.eval()
    ce = correct = n = 0.0
    for clip in clips[d.rank::d.world]:
        y = labels_of(clip)
        c, k, m, _ = _frame_scores(_logits(model, head, wav_of(clip), y), y)
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
                   d, log, val_clips: Sequence = (), log_every: int = 250,
                   bilabial_weight: float = 1.0, phone_stream: Callable | None = None,
                   speed: bool = False) -> dict:
    """Train the audio path and `head` on viseme cross-entropy for `steps` steps of one clip per
    rank (gradients averaged over the ranks, so the replicas stay identical). `wav_of(clip)` gives
    the 16 kHz waveform, `labels_of(clip)` the viseme class of every motion frame (-1 unknown).
    Audio augmentation and feature masking as in joint training; cosine decay from lr to lr/10;
    the PP frames weigh `bilabial_weight` (training.losses.phone_loss); `phone_stream(clip,
    n_samples, rng)` may give a feature transform that swaps in the generator's phones
    (training.phone_stream_sim). `speed`: `aug`'s speed perturbation too (speed_prob, speed), the
    labels re-timed (`sped_up`); off by default, so runs without it draw the same augmentations as
    before it existed. Returns the validation scores before and after
    (unweighted)."""
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
        y = labels_of(clip)
        if speed:
            speed_rng = np.random.default_rng([seed, 29, d.rank, step])
            if speed_rng.random() < aug.speed_prob:
                wav, y = sped_up(wav, y, clip.fps, float(speed_rng.uniform(*aug.speed)))
        stream = None if phone_stream is None else \
            phone_stream(clip, len(wav), np.random.default_rng([seed, 31, d.rank, step]))
        masker = feature_masker(aug, np.random.default_rng([seed, 23, d.rank, step]))
        logits = _logits(model, head, wav, y, chain(stream, masker))
        loss = phone_loss(logits, y, bilabial_weight)
        known = y >= 0
        correct, m = (logits[known].argmax(1) == y[known]).sum(), int(known.sum())
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


# --------------------------------------------------------------------------- scoring an audio path

class Scorer(NamedTuple):
    """What names a clip's visemes frame by frame, and how its frames are labelled."""
    name: str
    logits: Callable[[np.ndarray, int, float], torch.Tensor]  # (wav, frames, fps) -> [frames, visemes]
    num_frames: Callable[[int], int]  # frames of a real recording of that many 16 kHz samples
    fps: float
    phone_lead: float  # labels show the phone sounding this many seconds later


def load_scorer(checkpoint) -> Scorer:
    """A trainer's last.pt (the viseme head lives there, not in the model file); its labels are
    read as the head learned them: phones shifted by the run's lead."""
    from backend.checkpoint import read_file
    from backend.model import ModelConfig
    from training.config import LossSection
    from training.train import N_VISEMES

    data = read_file(checkpoint)
    if "phone" not in (data.get("aux_heads") or {}):
        raise ValueError(f"{checkpoint} has no viseme head: give a trainer's last.pt trained with loss.phone > 0")
    model = ScanTalk(ModelConfig.from_dict(data["config"]))
    model.load_state_dict(data["model"])
    head = nn.Linear(model.cfg.latent, N_VISEMES)
    head.load_state_dict(data["aux_heads"]["phone"])
    model.eval()
    head.eval()
    loss = (data.get("train_config") or {}).get("loss") or {}

    @torch.no_grad()
    def logits(wav, n_frames, fps):
        return _logits(model, head, wav, torch.empty(n_frames))

    return Scorer(str(checkpoint), logits, model.num_frames, model.cfg.fps,
                  float(loss.get("phone_lead", LossSection().phone_lead)))


PHONE_LOOP = "pocketsphinx phone loop"


def phone_loop_scorer(fps: float = 30.0, phone_lead: float = 0.032) -> Scorer:
    """pocketsphinx's free phone loop (backend/phone_stream.py: an acoustic model trained on real
    speech, no words) as a viseme classifier, labelled as the default model's runs are (the lead of
    training/configs/default_v4.toml), so it is scored on the same frames as their heads: a yardstick
    for the audio path on real speech that owes nothing to text-to-speech. Its logits are one-hot
    (hard decisions), so its bilabial AUC is a balanced accuracy and its cross-entropy means little;
    compare its accuracy, bilabials heard and false PP runs. The judges' labels come from the same
    acoustic model's forced alignment, which flatters it a little: on synthetic English it scores
    4 points higher against that alignment than against the generator's phones, where version 4's
    audio path scores 12 points lower."""
    from backend.phone_stream import FRAME_SECONDS, recognise_phones
    from training.synth.visemes import VISEMES
    from training.train import N_VISEMES, viseme_labels

    silence = VISEMES.index("sil")

    def logits(wav, n_frames, fps_):
        heard = [(p, a * FRAME_SECONDS, b * FRAME_SECONDS) for p, a, b in recognise_phones(wav)]
        vis = viseme_labels(heard, n_frames, fps_, phone_lead)
        vis[vis < 0] = silence  # past the recogniser's last segment
        return F.one_hot(vis, N_VISEMES).float()

    return Scorer(PHONE_LOOP, logits, lambda n_samples: clip_frames(n_samples, fps), fps, phone_lead)


def scorer_of(checkpoint) -> Scorer:
    """A checkpoint's audio path, or the phone loop when `checkpoint` is None."""
    return phone_loop_scorer() if checkpoint is None else load_scorer(checkpoint)


def clip_logits(scorer: Scorer, wavs: dict, labels: dict, fps: dict | None = None) -> dict:
    """The scorer's logits for every clip, once: every score below is read from these."""
    return {c: scorer.logits(wavs[c], len(labels[c]), (fps or {}).get(c, scorer.fps)) for c in sorted(wavs)}


VOWEL_VISEMES = ("aa", "E", "ih", "oh", "ou")
CONTEXTS = ("silence", "vowel", "consonant")  # what comes before a bilabial


def bilabials_heard(labels: torch.Tensor, pred: torch.Tensor) -> dict:
    """{context: [heard, runs]} over the runs of PP frames among a clip's labelled frames: heard when
    the head calls at least one frame of the run PP; the context is the viseme of the run before
    (silence, a vowel, a consonant; silence at the start). A closure after an open vowel is the one
    a miss leaves open, so a recall by context says where a model's missed closures come from."""
    from training.synth.visemes import VISEMES

    pp, sil = PP_CLASS, VISEMES.index("sil")
    vowels = {VISEMES.index(v) for v in VOWEL_VISEMES}
    out = {ctx: [0, 0] for ctx in CONTEXTS}
    before, i = sil, 0
    for v, run in groupby(labels[labels >= 0].tolist()):
        j = i + len(list(run))
        if v == pp:
            ctx = "silence" if before == sil else "vowel" if before in vowels else "consonant"
            out[ctx][0] += int(bool((pred[i:j] == pp).any()))
            out[ctx][1] += 1
        before, i = v, j
    return out


def false_bilabials(labels: torch.Tensor, pred: torch.Tensor, slack: int = 2) -> tuple[int, int]:
    """(runs of frames the head calls PP with no labelled PP frame within `slack` frames, all such
    runs) among a clip's labelled frames: each false one would shut the lips where the speech has
    no closure, so a head that hears more bilabials only by calling PP more often shows here."""
    y = labels[labels >= 0]
    near = F.max_pool1d((y == PP_CLASS).float()[None, None], 2 * slack + 1, 1, slack)[0, 0] > 0
    false = runs = i = 0
    for v, run in groupby(pred.tolist()):
        j = i + len(list(run))
        if v == PP_CLASS:
            runs += 1
            false += int(not bool(near[i:j].any()))
        i = j
    return false, runs


def bilabial_auc(logits: dict, labels: dict) -> float:
    """How well the head's PP score ranks bilabial frames above all others (area under the ROC
    curve over every labelled frame): unlike recall it does not move when a model merely calls PP
    more often, e.g. trained with a larger loss.phone_bilabial_weight."""
    from scipy.stats import mannwhitneyu

    score, pos = [], []
    for c in sorted(labels):
        known = labels[c] >= 0
        score.append(torch.log_softmax(logits[c][known], 1)[:, PP_CLASS])
        pos.append(labels[c][known] == PP_CLASS)
    score, pos = torch.cat(score).double().numpy(), torch.cat(pos).numpy()
    if pos.all() or not pos.any():
        return float("nan")
    return float(mannwhitneyu(score[pos], score[~pos]).statistic / (pos.sum() * (~pos).sum()))


def score_logits(logits: dict, labels: dict) -> dict:
    """Scores per clip of `labels` and pooled, and the confusion matrix (rows: the label, columns:
    the head's guess; viseme order of training.synth.visemes.VISEMES)."""
    from training.synth.visemes import VISEMES

    k = len(VISEMES)
    confusion = torch.zeros(k * k, dtype=torch.long)
    per_clip = {}
    heard = {ctx: [0, 0] for ctx in CONTEXTS}
    false = [0, 0]
    for c in sorted(labels):
        y = labels[c]
        ce, correct, m, pred = _frame_scores(logits[c], y)
        confusion += torch.bincount(y[y >= 0] * k + pred, minlength=k * k)
        for ctx, (h, n) in bilabials_heard(y, pred).items():
            heard[ctx][0] += h
            heard[ctx][1] += n
        false = [a + b for a, b in zip(false, false_bilabials(y, pred))]
        per_clip[c] = {"ce": float(ce) / max(m, 1), "acc": float(correct) / max(m, 1), "frames": float(m)}
    n = sum(s["frames"] for s in per_clip.values())
    pooled = {key: sum(s[key] * s["frames"] for s in per_clip.values()) / max(n, 1.0) for key in ("ce", "acc")}
    return {"pooled": {**pooled, "frames": n}, "clips": per_clip,
            "visemes": list(VISEMES), "confusion": confusion.view(k, k).tolist(), "bilabials_heard": heard,
            "false_bilabials": false, "bilabial_auc": bilabial_auc(logits, labels)}


def confusion_lines(res: dict, min_frames: int = 10) -> list[str]:
    """Per viseme with at least `min_frames` labelled frames: recall and the three likeliest guesses."""
    names, conf = res["visemes"], torch.tensor(res["confusion"])
    lines = []
    for i, name in enumerate(names):
        n = int(conf[i].sum())
        if n >= min_frames:
            top = conf[i].argsort(descending=True)[:3]
            lines.append(f"  {name:4s} {n:5d} frames, recall {float(conf[i, i]) / n:.2f}; called "
                         + ", ".join(f"{names[j]} {int(conf[i, j])}" for j in top))
    if "bilabials_heard" in res:
        lines.append("  bilabials heard (a frame called PP): " + ", ".join(
            f"after {'a ' if ctx != 'silence' else ''}{ctx} {h}/{n}" for ctx, (h, n) in res["bilabials_heard"].items()))
    if "false_bilabials" in res:
        f, n = res["false_bilabials"]
        lines.append(f"  PP called where no bilabial is within 2 frames: {f} of {n} runs; "
                     f"bilabial frames ranked above the others (AUC): {res['bilabial_auc']:.3f}")
    return lines


def real_speech_scores(checkpoint, speech_dir) -> dict:
    """The viseme head's (checkpoint None: the phone loop's) accuracy on real recordings: a folder
    of .wav files with a CMU `transcription` file, phones from pocketsphinx forced alignment
    (training.articulation).
    This is the synthetic-to-real gap of the audio path itself, before any mesh: labels from an
    aligner are rougher than the generator's (synthetic_scores(aligned=True) measures by how much),
    so compare models on the same clips, not with the synthetic score."""
    from training.articulation import aligned_audios, speech_dir_audios
    from training.train import viseme_labels

    scorer = scorer_of(checkpoint)
    wavs, labels, skipped = {}, {}, {}
    for name, samples, phones, _ in aligned_audios(speech_dir_audios(speech_dir), skipped):
        wavs[name] = samples
        labels[name] = viseme_labels(phones, scorer.num_frames(len(samples)), scorer.fps, scorer.phone_lead)
    if not wavs:
        raise ValueError(f"no .wav files in {speech_dir}" if not skipped else
                         f"pocketsphinx aligned none of the {len(skipped)} recordings in {speech_dir}")
    return {"checkpoint": scorer.name, **score_logits(clip_logits(scorer, wavs, labels), labels),
            "skipped": skipped}


def synthetic_scores(checkpoint, data_root, split: str = "test", every: int = 1, aligned: bool = False) -> dict:
    """The same on a training.synth dataset's split, labelled from the generator's own phone
    timings (every `every`-th clip). The test split's voices are held out of training, so this is
    the cross-voice score to decide on; the real-speech one is for reporting.

    `aligned`: the English clips only, scored twice, against the generator's phones and against
    pocketsphinx's alignment of the clip's text, as real speech is labelled. The difference is what
    the aligner alone costs the real-speech score (`label_agreement`: frames where the two agree)."""
    from training.articulation import align
    from training.config import DataSection
    from training.datasets import read_clips
    from training.train import ClipStore, read_phones, read_split, viseme_labels

    scorer = scorer_of(checkpoint)
    data = DataSection(layout="general", root=str(data_root))
    phones, store = read_phones(data), ClipStore()
    clips = [c for c in list(read_split(data, split))[::max(1, every)] if c.name in phones]
    if aligned:
        meta = read_clips(Path(data_root) / "clips.json")
        clips = [c for c in clips if meta.get(c.name, {}).get("language") == "en"]
    if not clips:
        raise ValueError(f"no clips with phone timings in split {split!r} of {data_root}"
                         + (" in English (--aligned)" if aligned else ""))
    wavs = {c.name: store.wav(c) for c in clips}
    labels = {c.name: viseme_labels(phones[c.name], store.motion(c).shape[0], c.fps, scorer.phone_lead)
              for c in clips}
    logits = clip_logits(scorer, wavs, labels, {c.name: c.fps for c in clips})
    res = {"checkpoint": scorer.name, "split": split, **score_logits(logits, labels)}
    if not aligned:
        return res
    ali, skipped = {}, []
    for c in clips:
        text = re.sub(r"[^a-z' ]", " ", meta[c.name].get("text", "").lower())
        try:
            ali[c.name] = viseme_labels(align(wavs[c.name], 16000, text)[0], len(labels[c.name]), c.fps,
                                        scorer.phone_lead)
        except RuntimeError:  # a word pocketsphinx cannot align: the clip is left out of both
            skipped.append(c.name)
    if not ali:
        raise ValueError("pocketsphinx aligned none of the English clips")
    agree = [(labels[k] == ali[k])[(labels[k] >= 0) & (ali[k] >= 0)] for k in ali]
    gen, al = score_logits(logits, {k: labels[k] for k in ali}), score_logits(logits, ali)
    return {**res, "generator": {**gen["pooled"], "bilabial_auc": gen["bilabial_auc"]},
            "aligned": {**al["pooled"], "bilabial_auc": al["bilabial_auc"]}, "aligned_skipped": skipped,
            "label_agreement": float(torch.cat(agree).float().mean())}


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="python -m training.audio_pretrain",
                                description="Viseme accuracy of a trainer checkpoint's audio path (or of "
                                            "pocketsphinx's phone loop), on real recordings or on a synthetic "
                                            "dataset's split.")
    who = p.add_mutually_exclusive_group(required=True)
    who.add_argument("--checkpoint", help="a trainer's last.pt (it holds the viseme head)")
    who.add_argument("--phone-loop", action="store_true",
                     help="score pocketsphinx's free phone loop instead (a recogniser trained on real speech)")
    src = p.add_mutually_exclusive_group(required=True)
    src.add_argument("--speech-dir", help="folder of .wav files with a CMU `transcription` file")
    src.add_argument("--data", help="a training.synth dataset (labels from its clips.json)")
    p.add_argument("--split", default="test", help="with --data: the split (default test: held-out voices)")
    p.add_argument("--every", type=int, default=1, help="with --data: every n-th clip")
    p.add_argument("--aligned", action="store_true",
                   help="with --data: English clips, also against pocketsphinx's alignment (what the aligner costs)")
    p.add_argument("--json", help="write the scores here too")
    p.add_argument("--quiet", action="store_true", help="print only the pooled score")
    p.add_argument("--confusion", action="store_true", help="also each viseme's recall and what it is taken for")
    a = p.parse_args(argv)
    if a.aligned and not a.data:
        p.error("--aligned goes with --data (real speech is always aligned)")
    try:
        if a.data:
            res = synthetic_scores(a.checkpoint, a.data, a.split, a.every, a.aligned)
        else:
            res = real_speech_scores(a.checkpoint, a.speech_dir)
    except (ValueError, RuntimeError, OSError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    if not a.quiet:
        for name, s in res["clips"].items():
            print(f"{name}: accuracy {s['acc']:.3f}, cross-entropy {s['ce']:.3f} ({s['frames']:.0f} frames)")
    if "aligned" in res:
        g, al = res["generator"], res["aligned"]
        print(f"{g['frames']:.0f} frames of English clips: accuracy {g['acc']:.3f} against the generator's phones, "
              f"{al['acc']:.3f} against pocketsphinx's (cross-entropy {g['ce']:.3f}, {al['ce']:.3f}); the labels "
              f"agree on {res['label_agreement']:.3f} of the frames; {len(res['aligned_skipped'])} clips not aligned; "
              f"bilabial AUC {g['bilabial_auc']:.3f} against the generator's, {al['bilabial_auc']:.3f} against pocketsphinx's")
    if a.confusion:
        print("\n".join(confusion_lines(res)))
    s = res["pooled"]
    print(f"all: accuracy {s['acc']:.3f}, cross-entropy {s['ce']:.3f} ({s['frames']:.0f} frames, {len(res['clips'])} clips)")
    if a.json:
        Path(a.json).write_text(json.dumps(res, indent=2), encoding="utf-8")
    return 0


if __name__ == "__main__":
    sys.exit(main())
