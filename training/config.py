"""Training configuration: a dataclass tree read from a TOML file, then `key=value` overrides.

    python -m training.train --config training/configs/default.toml train.steps=200 data.root=/data

Sections: `[model]` (the fields of backend.model.ModelConfig; `fps` and `frame_size` are filled
in from the data), `[data]`, `[loss]`, `[train]`, `[augment]` (audio augmentation, all off by
default). An override's key is a dotted path
(`train.lr`, `model.audio.config.hidden`); its value is parsed as a TOML value (`3e-4`, `true`,
`"text"`, `[1, 2]`), and taken as a plain string when it is not one (`data.root=/my/data`).
Unknown keys are errors, so a typo never silently trains the wrong model.
"""
from __future__ import annotations

import copy
import tomllib
from dataclasses import asdict, dataclass, field, fields, is_dataclass
from pathlib import Path
from typing import Any


class ConfigError(ValueError):
    """A config file or override is malformed; the message names the key."""


@dataclass
class ModelSection:
    audio: dict = field(default_factory=lambda: {"kind": "logmel", "config": {}})
    latent: int = 32
    width: int = 32
    n_blocks: int = 4
    lstm_layers: int = 2
    k_eig: int = 64
    grad_eps: float = 1e-5
    log_time: bool = True
    name: str = "scantalk"
    separate_parts: str = "model"  # "ride" for models trained on one-piece heads (backend.model)


@dataclass
class DataSection:
    layout: str = "general"  # general, vocaset, biwi, multiface
    root: str = ""
    train_split: Any = "train"  # a split name or a list of subjects
    val_split: Any = "val"
    # vocaset needs a FLAME mesh for the faces and the lip indices; biwi/multiface take masks too.
    faces_mesh: str = ""
    lips_mask: str = ""
    upper_mask: str = ""
    operator_cache: str = ""  # "" = the backend's cache folder ($SCANTALK_CACHE_DIR or the user cache)
    val_max_clips: int = 0  # 0 = every validation clip
    check_clips: bool = True  # check every clip (files, vertex counts, audio length) before training


@dataclass
class LossSection:
    mse: float = 1.0  # all vertices
    # Mean absolute error, all vertices (scaled units): squared mm all but ignore the sub-millimetre
    # drift far from the mouth, where the face should hold exactly still; |error| does not.
    mae: float = 0.0
    lip: float = 0.0  # lip vertices only (needs a lip mask)
    velocity: float = 0.0  # frame-to-frame differences
    velocity_axis: str = "time"  # "vertices" reproduces the official code's bug
    unit_scale: float = 1000.0  # losses are computed on coordinates × this (metres → mm)
    # Inner-lip gap (training.lip_geometry; needs lip masks and template faces): squared error of
    # the predicted vs target lip clearance (lip_geometry.lip_gap) per frame, in scaled units (mm²),
    # weighted 1 + gap_closure_boost * exp(-max(opening, 0) / gap_closure_mm), opening = target
    # gap minus the neutral's, plus gap_bilabial_boost on frames inside p/b/m phones (phone
    # timings shifted phone_lead earlier; only where the data has them, e.g. clips.json).
    gap: float = 0.0
    gap_closure_boost: float = 0.0
    gap_closure_mm: float = 1.0
    gap_bilabial_boost: float = 0.0
    gap_closed_mm: float = 1.0  # validation: frames whose target opening is below this are "closed"
    # The lip MSE again, per frame weighted by (gap weight - 1): all lip vertices are pulled to
    # the target where the lips close (the gap term alone reaches only the two extreme vertices).
    lip_closure: float = 0.0
    # Auxiliary viseme classifier on the audio latents (trainer only, never saved in the model):
    # cross-entropy against the viseme of each frame from the clip's phone timings.
    phone: float = 0.0
    phone_lead: float = 0.06  # seconds: a frame's label is the phone sounding this much later
    phone_bilabial_weight: float = 1.0  # the PP frames' weight in that cross-entropy (and in audio pre-training)
    # Measure every loss at life size: coordinates x unit_scale / the example's random size
    # (train.augment_log_scale), so a head drawn at 1.65x weighs no more than one at 0.61x (squared
    # millimetres would weigh it 7x more) and the closure thresholds grow with the head.
    at_life_size: bool = False


@dataclass
class TrainSection:
    out_dir: str = "runs/scantalk"
    steps: int = 10000
    max_minutes: float = 0.0  # stop early after this wall time (0 = no limit); checkpoints are written
    lr: float = 1e-3
    min_lr: float = 1e-4
    warmup_steps: int = 200
    weight_decay: float = 0.0
    grad_clip: float = 1.0  # max gradient norm (0 = off)
    window_frames: int = 24  # frames decoded per step (0 = whole clip)
    silence_pad_prob: float = 0.3  # chance of padding a clip with silence (still face) at one end
    silence_pad_max: float = 0.6  # seconds
    augment_translate: float = 0.005  # std of a random translation (m)
    augment_scale: float = 0.05  # uniform random scale in [1 - a, 1 + a]
    # > 0: scale = exp(uniform(-a, a)) instead, symmetric in log size. The unit snap leaves user heads
    # anywhere from a third to three times life size (a sculpt, a game head); 0.5 covers 0.61-1.65x.
    augment_log_scale: float = 0.0
    freeze_audio_features: bool = False  # HuBERT/wav2vec2: keep the conv feature extractor fixed
    # Start from these weights (a model file or a last.pt, the viseme head too when it has one) with
    # a fresh optimizer and schedule: fine-tuning. --resume continues a run instead.
    init_from: str = ""
    init_fresh_audio: bool = False  # with init_from: the audio path and viseme head start from scratch
    # Steps of viseme classification on whole clips, audio path only, before joint training
    # (training/audio_pretrain.py; needs loss.phone > 0 and phone timings). Skipped on --resume.
    audio_pretrain_steps: int = 0
    audio_pretrain_lr: float = 5e-4
    # The pre-training steps get [augment]'s speed perturbation too (speed_prob, speed), labels
    # re-timed, as joint training applies it; version 4's pre-training had none.
    audio_pretrain_speed: bool = False
    audio_lr_scale: float = 1.0  # joint training: the audio path's (and viseme head's) lr multiplier
    # The decoder reads the latents as inference gives them: each clip's stretched to the model's
    # speech spread (backend/speech_spread.py), so it learns on the spread it will be given rather
    # than each voice's own. The spread comes from init_from's (or the resumed) model file, which
    # must have one (python -m training.speech_spread), and stays fixed in the trained model.
    stretch_latents: bool = False
    # > 0: validate and save a moving average of the weights over the last ~1/(1 - ema_decay) joint
    # steps (training/weight_average.py); last.pt keeps the optimised weights for --resume.
    ema_decay: float = 0.0
    val_every: int = 500
    log_every: int = 25
    seed: int = 0
    device: str = "auto"  # auto, cpu, cuda
    threads: int = 0  # torch threads per process (0 = cores / processes on this node)
    progress: bool = True


@dataclass
class AugmentSection:
    """Audio augmentation (training/augment.py), each effect with a probability; all off by default."""

    vtlp_prob: float = 0.0  # vocal-tract-length perturbation: formants and pitch scaled, timing kept
    vtlp_alpha: list = field(default_factory=lambda: [0.87, 1.15])  # log-uniform frequency factor
    gain_prob: float = 0.0
    gain_db: float = 10.0  # uniform in [-gain_db, +gain_db]
    noise_prob: float = 0.0
    noise_snr_db: list = field(default_factory=lambda: [15.0, 40.0])  # uniform in [low, high]
    noise_pink: float = 0.5  # chance that the noise is pink rather than white
    reverb_prob: float = 0.0
    reverb_rt60: list = field(default_factory=lambda: [0.1, 0.6])  # seconds
    reverb_wet: list = field(default_factory=lambda: [0.2, 0.6])  # wet share of the mix
    telephone_prob: float = 0.0  # 300-3400 Hz band-pass
    lowpass_prob: float = 0.0  # else (no telephone) a low-pass at a cut-off in lowpass_hz
    lowpass_hz: list = field(default_factory=lambda: [3000.0, 7000.0])
    codec_prob: float = 0.0  # mu-law 8-bit or a round trip through 8 kHz (half each)
    speed_prob: float = 0.0  # speed perturbation: audio resampled, motion time-scaled with it
    speed: list = field(default_factory=lambda: [0.9, 1.1])  # factor; > 1 = faster
    # Log-mel feature masking (training/feature_mask.py): bands of mel bins and spans of 10 ms
    # steps per example, each 0 to its width wide (logmel audio encoders only).
    spec_freq_masks: int = 0
    spec_freq_width: int = 8
    spec_time_masks: int = 0
    spec_time_width: int = 10
    # The generator's phones in place of the recogniser's (training/phone_stream_sim.py; a model
    # with model.audio.config.phones = "pocketsphinx"): the share of examples, and of their phones
    # swapped for another.
    phones_from_labels_prob: float = 0.0
    phones_from_labels_error: float = 0.3

    @property
    def any_audio(self) -> bool:
        return max(self.vtlp_prob, self.gain_prob, self.noise_prob, self.reverb_prob, self.telephone_prob,
                   self.lowpass_prob, self.codec_prob) > 0


@dataclass
class TrainConfig:
    model: ModelSection = field(default_factory=ModelSection)
    data: DataSection = field(default_factory=DataSection)
    loss: LossSection = field(default_factory=LossSection)
    train: TrainSection = field(default_factory=TrainSection)
    augment: AugmentSection = field(default_factory=AugmentSection)

    def to_dict(self) -> dict:
        return asdict(self)


def _parse_value(text: str):
    """A TOML value (number, bool, string, array, inline table) or, failing that, the raw string."""
    try:
        return tomllib.loads(f"v = {text}")["v"]
    except tomllib.TOMLDecodeError:
        return text


def _coerce(value, current, key: str):
    """Check/convert a value against the type of the default it replaces."""
    if isinstance(current, bool):
        if not isinstance(value, bool):
            raise ConfigError(f"{key} must be true or false, got {value!r}")
        return value
    if isinstance(current, float):
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise ConfigError(f"{key} must be a number, got {value!r}")
        return float(value)
    if isinstance(current, int):
        if isinstance(value, bool) or not isinstance(value, (int, float)) or int(value) != value:
            raise ConfigError(f"{key} must be an integer, got {value!r}")
        return int(value)
    if key.endswith("_split"):  # a split name or a list of subjects
        if isinstance(value, list):
            return [str(v) for v in value]
        return str(value)
    if isinstance(current, list):  # [low, high] ranges
        if not isinstance(value, list) or len(value) != len(current) or not all(
                isinstance(v, (int, float)) and not isinstance(v, bool) for v in value):
            raise ConfigError(f"{key} must be a list of {len(current)} numbers, got {value!r}")
        if len(value) == 2 and value[0] > value[1]:
            raise ConfigError(f"{key} must be [low, high], got {value!r}")
        return [float(v) for v in value]
    if isinstance(current, str) and not isinstance(value, str):
        return str(value)
    return value


def _apply(obj, data: dict, prefix: str = ""):
    """Merge a (nested) dict into a dataclass tree; dict-typed fields are merged key by key."""
    names = {f.name for f in fields(obj)}
    for key, value in data.items():
        path = f"{prefix}{key}"
        if key not in names:
            raise ConfigError(f"unknown config key '{path}' (known here: {', '.join(sorted(names))})")
        current = getattr(obj, key)
        if is_dataclass(current):
            if not isinstance(value, dict):
                raise ConfigError(f"'{path}' is a section; give it a table of keys")
            _apply(current, value, path + ".")
        elif isinstance(current, dict) and isinstance(value, dict):
            setattr(obj, key, _merge_dict(current, value))
        else:
            setattr(obj, key, _coerce(value, current, path))


def _merge_dict(base: dict, new: dict) -> dict:
    out = copy.deepcopy(base)
    for k, v in new.items():
        if isinstance(v, dict) and isinstance(out.get(k), dict):
            out[k] = _merge_dict(out[k], v)
        else:
            out[k] = v
    return out


def _nest(dotted: str, value) -> dict:
    parts = dotted.split(".")
    if not all(parts):
        raise ConfigError(f"bad override key '{dotted}'")
    out = value
    for p in reversed(parts):
        out = {p: out}
    return out


def parse_overrides(items) -> list[tuple[str, Any]]:
    out = []
    for item in items or []:
        if "=" not in item:
            raise ConfigError(f"override '{item}' is not key=value (e.g. train.steps=100)")
        key, text = item.split("=", 1)
        out.append((key.strip(), _parse_value(text.strip())))
    return out


def load_config(path=None, overrides=()) -> TrainConfig:
    """Defaults, then the TOML file (if any), then the `key=value` overrides in order."""
    cfg = TrainConfig()
    if path is not None:
        path = Path(path)
        if not path.is_file():
            raise ConfigError(f"config file not found: {path}")
        try:
            data = tomllib.loads(path.read_text(encoding="utf-8"))
        except tomllib.TOMLDecodeError as exc:
            raise ConfigError(f"{path}: {exc}") from exc
        _apply(cfg, data)
    for key, value in parse_overrides(overrides):
        _apply(cfg, _nest(key, value))
    return cfg


def config_from_dict(data: dict) -> TrainConfig:
    cfg = TrainConfig()
    _apply(cfg, data)
    return cfg
