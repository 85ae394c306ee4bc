"""Train ScanTalk on any dataset layout the readers know.

    python -m training.train --config training/configs/default.toml [key=value ...] [--resume]
    torchrun --nproc_per_node=2 -m training.train --config FILE ...   # DDP: gloo on CPU, NCCL on GPU

One step = one clip: the speech encoder and the BiLSTM run on the whole clip, the geometry encoder
on the (augmented) neutral mesh, and the decoder on a random window of `train.window_frames`
frames (decoding every frame is what makes CPU training slow). Augmentation: a random scale and
translation of the template, applied identically to the motion targets (operators are scaled
analytically, not recomputed; `loss.at_life_size` measures the losses back at life size),
optional silence padding (a still face over silence), and the audio augmentation of the
[augment] section (training/augment.py: gain, noise, reverb, band limits, codecs, and speed
perturbation, which time-scales the motion target with the audio).
Under DDP every rank takes its own shard of the clips each epoch and gradients are averaged.

Lip closures: each subject's inner lip (training.lip_geometry) is found once, with its operators;
`loss.gap` adds a per-frame inner-lip gap loss weighted up on closed lips and on p/b/m frames.
`loss.phone` adds an auxiliary viseme classifier on the audio latents (phone timings from the
dataset's clips.json, as training.synth writes it); the classifier lives in the trainer only and
is saved in last.pt under `aux_heads` for --resume, never in the model's weights.
`train.audio_pretrain_steps` first trains the audio path and that head alone on whole clips
(training/audio_pretrain.py); `train.init_from` starts from another run's weights with a fresh
optimizer and schedule (fine-tuning), `train.audio_lr_scale` slows the audio path in joint training.
`train.stretch_latents` has the decoder read each clip's latents stretched to the starting model's
speech spread (backend/speech_spread.py), as inference gives them.

Every template is centred on its bounding-box centre, in training and at inference (the model's
frame: `frame_centre` = (0, 0, 0), `frame_size` = the mean bounding-box diagonal of the training
templates; see backend/framing.py). Operators come from the backend's on-disk cache, so each
template's are computed once.

Output folder (`train.out_dir`): `last.pt` (weights, optimizer, step: `--resume` continues from it),
`best.pt` (lowest validation loss; weights and config only, loadable by the backend), `tb/`
(TensorBoard), `config.toml`-equivalent `train_config.json`, and under DDP `replica_check.json`
(a hash of every rank's final weights: they must be identical). With `train.ema_decay` both
files' weights are the moving average (validated as such) and last.pt also keeps the optimised
weights (`train_model`) for --resume.
"""
from __future__ import annotations

import argparse
import hashlib
import json
import math
import os
import sys
import time
import warnings
from contextlib import nullcontext
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np
import torch
import torch.distributed as dist
from torch import nn

from backend.audio_io import load_audio
from backend.checkpoint import read_file, save_model
from backend.diffusionnet import TorchOperators
from backend.framing import bbox
from backend.model import ModelConfig, ScanTalk
from backend.operator_cache import get_operators
from backend.speech_spread import apply_stretch, clip_stretch, frame_levels, speech_frames
from training.audio_pretrain import audio_parameters, pretrain_audio
from training.augment import augment_audio, interpolate_frames, speed_frame_positions, speed_perturb
from training.config import ConfigError, TrainConfig, load_config
from training.datasets import Clip, DatasetError, DatasetListing, check_clip, read_clips, read_dataset
from training.feature_mask import feature_masker
from training.lip_geometry import inner_lip
from training.losses import PP_CLASS, GapInputs, LossWeights, closure_gap_error, compute_losses, lip_gap
from training.phone_stream_sim import chain, phones_from_labels, stream_times
from training.synth.visemes import VISEMES
from training.weight_average import WeightAverage

warnings.filterwarnings("ignore", message=".*Sparse CSR tensor support is in beta.*")
warnings.filterwarnings("ignore", message=".*Sparse invariant checks are implicitly disabled.*")

SAMPLE_RATE = 16000
N_VISEMES = len(VISEMES)


# --------------------------------------------------------------------------- distributed

@dataclass
class Dist:
    rank: int = 0
    world: int = 1
    local_rank: int = 0
    local_world: int = 1

    @property
    def main(self) -> bool:
        return self.rank == 0

    @property
    def on(self) -> bool:
        return self.world > 1


def setup_distributed(device_pref: str) -> tuple[Dist, torch.device]:
    """Reads torchrun's environment; a plain `python -m` run is rank 0 of 1."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    d = Dist(rank=int(os.environ.get("RANK", "0")), world=world,
             local_rank=int(os.environ.get("LOCAL_RANK", "0")),
             local_world=int(os.environ.get("LOCAL_WORLD_SIZE", str(world))))
    use_cuda = torch.cuda.is_available() if device_pref == "auto" else device_pref == "cuda"
    if use_cuda and not torch.cuda.is_available():
        raise ConfigError("train.device=cuda but this PyTorch sees no CUDA GPU")
    if use_cuda:
        device = torch.device("cuda", d.local_rank % torch.cuda.device_count())
        torch.cuda.set_device(device)
    else:
        device = torch.device("cpu")
    if d.on:
        dist.init_process_group(backend="nccl" if use_cuda else "gloo")
    return d, device


def barrier(d: Dist):
    if d.on:
        dist.barrier()


def all_sum(d: Dist, values: list[float]) -> list[float]:
    if not d.on:
        return values
    t = torch.tensor(values, dtype=torch.float64)
    if dist.get_backend() == "nccl":
        t = t.cuda()
    dist.all_reduce(t)
    return t.cpu().tolist()


# --------------------------------------------------------------------------- data

def read_split(data, split) -> DatasetListing:
    """A DatasetListing for `split` (a name, a list of subjects, or "a,b,c")."""
    if not data.root:
        raise ConfigError("data.root is not set (the dataset folder); e.g. data.root=/path/to/data")
    if isinstance(split, str) and "," in split:
        split = [s.strip() for s in split.split(",") if s.strip()]
    kwargs = {}
    if data.layout == "vocaset":
        if not data.faces_mesh or not data.lips_mask:
            raise ConfigError("vocaset needs data.faces_mesh (a FLAME mesh) and data.lips_mask "
                              "(FLAME_lips_idx.mat)")
        kwargs = dict(faces_mesh=data.faces_mesh, lips_mask=data.lips_mask,
                      upper_mask=data.upper_mask or None)
    elif data.layout in ("biwi", "multiface"):
        kwargs = dict(lips_mask=data.lips_mask or None, upper_mask=data.upper_mask or None)
    return read_dataset(data.layout, data.root, split, **kwargs)


@dataclass
class Shape:
    """One subject's template in the model frame, its operators and masks."""

    centre: np.ndarray  # the template's bbox centre (subtracted from everything)
    neutral: torch.Tensor  # [V, 3] centred template
    ops: TorchOperators
    lips: torch.Tensor | None
    upper: torch.Tensor | None = None  # inner-lip vertices (training.lip_geometry), or None
    lower: torch.Tensor | None = None


def find_inner_lip(s, centre, device):
    """(upper, lower) inner-lip vertex tensors of a subject, or (None, None) without a usable mask."""
    if s.lips is None or s.faces is None:
        return None, None
    try:
        il = inner_lip(s.template_vertices - centre, s.faces, s.lips)
    except ValueError:
        return None, None
    return (torch.from_numpy(il.upper).long().to(device), torch.from_numpy(il.lower).long().to(device))


def prepare_shapes(listings, k_eig: int, grad_eps: float, cache, d: Dist, device, log=print) -> dict[str, Shape]:
    """Operators of every subject, each computed once (ranks split the work; the cache shares it)."""
    subjects = {}
    for lst in listings:
        subjects.update(lst.subjects)
    names = sorted(subjects)
    t0 = time.time()
    computed = 0
    for name in names[d.rank::d.world]:
        s = subjects[name]
        c, _ = bbox(s.template_vertices)
        _, hit = get_operators(s.template_vertices - c, s.faces, k_eig, grad_eps, cache=cache)
        computed += not hit
    barrier(d)
    shapes = {}
    for name in names:
        s = subjects[name]
        c, _ = bbox(s.template_vertices)
        ops, _ = get_operators(s.template_vertices - c, s.faces, k_eig, grad_eps, cache=cache)
        upper, lower = find_inner_lip(s, c, device)
        shapes[name] = Shape(
            centre=c,
            neutral=torch.from_numpy((s.template_vertices - c).astype(np.float32)).to(device),
            ops=TorchOperators.from_numpy(ops, device),  # scipy-backed sparse products on CPU
            lips=None if s.lips is None else torch.from_numpy(s.lips).long().to(device),
            upper=upper, lower=lower,
        )
    if d.main:
        no_lip = sum(sh.upper is None for sh in shapes.values())
        log(f"operators for {len(names)} templates ready ({computed} computed on rank 0, "
            f"{time.time() - t0:.1f} s); inner lip found on {len(names) - no_lip}")
    return shapes


def scaled_operators(ops: TorchOperators, s: float) -> TorchOperators:
    """The operators of the same mesh scaled by s, without recomputing them: the cotangent
    Laplacian is scale-free, areas grow by s², so eigenvalues shrink by s², mass-normalised
    eigenvectors by s, and gradients by s."""
    if s == 1.0:
        return ops
    return TorchOperators(mass=ops.mass * s * s, evals=ops.evals / (s * s), evecs=ops.evecs / s,
                          grad=ops.grad * (1.0 / s))


def augment_size(tcfg, rng: np.random.Generator) -> float:
    """The random scale of one training example (one draw, whichever rule, so a config without
    augment_log_scale replays its old random stream)."""
    if tcfg.augment_log_scale > 0:
        return float(np.exp(rng.uniform(-tcfg.augment_log_scale, tcfg.augment_log_scale)))
    return float(rng.uniform(1 - tcfg.augment_scale, 1 + tcfg.augment_scale))


def read_phones(data) -> dict[str, list]:
    """Phone timings per clip name ([[phone, start_s, end_s], ...]) from the dataset's clips.json
    (training.synth writes it); {} when the dataset has none (vocaset, biwi, ...)."""
    if data.layout != "general":
        return {}
    clips = read_clips(Path(data.root) / "clips.json")
    return {name: c["phonemes"] for name, c in clips.items() if c.get("phonemes")}


def frame_visemes(phones, times: np.ndarray) -> np.ndarray:
    """Viseme class (index into training.synth.visemes.VISEMES) of the phone sounding at each
    time; -1 where no phone covers it. Diphthongs are split as the generator splits them."""
    from training.synth.visemes import viseme_segments

    index = {v: i for i, v in enumerate(VISEMES)}
    out = np.full(len(times), -1, np.int64)
    for vis, a, b, _ in viseme_segments(phones):
        out[(times >= a) & (times < b)] = index[vis]
    return out


class ClipStore:
    """Audio kept in memory after first use; motion read through a memory map, frames on demand."""

    def __init__(self):
        self._wav: dict[str, np.ndarray] = {}

    def wav(self, clip: Clip) -> np.ndarray:
        if clip.name not in self._wav:
            self._wav[clip.name] = load_audio(clip.wav_path)
        return self._wav[clip.name]

    @staticmethod
    def motion(clip: Clip) -> np.ndarray:
        """[T, V, 3] (a lazy memory map; index it to read frames)."""
        arr = np.load(clip.vertices_path, mmap_mode="r", allow_pickle=False)
        if arr.ndim == 2:
            arr = arr.reshape(arr.shape[0], -1, 3)
        return arr[:: clip.frame_step] if clip.frame_step > 1 else arr


@dataclass
class Example:
    wav: torch.Tensor  # [1, N]
    n_frames: int  # frames the audio encoder produces (the whole, padded clip)
    f0: int  # decoded window [f0, f1)
    f1: int
    neutral: torch.Tensor  # [V, 3]
    ops: TorchOperators
    target: torch.Tensor  # [f1 - f0, V, 3]
    lips: torch.Tensor | None
    gap: GapInputs | None = None  # inner lip of this subject (bilabial frames: of the window)
    visemes: torch.Tensor | None = None  # [n_frames] viseme class per frame (-1 unknown), or None
    size: float = 1.0  # the random scale applied to neutral and target (augment_size)
    pad0: int = 0  # silent frames put before the clip
    speed: float = 1.0  # the speed perturbation's factor (> 1: faster)
    speech: torch.Tensor | None = None  # [n_frames] bool, speech by energy (train.stretch_latents)


def make_example(clip: Clip, shape: Shape, store: ClipStore, tcfg, rng: np.random.Generator,
                 device, train: bool = True, aug=None, phones=None, phone_lead: float = 0.06) -> Example:
    motion = store.motion(clip)
    T = motion.shape[0]
    wav = store.wav(clip)
    # Speed perturbation: faster audio, and the motion read at the matching (fractional) frames.
    speed, positions = 1.0, None
    if train and aug is not None and aug.speed_prob > 0 and rng.random() < aug.speed_prob:
        speed = float(rng.uniform(*aug.speed))
        wav = speed_perturb(wav, speed)
        positions = speed_frame_positions(len(wav), clip.fps, speed, T)
        T = len(positions)
    pad0 = pad1 = 0
    if train and tcfg.silence_pad_prob > 0 and rng.random() < tcfg.silence_pad_prob:
        n = int(rng.integers(1, max(2, int(tcfg.silence_pad_max * clip.fps) + 1)))
        if rng.random() < 0.5:
            pad0 = n
        else:
            pad1 = n
    if pad0 or pad1:
        spf = SAMPLE_RATE / clip.fps
        wav = np.concatenate([np.zeros(int(round(pad0 * spf)), np.float32), wav,
                              np.zeros(int(round(pad1 * spf)), np.float32)])
    if train and aug is not None and aug.any_audio:
        wav, _ = augment_audio(wav, aug, rng)
    total = T + pad0 + pad1
    W = total if (not train or tcfg.window_frames <= 0) else min(tcfg.window_frames, total)
    f0 = int(rng.integers(0, total - W + 1)) if train else 0
    f1 = f0 + W
    # Padded frames hold the clip's first / last pose (the face at rest in the silence).
    idx = np.clip(np.arange(f0, f1) - pad0, 0, T - 1)
    if positions is not None:
        frames = interpolate_frames(motion, positions[idx])
    else:
        lo, hi = int(idx.min()), int(idx.max()) + 1
        frames = np.asarray(motion[lo:hi], dtype=np.float32)[idx - lo]
    target = torch.from_numpy(frames - shape.centre.astype(np.float32)).to(device)
    neutral, ops, s = shape.neutral, shape.ops, 1.0
    if train and (tcfg.augment_scale > 0 or tcfg.augment_log_scale > 0 or tcfg.augment_translate > 0):
        s = augment_size(tcfg, rng)
        shift = torch.from_numpy(rng.normal(0, tcfg.augment_translate, 3).astype(np.float32)).to(device)
        neutral = neutral * s + shift
        target = target * s + shift
        ops = scaled_operators(ops, s)
    visemes = gap = None
    if phones is not None:
        # Frame j (of the padded clip) shows the viseme of the phone sounding phone_lead later;
        # phone times are in the original clip's time, which runs `speed` times faster here.
        t = ((np.arange(total) - pad0) / clip.fps + phone_lead) * speed
        vis = frame_visemes(phones, t)
        vis[(np.arange(total) < pad0) | (np.arange(total) >= pad0 + T)] = 0  # padding: silence
        visemes = torch.from_numpy(vis).to(device)
    if shape.upper is not None:
        bilabial = None if visemes is None else visemes[f0:f1] == PP_CLASS
        g0 = float(lip_gap(neutral[None], shape.upper, shape.lower)[0])
        gap = GapInputs(shape.upper, shape.lower, g0, bilabial)
    wav_t = torch.from_numpy(np.ascontiguousarray(wav))[None]
    speech = speech_frames(frame_levels(wav_t, total, clip.fps)).to(device) if tcfg.stretch_latents else None
    return Example(wav_t.to(device), total, f0, f1, neutral, ops, target, shape.lips, gap, visemes, s, pad0,
                   speed, speech)


def example_weights(weights: LossWeights, size: float, at_life_size: bool) -> LossWeights:
    """The loss weights for one example; `at_life_size` divides its coordinates by its random
    size, so every term, and the gap's closure thresholds, reads as if the head were life size."""
    if not at_life_size or size == 1.0:
        return weights
    return replace(weights, unit_scale=weights.unit_scale / size)


class WindowStep(nn.Module):
    """The training forward pass as one module (what DDP wraps): absolute positions of a window."""

    def __init__(self, model: ScanTalk, phone_head: nn.Module | None = None):
        super().__init__()
        self.model = model
        self.phone_head = phone_head  # trainer-only viseme classifier on the audio latents

    def forward(self, wav, n_frames: int, f0: int, f1: int, neutral, ops, feature_transform=None, speech=None):
        audio = self.model.encode_audio(wav, n_frames, feature_transform)
        logits = None if self.phone_head is None else self.phone_head(audio)  # every frame
        audio = stretched(self.model, audio, speech)
        geom = self.model.encode_geometry(neutral, ops)
        return neutral[None] + self.model.decode(geom, audio[f0:f1], ops), logits


def stretched(model: ScanTalk, audio: torch.Tensor, speech: torch.Tensor | None) -> torch.Tensor:
    """The latents [T, L] the decoder reads: with train.stretch_latents (`speech` given), the
    clip's stretched to the model's speech spread, as backend.inference.audio_latents does."""
    if speech is None:
        return audio
    return apply_stretch(audio, speech, clip_stretch(audio, speech, model.cfg.speech_spread))


# --------------------------------------------------------------------------- schedule, eval

def learning_rate(step: int, t) -> float:
    """Linear warm-up, then cosine decay from lr to min_lr at the last step."""
    if t.warmup_steps > 0 and step < t.warmup_steps:
        return t.lr * (step + 1) / t.warmup_steps
    span = max(1, t.steps - t.warmup_steps)
    p = min(1.0, (step - t.warmup_steps) / span)
    return t.min_lr + 0.5 * (t.lr - t.min_lr) * (1 + math.cos(math.pi * p))


@torch.no_grad()
def validate(model: ScanTalk, clips, shapes, store, cfg: TrainConfig, weights: LossWeights, d: Dist, device,
             phones=None, phone_head=None) -> dict:
    """Losses on whole validation clips (no augmentation), averaged over clips and ranks.
    Also the lip vertex error (LVE, mean over frames of the max squared lip error, mm²) and
    `closure_gap_mm`: the mean |predicted - target| inner-lip gap (scaled units: mm) over the
    frames where the target lips are closed (opening below loss.gap_closed_mm), pooled."""
    from backend.inference import chunk_size

    model.eval()
    if phone_head is not None:
        phone_head.eval()
    keys = ("total", "mse", "lip", "velocity", "gap", "phone", "lve_mm2")
    sums = [0.0] * (len(keys) + 1)
    counts = [0.0] * len(keys)
    closed_sum = closed_n = 0.0
    rng = np.random.default_rng(0)
    phones = phones or {}
    for clip in clips[d.rank::d.world]:
        shape = shapes[clip.subject]
        ex = make_example(clip, shape, store, cfg.train, rng, device, train=False,
                          phones=phones.get(clip.name), phone_lead=cfg.loss.phone_lead)
        audio = model.encode_audio(ex.wav, ex.n_frames)
        logits = None if phone_head is None else phone_head(audio)
        geom = model.encode_geometry(ex.neutral, ex.ops)
        chunk = chunk_size(ex.neutral.shape[0], model.cfg.width, device)
        pred = ex.neutral[None] + model.decode(geom, stretched(model, audio, ex.speech), ex.ops, chunk_frames=chunk)
        terms = compute_losses(pred, ex.target, weights, ex.lips, ex.gap, logits, ex.visemes)
        lve = float("nan")
        if ex.lips is not None:
            sq = ((pred[:, ex.lips] - ex.target[:, ex.lips]) ** 2).sum(-1) * 1e6
            lve = float(sq.max(dim=1).values.mean())
        if ex.gap is not None:
            s = weights.unit_scale
            e, k = closure_gap_error(lip_gap(pred, ex.gap.upper, ex.gap.lower) * s,
                                     lip_gap(ex.target, ex.gap.upper, ex.gap.lower) * s,
                                     ex.gap.neutral_gap * s, cfg.loss.gap_closed_mm)
            closed_sum, closed_n = closed_sum + e, closed_n + k
        vals = [float(terms[k]) for k in keys[:-1]] + [lve]
        for i, v in enumerate(vals):
            if not math.isnan(v):
                sums[i] += v
                counts[i] += 1
        sums[-1] += 1
    tot = all_sum(d, sums + counts + [closed_sum, closed_n])
    model.train()
    if phone_head is not None:
        phone_head.train()
    n_k = len(keys)
    sums, counts, (closed_sum, closed_n) = tot[:n_k], tot[n_k + 1:2 * n_k + 1], tot[2 * n_k + 1:]
    out = {k: sums[i] / counts[i] if counts[i] else float("nan") for i, k in enumerate(keys)}
    out["closure_gap_mm"] = closed_sum / closed_n if closed_n else float("nan")
    out["closed_frames"] = closed_n
    return out


def check_model_config(source: str, config: dict | None, mcfg: ModelConfig, what: str,
                       any_name: bool = False, any_audio: bool = False) -> None:
    """Refuse a checkpoint (`source`, its `config`) of another model config for `what` ("resume",
    "fine-tune"); with `any_name`, the names may differ (a fine-tuned model takes its own); with
    `any_audio`, the audio encoders may (only the geometry encoder and decoder are taken). The
    speech spread is measured from the weights after training (training.speech_spread), not part
    of the model's design: a file with or without one (older files) is the same config."""
    theirs, ours = dict(config or {}), mcfg.to_dict()
    theirs.pop("speech_spread", None)
    ours.pop("speech_spread")
    for key, free in (("name", any_name), ("audio", any_audio)):
        if free:
            theirs.pop(key, None)
            ours.pop(key)
    if theirs != ours:
        raise ConfigError(f"{source} was trained with another model config; "
                          f"{what} with the same config (checkpoint: {theirs}, now: {ours})")


def viseme_labels(phones, n_frames: int, fps: float, lead: float) -> torch.Tensor:
    """[n_frames] viseme class per frame of an unpadded, unstretched clip (frame j shows the phone
    sounding `lead` seconds later; -1 where no phone covers it)."""
    return torch.from_numpy(frame_visemes(phones, np.arange(n_frames) / fps + lead))


def init_weights(path: str, model: ScanTalk, phone_head: nn.Module | None, mcfg: ModelConfig, log,
                 fresh_audio: bool = False) -> None:
    """Fine-tuning's starting point: the weights of a model file or last.pt of the same model
    config (and its viseme head when both have one); the run's optimizer and schedule start fresh.
    `fresh_audio` keeps only the geometry encoder and decoder: the audio path and the viseme head
    keep their new initialisation (an audio path stuck in a poor optimum is retrained from scratch,
    or one of another audio config is tried on a trained geometry path)."""
    data = read_file(path)
    check_model_config(f"train.init_from {path}", data.get("config"), mcfg, "fine-tune", any_name=True,
                       any_audio=fresh_audio)
    state = data["model"]
    if fresh_audio:
        audio = ("audio_encoder.", "audio_embedding.", "lstm.")
        state = {**model.state_dict(), **{k: v for k, v in state.items() if not k.startswith(audio)}}
    model.load_state_dict(state)
    head = None if fresh_audio else (data.get("aux_heads") or {}).get("phone")
    if phone_head is not None and head is not None:
        phone_head.load_state_dict(head)
    log(f"weights from {path}" + (" (geometry encoder and decoder only)" if fresh_audio else ""))


def weights_hash(model: nn.Module) -> str:
    h = hashlib.sha256()
    for k, v in sorted(model.state_dict().items()):
        h.update(k.encode())
        h.update(v.detach().cpu().contiguous().numpy().tobytes())
    return h.hexdigest()


def spread_to_keep(cfg: TrainConfig, resume: str | None, out: Path) -> tuple:
    """train.stretch_latents: the speech spread of the model the run starts from (the resumed
    last.pt, else init_from), which the trained model keeps."""
    source = (out / "last.pt" if resume == "auto" else Path(resume)) if resume else cfg.train.init_from
    if not source:
        raise ConfigError("train.stretch_latents needs a model to take the speech spread from: set "
                          "train.init_from to a model file with one (python -m training.speech_spread)")
    spread = (read_file(source).get("config") or {}).get("speech_spread")
    if not spread:
        raise ConfigError(f"train.stretch_latents: {source} has no speech spread; measure one first "
                          f"(python -m training.speech_spread --checkpoint {source} ...)")
    return tuple(float(v) for v in spread)


def build_model_config(cfg: TrainConfig, fps: float, frame_size: float) -> ModelConfig:
    m = cfg.model
    return ModelConfig(audio=m.audio, latent=m.latent, width=m.width, n_blocks=m.n_blocks,
                       lstm_layers=m.lstm_layers, k_eig=m.k_eig, grad_eps=m.grad_eps,
                       log_time=m.log_time, fps=float(fps), frame_centre=(0.0, 0.0, 0.0),
                       frame_size=float(frame_size), name=m.name, separate_parts=m.separate_parts)


# --------------------------------------------------------------------------- training

def train(cfg: TrainConfig, resume: str | None = None) -> dict:
    t_start = time.time()
    tc = cfg.train
    d, device = setup_distributed(tc.device)
    torch.set_num_threads(tc.threads or max(1, (os.cpu_count() or 1) // max(1, d.local_world)))
    out = Path(tc.out_dir)
    log = (lambda *a: print(*a, flush=True)) if d.main else (lambda *a: None)
    if d.main:
        out.mkdir(parents=True, exist_ok=True)
        (out / "train_config.json").write_text(json.dumps(cfg.to_dict(), indent=2), encoding="utf-8")

    # ---- data
    train_set = read_split(cfg.data, cfg.data.train_split)
    val_set = read_split(cfg.data, cfg.data.val_split) if cfg.data.val_split else None
    train_clips = list(train_set)
    val_clips = list(val_set) if val_set is not None else []
    if cfg.data.val_max_clips > 0 and len(val_clips) > cfg.data.val_max_clips:
        pick = np.random.default_rng(tc.seed).choice(len(val_clips), cfg.data.val_max_clips, replace=False)
        val_clips = [val_clips[i] for i in sorted(pick)]
    if len(train_clips) < d.world:
        raise DatasetError(f"{len(train_clips)} training clips cannot be shared by {d.world} processes")
    if cfg.data.check_clips:
        for lst, clips in ((train_set, train_clips), (val_set, val_clips)):
            for clip in clips[d.rank::d.world]:
                check_clip(clip, lst.subject_of(clip))
    if cfg.loss.lip > 0 and any(s.lips is None for s in train_set.subjects.values()):
        missing = sorted(n for n, s in train_set.subjects.items() if s.lips is None)
        raise DatasetError(f"loss.lip > 0 needs lip masks; none for subjects {', '.join(missing[:5])}")
    diags = [bbox(s.template_vertices)[1] for s in train_set.subjects.values()]
    frame_size = float(np.mean(diags))
    log(f"data: {len(train_clips)} training clips ({len(train_set.subjects)} subjects), "
        f"{len(val_clips)} validation clips; fps {train_set.fps:g}; mean template diagonal "
        f"{frame_size:.4f}; {d.world} process(es) on {device}")

    mcfg = build_model_config(cfg, train_set.fps, frame_size)
    if tc.stretch_latents:
        mcfg.speech_spread = spread_to_keep(cfg, resume, out)
    if cfg.augment.phones_from_labels_prob > 0 and (mcfg.audio.get("config") or {}).get("phones") != "pocketsphinx":
        raise ConfigError("augment.phones_from_labels_prob swaps the generator's phones in for the recogniser's: "
                          "it needs model.audio.config.phones = \"pocketsphinx\" (a log-mel encoder that reads them)")
    shapes = prepare_shapes([train_set] + ([val_set] if val_set is not None else []),
                            mcfg.k_eig, mcfg.grad_eps, cfg.data.operator_cache or None, d, device, log)
    phones = read_phones(cfg.data)
    if cfg.loss.gap > 0 and all(shapes[c.subject].upper is None for c in train_clips):
        raise DatasetError("loss.gap > 0 needs lip masks (and faces) to find the inner lip; no training subject has one")
    use_phone = cfg.loss.phone > 0 and any(c.name in phones for c in train_clips)
    if cfg.loss.phone > 0:
        n_ph = sum(c.name in phones for c in train_clips)
        log(f"phone timings for {n_ph} of {len(train_clips)} training clips" +
            ("" if use_phone else ": no viseme head (loss.phone skipped)"))

    # ---- model, optimizer, resume
    torch.manual_seed(tc.seed)
    model = ScanTalk(mcfg).to(device)
    if "pretrained_dir" in mcfg.audio and hasattr(model.audio_encoder, "config_dict"):
        # The checkpoint must not depend on the folder the speech encoder came from.
        mcfg.audio = {"kind": mcfg.audio.get("kind", "hubert"), "config": model.audio_encoder.config_dict()}
    if tc.freeze_audio_features and hasattr(model.audio_encoder, "model"):
        for p in model.audio_encoder.model.feature_extractor.parameters():
            p.requires_grad_(False)
    # The auxiliary viseme classifier: trained with the model, never part of its checkpoint.
    phone_head = nn.Linear(mcfg.latent, N_VISEMES).to(device) if use_phone else None
    store = ClipStore()
    if not resume and tc.init_from:
        init_weights(tc.init_from, model, phone_head, mcfg, log, fresh_audio=tc.init_fresh_audio)
    if not resume and tc.audio_pretrain_steps > 0:
        if phone_head is None:
            raise ConfigError("train.audio_pretrain_steps needs the viseme head: loss.phone > 0 and "
                              "phone timings in the dataset's clips.json")
        labelled = [c for c in train_clips if c.name in phones]
        labels: dict[str, torch.Tensor] = {}  # each clip's, once: the steps revisit every clip

        def labels_of(clip):
            if clip.name not in labels:
                n = store.motion(clip).shape[0]
                labels[clip.name] = viseme_labels(phones[clip.name], n, clip.fps, cfg.loss.phone_lead).to(device)
            return labels[clip.name]

        def stream_of(clip, n_samples, rng):
            return phones_from_labels(cfg.augment, phones.get(clip.name), stream_times(n_samples, clip.fps), rng)

        pretrain_audio(model, phone_head, labelled, store.wav, labels_of, steps=tc.audio_pretrain_steps,
                       lr=tc.audio_pretrain_lr, grad_clip=tc.grad_clip, aug=cfg.augment, seed=tc.seed,
                       d=d, log=log, val_clips=[c for c in val_clips if c.name in phones],
                       bilabial_weight=cfg.loss.phone_bilabial_weight,
                       phone_stream=stream_of if cfg.augment.phones_from_labels_prob > 0 else None,
                       speed=tc.audio_pretrain_speed)
    audio = set(map(id, audio_parameters(model)))
    main_params = [p for p in model.parameters() if p.requires_grad and id(p) not in audio]
    audio_params = audio_parameters(model) + ([] if phone_head is None else list(phone_head.parameters()))
    params = main_params + audio_params
    if tc.audio_lr_scale != 1.0:
        groups = [{"params": main_params}, {"params": audio_params, "lr_scale": tc.audio_lr_scale}]
    else:  # one group, as checkpoints written before the option have
        groups = [{"params": params}]
    opt = torch.optim.Adam(groups, lr=tc.lr, weight_decay=tc.weight_decay)
    step, best_val, elapsed_before = 0, float("inf"), 0.0
    saved_average = None
    if resume:
        path = out / "last.pt" if resume == "auto" else Path(resume)
        data = read_file(path)
        check_model_config(str(path), data.get("config"), mcfg, "resume")
        # a run that averaged saved the average as its model and the optimised weights beside it
        model.load_state_dict(data.get("train_model", data["model"]))
        saved_average = data["model"] if "train_model" in data else None
        heads = data.get("aux_heads", {})
        if (phone_head is None) != ("phone" not in heads):
            raise ConfigError(f"{path} was trained {'with' if 'phone' in heads else 'without'} the viseme head "
                              f"(loss.phone); resume with the same loss.phone setting")
        if phone_head is not None:
            phone_head.load_state_dict(heads["phone"])
        opt.load_state_dict(data["optimizer"])
        step, best_val = int(data["step"]), float(data.get("best_val", float("inf")))
        elapsed_before = float(data.get("elapsed_s", 0.0))
        log(f"resumed from {path} at step {step}")
        if (data.get("train_config") or {}).get("loss") != cfg.to_dict()["loss"]:
            # Validation loss is the weighted sum: under other weights the old best is not comparable,
            # and keeping it would stop best.pt from ever being written in this run.
            best_val = float("inf")
            log("the loss weights differ from the checkpoint's: best.pt is chosen afresh in this run")
    average = None
    if tc.ema_decay > 0:
        average = WeightAverage(model, tc.ema_decay)
        if saved_average is not None:
            average.load_state_dict(saved_average)
    n_params = sum(p.numel() for p in model.parameters())
    log(f"model: {n_params:,} parameters ({mcfg.audio.get('kind')} audio encoder, width {mcfg.width}, "
        f"{mcfg.n_blocks} blocks, k_eig {mcfg.k_eig})" + ("" if phone_head is None else " + viseme head"))
    aug = cfg.augment
    net = WindowStep(model, phone_head)
    if d.on:
        net = nn.parallel.DistributedDataParallel(net)
    weights = LossWeights.from_section(cfg.loss)

    writer = None
    if d.main:
        try:
            from torch.utils.tensorboard import SummaryWriter

            writer = SummaryWriter(str(out / "tb"))
        except ImportError:
            log("tensorboard is not installed: no TensorBoard logs (pip install tensorboard)")
    bar = None
    if d.main and tc.progress:
        from tqdm import tqdm

        bar = tqdm(total=tc.steps, initial=step, desc="train", dynamic_ncols=True)

    def averaged():
        """The model holds the weight average inside the block (when the run keeps one)."""
        return average.applied(model) if average is not None else nullcontext()

    def checkpoint(path: Path, with_optimizer: bool, val=None):
        extra = dict(step=step, best_val=best_val, elapsed_s=elapsed_before + time.time() - t_start,
                     train_config=cfg.to_dict())
        if val is not None:
            extra["val"] = val
        if with_optimizer:  # last.pt: everything --resume needs, the trainer-only head included
            extra["optimizer"] = opt.state_dict()
            if phone_head is not None:
                extra["aux_heads"] = {"phone": phone_head.state_dict()}
            if average is not None:  # what --resume goes on optimising
                extra["train_model"] = {k: v.detach().clone() for k, v in model.state_dict().items()}
        with averaged():
            save_model(path, model, **extra)

    # ---- loop
    n = len(train_clips)
    per_rank = n // d.world  # steps per epoch (each rank one clip per step)
    running: dict[str, float] = {}
    last_val = None
    stop = False
    model.train()
    while step < tc.steps and not stop:
        t_step = time.time()
        epoch, k = divmod(step, per_rank)
        perm = np.random.default_rng([tc.seed, 7, epoch]).permutation(n)
        clip = train_clips[perm[k * d.world + d.rank]]
        rng = np.random.default_rng([tc.seed, 11, d.rank, step])
        ex = make_example(clip, shapes[clip.subject], store, tc, rng, device, train=True, aug=aug,
                          phones=phones.get(clip.name), phone_lead=cfg.loss.phone_lead)

        lr = learning_rate(step, tc)
        for g in opt.param_groups:
            g["lr"] = lr * g.get("lr_scale", 1.0)
        masker = feature_masker(aug, np.random.default_rng([tc.seed, 29, d.rank, step]))
        stream = None
        if aug.phones_from_labels_prob > 0:
            times = stream_times(ex.wav.shape[1], clip.fps, ex.pad0, ex.speed)
            stream = phones_from_labels(aug, phones.get(clip.name), times,
                                        np.random.default_rng([tc.seed, 37, d.rank, step]))
        pred, logits = net(ex.wav, ex.n_frames, ex.f0, ex.f1, ex.neutral, ex.ops, chain(stream, masker),
                           ex.speech)
        w = example_weights(weights, ex.size, cfg.loss.at_life_size)
        terms = compute_losses(pred, ex.target, w, ex.lips, ex.gap, logits, ex.visemes)
        opt.zero_grad(set_to_none=True)
        terms["total"].backward()
        gnorm = torch.nn.utils.clip_grad_norm_(params, tc.grad_clip if tc.grad_clip > 0 else float("inf"))
        opt.step()
        step += 1
        if average is not None:
            average.update(model, step)

        for key, v in terms.items():
            v = float(v.detach())
            if not math.isnan(v):  # a clip without phones (or a lip mask) has no such term
                running[key] = running.get(key, 0.0) + v
                running["_n_" + key] = running.get("_n_" + key, 0) + 1
        for key, v in (("grad_norm", float(gnorm)), ("step_s", time.time() - t_step)):
            running[key] = running.get(key, 0.0) + v
            running["_n_" + key] = running.get("_n_" + key, 0) + 1
        if bar is not None:
            bar.update(1)
        if step % tc.log_every == 0 or step == tc.steps:
            avg = {key: v / running["_n_" + key] for key, v in running.items() if not key.startswith("_n_")}
            running = {}
            if writer is not None:
                for key, v in avg.items():
                    if not math.isnan(v):
                        writer.add_scalar(f"train/{key}", v, step)
                writer.add_scalar("train/lr", lr, step)
                times = model.decoder.block_0.diffusion.times().detach()
                writer.add_scalar("model/decoder_block0_mean_log10_time", float(times.log10().mean()), step)
            if bar is not None:
                bar.set_postfix(loss=f"{avg['total']:.4g}", lr=f"{lr:.2g}")
            else:
                log(f"step {step}: " + ", ".join(f"{k} {v:.4g}" for k, v in avg.items()) + f", lr {lr:.2g}")
            if tc.max_minutes > 0:
                over = elapsed_before + time.time() - t_start > tc.max_minutes * 60
                stop = all_sum(d, [float(over)])[0] > 0  # every rank stops at the same step
        if val_clips and (step % tc.val_every == 0 or step == tc.steps or stop):
            with averaged():
                val = validate(model, val_clips, shapes, store, cfg, weights, d, device, phones, phone_head)
            last_val = val
            if writer is not None:
                for key, v in val.items():
                    if not math.isnan(v):
                        writer.add_scalar(f"val/{key}", v, step)
            msg = (f"step {step}: val loss {val['total']:.4g} (mse {val['mse']:.4g}, lip {val['lip']:.4g}, "
                   f"vel {val['velocity']:.4g}, gap {val['gap']:.4g}, phone {val['phone']:.4g}, "
                   f"LVE {val['lve_mm2']:.3g} mm², closure gap error {val['closure_gap_mm']:.3g} mm "
                   f"over {val['closed_frames']:.0f} closed frames)")
            if bar is not None:
                bar.write(msg)
            else:
                log(msg)
            if val["total"] < best_val:
                best_val = val["total"]
                if d.main:
                    checkpoint(out / "best.pt", with_optimizer=False, val=val)
        if d.main and (step % tc.val_every == 0 or step == tc.steps or stop):
            checkpoint(out / "last.pt", with_optimizer=True, val=last_val)

    if bar is not None:
        bar.close()
    if d.main:
        checkpoint(out / "last.pt", with_optimizer=True, val=last_val)
        if not val_clips:  # nothing to select on: the last weights are the best we know
            checkpoint(out / "best.pt", with_optimizer=False)
    result = {"step": step, "best_val": best_val, "val": last_val,
              "elapsed_s": elapsed_before + time.time() - t_start}
    if d.on:
        hashes = [None] * d.world
        dist.all_gather_object(hashes, weights_hash(model))
        if d.main:
            same = len(set(hashes)) == 1
            (out / "replica_check.json").write_text(json.dumps({"hashes": hashes, "identical": same}, indent=2))
            if not same:
                log("WARNING: the replicas' weights differ at the end of training")
        del net  # DDP's reducer holds the process group: release it before the group goes
        dist.barrier()  # nobody tears down the group while a peer still talks to it
        dist.destroy_process_group()
    if writer is not None:
        writer.close()
    log(f"done: step {step}, best validation loss {best_val:.4g}, "
        f"{result['elapsed_s'] / 60:.1f} min; checkpoints in {out}")
    return result


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="python -m training.train", description=__doc__.split("\n\n")[0])
    p.add_argument("--config", help="TOML config file (training/configs/*.toml)")
    p.add_argument("--resume", action="store_true", help="continue from train.out_dir/last.pt")
    p.add_argument("--resume-from", metavar="CHECKPOINT", help="continue from this last.pt")
    p.add_argument("overrides", nargs="*", help="key=value, e.g. train.steps=200 data.root=/data")
    args = p.parse_args(argv)
    try:
        cfg = load_config(args.config, args.overrides)
        train(cfg, resume=args.resume_from or ("auto" if args.resume else None))
    except (ConfigError, DatasetError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    code = main()
    if code == 0 and "LOCAL_RANK" in os.environ:
        # A torchrun worker whose run is done and written: Gloo's threads can abort the
        # interpreter's teardown (SIGABRT, "terminate called without an active exception") after
        # destroy_process_group, which torchrun then reports as a failed run. Nothing is left to
        # finalise, so leave without the teardown.
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(0)
    sys.exit(code)
