"""The animate job: mesh + audio (+ checkpoint) → per-frame vertex offsets.

One function, `animate`, used by the CLI and the worker alike. Models and operators are held in a
`Session` so a long-lived worker keeps them warm between requests.
"""
from __future__ import annotations

import logging
import math
import time
from collections import OrderedDict
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from .audio_encoders import SAMPLE_RATE
from .audio_io import load_audio
from .checkpoint import load_model
from .diffusionnet import TorchOperators
from .errors import Cancelled, DeviceError, NoCheckpoint, ScanTalkError
from .framing import fit_frame
from .mesh_io import load_mesh, validate_mesh
from .model import ScanTalk
from .operator_cache import cache_key, get_operators
from .options import animate_options

log = logging.getLogger(__name__)

ASSETS = Path(__file__).resolve().parent / "assets"
DEFAULT_CHECKPOINT = ASSETS / "default_model.pt"

# Fractions of the whole job each stage ends at, for one progress bar across stages.
STAGES = {"load_mesh": 0.02, "load_audio": 0.04, "load_model": 0.08, "operators": 0.35,
          "audio": 0.45, "decode": 0.97, "write": 1.0}

# Above this length the speech encoder runs in overlapping windows: attention is quadratic in
# length, and the official model never saw more than a few seconds at once.
WINDOW_SECONDS = 20.0
OVERLAP_SECONDS = 2.0


class OutOfMemory(ScanTalkError):
    code = "out_of_memory"


@dataclass
class Result:
    offsets: np.ndarray  # float32 [T, V, 3] in the input's units and vertex order
    fps: float
    meta: dict = field(default_factory=dict)


def pick_device(name: str = "auto") -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name == "cuda" and not torch.cuda.is_available():
        raise DeviceError("CUDA was requested but this PyTorch sees no CUDA GPU; use --device cpu or auto")
    if name not in ("cpu", "cuda"):
        raise DeviceError(f"unknown device {name!r}; use auto, cpu or cuda")
    return torch.device(name)


def resolve_checkpoint(path) -> Path:
    if path:
        return Path(path).expanduser()
    if DEFAULT_CHECKPOINT.is_file():
        return DEFAULT_CHECKPOINT
    raise NoCheckpoint(
        "this build has no bundled default model; choose a checkpoint file (the Checkpoint field in "
        "Blender, --checkpoint on the command line): an official ScanTalk .pth.tar or a model "
        "trained with `python -m training.train`"
    )


class Session:
    """Warm state across requests: loaded models and operators on device (small LRU caches)."""

    def __init__(self, cache_dir=None, max_models: int = 2, max_shapes: int = 4):
        self.cache_dir = cache_dir
        self._models: OrderedDict = OrderedDict()
        self._ops: OrderedDict = OrderedDict()
        self.max_models, self.max_shapes = max_models, max_shapes

    @staticmethod
    def _remember(store: OrderedDict, key, value, limit: int):
        store[key] = value
        store.move_to_end(key)
        while len(store) > limit:
            store.popitem(last=False)

    def model(self, path: Path, device: torch.device) -> tuple[ScanTalk, bool]:
        stat = path.stat() if path.is_file() else None
        key = (str(path.resolve()), stat.st_mtime_ns if stat else 0, str(device))
        if key in self._models:
            self._models.move_to_end(key)
            return self._models[key], True
        model = load_model(path, device)
        self._remember(self._models, key, model, self.max_models)
        return model, False

    def operators(self, verts, faces, model: ScanTalk, device) -> tuple[TorchOperators, str]:
        """Returns the operators and where they came from: memory, disk or computed."""
        key = (cache_key(verts, faces, model.cfg.k_eig, model.cfg.grad_eps), str(device))
        if key in self._ops:
            self._ops.move_to_end(key)
            return self._ops[key], "memory"
        ops, hit = get_operators(verts, faces, model.cfg.k_eig, model.cfg.grad_eps, cache=self.cache_dir)
        tops = TorchOperators.from_numpy(ops, device)
        self._remember(self._ops, key, tops, self.max_shapes)
        return tops, "disk" if hit else "computed"


def _window_bounds(n_frames: int, fps: float) -> list[tuple[int, int]]:
    """Overlapping [f0, f1) frame ranges that cover the clip."""
    win = int(WINDOW_SECONDS * fps)
    hop = win - int(OVERLAP_SECONDS * fps)
    bounds, f0 = [], 0
    while True:
        f1 = min(f0 + win, n_frames)
        bounds.append((f0, f1))
        if f1 >= n_frames:
            return bounds
        f0 += hop


def encode_speech(model: ScanTalk, wav: torch.Tensor, n_frames: int, fps: float, check=None) -> torch.Tensor:
    """Speech-encoder features [1, T, D]; long clips in overlapping windows, cross-faded."""
    if n_frames <= int(WINDOW_SECONDS * fps) + int(OVERLAP_SECONDS * fps):
        return model.audio_encoder(wav, n_frames)
    out = None
    weight = torch.zeros(n_frames, 1, device=wav.device)
    for f0, f1 in _window_bounds(n_frames, fps):
        if check:
            check()
        s0 = int(round(f0 / fps * SAMPLE_RATE))
        s1 = min(wav.shape[1], int(round((f1 - 1) / fps * SAMPLE_RATE)) + 1)
        feats = model.audio_encoder(wav[:, s0:s1], f1 - f0)[0]
        if out is None:
            out = torch.zeros(n_frames, feats.shape[1], device=wav.device)
        # Triangular weights over the overlap: neighbours blend linearly, no seam or jump.
        ramp = torch.ones(f1 - f0, 1, device=wav.device)
        k = int(OVERLAP_SECONDS * fps)
        if f0 > 0:
            ramp[:k, 0] = torch.linspace(0, 1, k + 2, device=wav.device)[1:-1]
        if f1 < n_frames:
            ramp[-k:, 0] = torch.linspace(1, 0, k + 2, device=wav.device)[1:-1]
        out[f0:f1] += feats * ramp
        weight[f0:f1] += ramp
    return (out / weight)[None]


def input_warnings(model_verts: np.ndarray, reference_size: float, n_vertices: int) -> list[str]:
    """Things that still work but that a user should know about."""
    out = []
    if reference_size > 0:
        diag = float(np.linalg.norm(model_verts.max(0) - model_verts.min(0)))
        ratio = diag / reference_size
        if ratio > 2.0 or ratio < 0.4:
            out.append(f"the mesh is {ratio:.1f}x the size of the heads this model was trained on "
                       f"(after unit detection): if it is not a head, or its units are unusual, "
                       f"expect weak or odd motion; set the units explicitly if they were guessed wrong")
    if n_vertices > 150_000:
        out.append(f"{n_vertices} vertices: this works, but a decimated copy (20-50k vertices) "
                   f"animates several times faster with the same look")
    return out


def resample_motion(offsets: np.ndarray, fps_in: float, fps_out: float) -> np.ndarray:
    """Linear resampling in time; output frame j sits at j / fps_out seconds."""
    if abs(fps_in - fps_out) < 1e-9 or len(offsets) < 2:
        return offsets
    duration = (len(offsets) - 1) / fps_in
    n_out = int(math.floor(duration * fps_out + 1e-6)) + 1
    t = np.arange(n_out) / fps_out * fps_in
    i0 = np.clip(np.floor(t).astype(int), 0, len(offsets) - 1)
    i1 = np.clip(i0 + 1, 0, len(offsets) - 1)
    w = (t - i0).astype(np.float32)[:, None, None]
    return (offsets[i0] * (1 - w) + offsets[i1] * w).astype(np.float32)


def chunk_size(n_vertices: int, width: int, device: torch.device) -> int:
    """Frames decoded at once. On CPU the decoder is memory-bound: measured on FLAME (5k
    vertices), one frame at a time runs 4x faster than 89 at once because activations stay in
    cache, so batch only as many frames as make ~8k vertex rows. GPUs want big batches, within
    a memory budget (~16 live [V, C] activations per frame in a block)."""
    if device.type == "cpu":
        return max(1, min(64, 8192 // max(n_vertices, 1)))
    per_frame = n_vertices * width * 4 * 16
    return max(1, int(2 * 2**30 // per_frame))


def animate(mesh, audio, checkpoint=None, fps: float | None = None, device: str = "auto",
            start: float = 0.0, duration: float | None = None, normalize: str = "auto",
            units: str | None = None, session: Session | None = None, progress=None, cancel=None) -> Result:
    """Predict offsets for `mesh` (path or (vertices, faces)) speaking `audio` (path).

    `progress(stage, fraction, message)` is called as work advances; `cancel()` returning True
    stops the job with `Cancelled` at the next check.
    """
    opts = animate_options(fps=fps, start=start, duration=duration, device=device, normalize=normalize,
                           units=units)
    fps, start, duration, device = opts["fps"], opts["start"], opts["duration"], opts["device"]
    normalize, units = opts["normalize"], opts["units"]
    session = session or Session()
    timings: dict[str, float] = {}
    t_all = time.perf_counter()

    def step(stage, message=""):
        if cancel is not None and cancel():
            raise Cancelled("cancelled")
        if progress is not None:
            progress(stage, STAGES[stage], message)

    def check():
        if cancel is not None and cancel():
            raise Cancelled("cancelled")

    t = time.perf_counter()
    if isinstance(mesh, (str, Path)):
        verts, faces = load_mesh(mesh)
    else:
        verts, faces = np.asarray(mesh[0], np.float64), np.asarray(mesh[1], np.int64).reshape(-1, 3)
        validate_mesh(verts, faces)
    timings["load_mesh"] = time.perf_counter() - t
    step("load_mesh", f"{len(verts)} vertices")

    t = time.perf_counter()
    samples = load_audio(audio, start=start, duration=duration)
    timings["load_audio"] = time.perf_counter() - t
    step("load_audio", f"{len(samples) / SAMPLE_RATE:.2f} s of audio")

    dev = pick_device(device)
    ckpt = resolve_checkpoint(checkpoint)
    t = time.perf_counter()
    model, warm_model = session.model(ckpt, dev)
    timings["load_model"] = time.perf_counter() - t
    step("load_model", f"{model.cfg.name} on {dev.type}")

    cfg = model.cfg
    frame = fit_frame(verts, cfg.frame_centre, cfg.frame_size, normalize, units)
    model_verts = frame.to_model(verts)
    warnings = input_warnings(model_verts, cfg.frame_size, len(verts))
    for w in warnings:
        log.warning(w)
    try:
        t = time.perf_counter()
        ops, ops_source = session.operators(model_verts, faces, model, dev)
        timings["operators"] = time.perf_counter() - t
        step("operators", f"operators {ops_source}")

        with torch.inference_mode():
            t = time.perf_counter()
            wav = torch.from_numpy(samples)[None].to(dev)
            n_frames = model.num_frames(wav.shape[1], cfg.fps)
            if n_frames < 2:
                raise ScanTalkError("the audio is too short for even two frames of animation")
            feats = encode_speech(model, wav, n_frames, cfg.fps, check)
            audio_lat, _ = model.lstm(model.audio_embedding(feats))
            audio_lat = audio_lat[0]
            neutral = torch.from_numpy(model_verts).float().to(dev)
            geom = model.encode_geometry(neutral, ops)
            timings["audio_and_geometry"] = time.perf_counter() - t
            step("audio", f"{n_frames} frames at {cfg.fps:g} fps")

            t = time.perf_counter()
            lo, hi = STAGES["audio"], STAGES["decode"]

            def on_chunk(done, total):
                check()
                if progress is not None:
                    progress("decode", lo + (hi - lo) * done / total, f"frame {done}/{total}")

            chunk = chunk_size(len(verts), cfg.width, dev)
            offsets = model.decode(geom, audio_lat, ops, chunk_frames=chunk, on_chunk=on_chunk)
            offsets = offsets.float().cpu().numpy()
            timings["decode"] = time.perf_counter() - t
    except torch.cuda.OutOfMemoryError as exc:
        raise OutOfMemory(f"the GPU ran out of memory on a {len(verts)}-vertex mesh; "
                          f"retry with device cpu or decimate the mesh") from exc
    except MemoryError as exc:
        raise OutOfMemory(f"out of memory on a {len(verts)}-vertex mesh; close other programs "
                          f"or decimate the mesh") from exc

    offsets = frame.offsets_from_model(offsets)
    out_fps = float(fps) if fps is not None else float(cfg.fps)
    offsets = resample_motion(offsets, cfg.fps, out_fps)
    timings["total"] = time.perf_counter() - t_all
    meta = {
        "model": cfg.name, "checkpoint": str(ckpt), "device": dev.type, "native_fps": cfg.fps,
        "frames": int(offsets.shape[0]), "vertices": int(offsets.shape[1]),
        "operators": ops_source, "model_warm": warm_model, "frame": frame.to_dict(), "warnings": warnings,
        "timings": {k: round(v, 4) for k, v in timings.items()},
        "decode_ms_per_frame": round(1000 * timings["decode"] / max(n_frames, 1), 3),
    }
    return Result(offsets=offsets.astype(np.float32, copy=False), fps=out_fps, meta=meta)


def write_result(result: Result, path) -> Path:
    """Write the npz atomically: a failed or cancelled run leaves no partial file."""
    import json
    import os
    import tempfile

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, suffix=".npz.tmp")
    try:
        with os.fdopen(fd, "wb") as fh:
            np.savez(fh, offsets=result.offsets, fps=np.float64(result.fps), meta=np.asarray(json.dumps(result.meta)))
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(tmp, 0o666 & ~umask)  # mkstemp makes 0600; the result is an ordinary user file
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path
