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
from .audio_io import load_audio, window_samples
from .checkpoint import load_model
from .components import RidePlan, ride_plan
from .diffusionnet import TorchOperators
from .errors import BadRequest, Cancelled, DeviceError, NoCheckpoint, ScanTalkError
from .framing import fit_frame
from .mesh_io import load_mesh, validate_mesh
from .model import ScanTalk
from .operator_cache import cache_key, get_operators
from .options import MAX_SECONDS, animate_options
from .speech_spread import apply_stretch, clip_stretch, frame_levels, is_speech_like, speech_frames

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
    if name.startswith("cuda:") and name[5:].isdigit():
        if not torch.cuda.is_available() or int(name[5:]) >= torch.cuda.device_count():
            raise DeviceError(f"{name} was requested but this PyTorch sees "
                              f"{torch.cuda.device_count() if torch.cuda.is_available() else 'no'} CUDA GPU(s)")
        return torch.device(name)
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
        # Heat diffusion leaves spectral coefficients below float32's normal range, and CPUs
        # compute on such subnormals many times slower: a head a third smaller in the model's
        # frame (head_scale 1.5) decoded 1.5x slower. Flushed to zero, both run at the same speed;
        # the change in the offsets is below 1e-38.
        torch.set_flush_denormal(True)
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
    """Speech-encoder features [1, T, D]; long clips in overlapping windows, cross-faded, each
    normalised by the whole clip's statistics as a single pass would be."""
    if n_frames <= int(WINDOW_SECONDS * fps) + int(OVERLAP_SECONDS * fps):
        return model.audio_encoder(wav, n_frames)
    stats = model.audio_encoder.clip_stats(wav)
    out = None
    weight = torch.zeros(n_frames, 1, device=wav.device)
    for f0, f1 in _window_bounds(n_frames, fps):
        if check:
            check()
        s0 = int(round(f0 / fps * SAMPLE_RATE))
        s1 = min(wav.shape[1], int(round((f1 - 1) / fps * SAMPLE_RATE)) + 1)
        feats = model.audio_encoder(wav[:, s0:s1], f1 - f0, stats=stats)[0]
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


# A clip whose loud frames (95th percentile) are quieter than this holds nothing to say: the face
# stays at rest. -60 dBFS is ffmpeg silencedetect's default floor; the loud frames of the 91 real
# recordings the articulation judges use sit at -12 to -38 dBFS. Without this rule the model,
# which normalises every clip's loudness, reads digital silence as a mouth held 3 mm open and a
# quiet room's hiss as mumbling.
SILENT_DBFS = -60.0


def silent_clip(levels: torch.Tensor) -> str | None:
    """The warning for a clip with nothing audible in it (SILENT_DBFS), else None; `levels` are
    its frames' (speech_spread.frame_levels)."""
    loud = float(torch.quantile(levels, 0.95))
    if loud >= SILENT_DBFS:
        return None
    return (f"the audio is silent (its loudest moments are at {max(loud, -120.0):.0f} dBFS, below "
            f"{SILENT_DBFS:.0f}): the face stays at rest. If it should speak, check that the right "
            f"audio and range were chosen and that the recording is not muted")


NOT_SPEECH = ("the audio does not sound like speech to the model (music, noise or near silence?): "
              "the lips will not follow it as they follow a voice")


def raw_latents(model: ScanTalk, wav: torch.Tensor, n_frames: int, fps: float, check=None) -> torch.Tensor:
    """[n_frames, latent]: the speech features through the BiLSTM, as the model computes them."""
    return model.lstm(model.audio_embedding(encode_speech(model, wav, n_frames, fps, check)))[0][0]


def audio_latents(model: ScanTalk, wav: torch.Tensor, n_frames: int, fps: float, check=None,
                  warnings: list | None = None, levels: torch.Tensor | None = None) -> torch.Tensor:
    """What the decoder reads, [n_frames, latent]: the raw latents with the spread of the model's
    training speech (backend/speech_spread.py). A clip the model does not hear as speech adds
    NOT_SPEECH to `warnings`. `levels`: the frames' (frame_levels), when the caller has them."""
    latents = raw_latents(model, wav, n_frames, fps, check)
    speech = speech_frames(frame_levels(wav, n_frames, fps) if levels is None else levels)
    stretch = clip_stretch(latents, speech, model.cfg.speech_spread)
    if warnings is not None and not is_speech_like(stretch):
        log.warning(NOT_SPEECH)
        warnings.append(NOT_SPEECH)
    return apply_stretch(latents, speech, stretch)


def input_warnings(model_verts: np.ndarray, reference_size: float, n_vertices: int) -> list[str]:
    """Things that still work but that a user should know about."""
    out = []
    if reference_size > 0:
        diag = float(np.linalg.norm(model_verts.max(0) - model_verts.min(0)))
        ratio = diag / reference_size
        # The default model's training heads span 0.7-1.5x their mean diagonal; past 1.6x a real
        # head is larger than life (version 4 opens its mouth 0.6x as wide at 1.5x life size).
        if ratio > 1.6 or ratio < 0.5:
            bigger = "larger" if ratio > 1 else "smaller"
            out.append(f"the mesh is {ratio:.1f}x the size of the heads this model was trained on "
                       f"(after unit detection and head scale), and a head far from life size moves "
                       f"its lips less, or oddly. If it is a head {bigger} than life, set the head "
                       f"scale (how many times life size it is: --head-scale, or Head Scale in the "
                       f"add-on); if its units were guessed wrong, set the units; a mesh with "
                       f"shoulders or a body can stay as it is")
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


class StreamResampler:
    """`resample_motion` for frames arriving in chunks: push native-rate chunks in order, get
    the output frames they complete. Needs only the last native frame of the previous chunk."""

    def __init__(self, n_in: int, fps_in: float, fps_out: float):
        self.n_in = n_in
        self.identity = abs(fps_in - fps_out) < 1e-9 or n_in < 2
        if self.identity:
            self.n_out = n_in
        else:
            duration = (n_in - 1) / fps_in
            self.n_out = int(math.floor(duration * fps_out + 1e-6)) + 1
            self.t = np.arange(self.n_out) / fps_out * fps_in
            self.i0 = np.clip(np.floor(self.t).astype(int), 0, n_in - 1)
            self.i1 = np.clip(self.i0 + 1, 0, n_in - 1)
        self.base = 0  # native index of the next chunk's first frame
        self.next_out = 0
        self.prev = None  # the last native frame pushed, [1, V, 3]

    def push(self, chunk: np.ndarray) -> np.ndarray:
        n = len(chunk)
        if self.identity:
            self.base += n
            return chunk
        end = self.base + n
        j1 = int(np.searchsorted(self.i1, end - 1, side="right"))  # i1 is non-decreasing
        j0 = self.next_out
        if self.prev is not None:
            buf, origin = np.concatenate([self.prev, chunk]), self.base - 1
        else:
            buf, origin = chunk, self.base
        i0, i1 = self.i0[j0:j1] - origin, self.i1[j0:j1] - origin
        w = (self.t[j0:j1] - self.i0[j0:j1]).astype(np.float32)[:, None, None]
        out = (buf[i0] * (1 - w) + buf[i1] * w).astype(np.float32)
        self.prev = chunk[-1:].copy() if n else self.prev
        self.base, self.next_out = end, j1
        return out


@dataclass
class _Prepared:
    """Everything decoded frames need: the job after its audio and geometry are encoded."""

    model: ScanTalk
    ops: TorchOperators
    geom: torch.Tensor
    audio_lat: torch.Tensor  # [T_native, L]: small, kept whole (the BiLSTM sees the whole clip)
    frame: object
    n_vertices: int
    n_native: int
    out_fps: float
    meta: dict
    timings: dict


class ArraySink:
    """Collects the frames in memory (the `animate` function's `Result`)."""

    def __init__(self, n_frames: int, n_vertices: int):
        self.offsets = np.empty((n_frames, n_vertices, 3), np.float32)
        self.written = 0

    def write(self, chunk):
        self.offsets[self.written:self.written + len(chunk)] = chunk
        self.written += len(chunk)


# Decoded frames are handed to the sink in blocks of about this many bytes: few, large writes;
# memory stays bounded whatever the clip length.
WRITE_BLOCK_BYTES = 32 * 2**20


def _rest_chunks(n_frames: int, n_vertices: int, chunk: int, device, on_chunk):
    """What `ScanTalk.decode_chunks` yields for a face at rest: zero offsets, a chunk at a time."""
    for s in range(0, n_frames, chunk):
        yield torch.zeros(min(chunk, n_frames - s), n_vertices, 3, device=device)
        on_chunk(min(s + chunk, n_frames), n_frames)


def _run(mesh, audio, checkpoint, fps, device, start, duration, normalize, units, session,
         progress, cancel, make_sink, dtype="float32", head_scale=None):
    """The streaming pipeline shared by `animate` and `animate_to_file`: encode the audio and the
    neutral mesh, then decode chunks of frames into `make_sink(n_frames, n_vertices)` (an object
    with `write(float32 [t, V, 3])`). Returns (sink, fps, meta). Nothing here holds all frames."""
    opts = animate_options(fps=fps, start=start, duration=duration, device=device, normalize=normalize,
                           units=units, dtype=dtype, head_scale=head_scale)
    fps, start, duration, device = opts["fps"], opts["start"], opts["duration"], opts["device"]
    normalize, units = opts["normalize"], opts["units"]
    session = session or Session()
    timings: dict[str, float] = {}
    t_all = time.perf_counter()

    def check():
        if cancel is not None and cancel():
            raise Cancelled("cancelled")

    def step(stage, message=""):
        check()
        if progress is not None:
            progress(stage, STAGES[stage], message)

    t = time.perf_counter()
    if isinstance(mesh, (str, Path)):
        verts, faces = load_mesh(mesh)
    else:
        verts, faces = np.asarray(mesh[0], np.float64), np.asarray(mesh[1], np.int64).reshape(-1, 3)
        validate_mesh(verts, faces)
    timings["load_mesh"] = time.perf_counter() - t
    step("load_mesh", f"{len(verts)} vertices")

    t = time.perf_counter()
    in_memory = isinstance(audio, np.ndarray)
    if duration is None:  # refuse hours-long files before decoding them
        from .audio_io import audio_duration

        length = (len(audio) / SAMPLE_RATE if in_memory else audio_duration(audio)) - max(start, 0.0)
        if length > MAX_SECONDS:
            raise BadRequest(f"the audio runs {length / 3600:.1f} h from the start point; at most "
                             f"{MAX_SECONDS / 3600:g} h is animated at once: set a duration or split the file")
    if in_memory:
        samples = window_samples(audio, start=start, duration=duration, sr=SAMPLE_RATE)
    else:
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
    frame = fit_frame(verts, cfg.frame_centre, cfg.frame_size, normalize, units, opts["head_scale"])
    model_verts = frame.to_model(verts)
    warnings = input_warnings(model_verts, cfg.frame_size, len(verts))
    for w in warnings:
        log.warning(w)
    n_vertices = len(verts)
    sink = None
    try:
        t = time.perf_counter()
        ops, ops_source = session.operators(model_verts, faces, model, dev)
        timings["operators"] = time.perf_counter() - t
        step("operators", f"operators {ops_source}")

        with torch.inference_mode():
            t = time.perf_counter()
            wav = torch.from_numpy(samples)[None].to(dev)
            del samples
            n_frames = model.num_frames(wav.shape[1], cfg.fps)
            if n_frames < 2:
                raise ScanTalkError("the audio is too short for even two frames of animation")
            levels = frame_levels(wav, n_frames, cfg.fps)
            silent = silent_clip(levels)
            if silent:
                log.warning(silent)
                warnings.append(silent)
                audio_lat = geom = None  # nothing to decode: _rest_chunks
            else:
                audio_lat = audio_latents(model, wav, n_frames, cfg.fps, check, warnings, levels)
                geom = model.encode_geometry(torch.from_numpy(model_verts).float().to(dev), ops)
            del wav
            riders = ride_plan(model_verts, faces) if cfg.separate_parts == "ride" else RidePlan(())
            timings["audio_and_geometry"] = time.perf_counter() - t
            step("audio", f"{n_frames} frames at {cfg.fps:g} fps")

            out_fps = float(fps) if fps is not None else float(cfg.fps)
            resampler = StreamResampler(n_frames, cfg.fps, out_fps)
            sink = make_sink(resampler.n_out, n_vertices)
            t = time.perf_counter()
            t_write = 0.0
            lo, hi = STAGES["audio"], STAGES["decode"]
            last_report = [0.0, -1.0]

            def on_chunk(done, total):
                check()
                now = time.perf_counter()
                frac = done / total
                # at most ~5 progress events a second, and one per 0.5 % of the job
                if progress is not None and (done == total or (now - last_report[0] > 0.2
                                                               and frac - last_report[1] >= 0.005)):
                    last_report[:] = [now, frac]
                    progress("decode", lo + (hi - lo) * frac, f"frame {done}/{total}")

            chunk = chunk_size(n_vertices, cfg.width, dev)
            block = max(chunk, WRITE_BLOCK_BYTES // (n_vertices * 12))
            pending, n_pending = [], 0

            def flush():
                nonlocal t_write
                if not pending:
                    return
                native = torch.cat(pending).float().cpu().numpy() if len(pending) > 1 else \
                    pending[0].float().cpu().numpy()
                pending.clear()
                riders.apply(native)
                tw = time.perf_counter()
                sink.write(resampler.push(frame.offsets_from_model(native)))
                t_write += time.perf_counter() - tw

            parts = _rest_chunks(n_frames, n_vertices, chunk, dev, on_chunk) if silent else \
                model.decode_chunks(geom, audio_lat, ops, chunk_frames=chunk, on_chunk=on_chunk)
            for part in parts:
                pending.append(part if dev.type == "cpu" else part.cpu())
                n_pending += len(part)
                if n_pending >= block:
                    flush()
                    n_pending = 0
            flush()
            timings["decode"] = time.perf_counter() - t - t_write
            timings["write"] = t_write
    except torch.cuda.OutOfMemoryError as exc:
        raise OutOfMemory(f"the GPU ran out of memory on a {n_vertices}-vertex mesh; "
                          f"retry with device cpu or decimate the mesh") from exc
    except MemoryError as exc:
        raise OutOfMemory(f"out of memory on a {n_vertices}-vertex mesh; close other programs "
                          f"or decimate the mesh") from exc

    timings["total"] = time.perf_counter() - t_all
    meta = {
        "model": cfg.name, "checkpoint": str(ckpt), "device": dev.type, "native_fps": cfg.fps,
        "frames": int(resampler.n_out), "vertices": int(n_vertices), "dtype": opts["dtype"],
        "operators": ops_source, "model_warm": warm_model, "frame": frame.to_dict(), "warnings": warnings,
        "riding_parts": [int(len(p)) for p, _ in riders.parts],
        "timings": {k: round(v, 4) for k, v in timings.items()},
        "decode_ms_per_frame": round(1000 * timings["decode"] / max(n_frames, 1), 3),
    }
    return sink, out_fps, meta


def animate(mesh, audio, checkpoint=None, fps: float | None = None, device: str = "auto",
            start: float = 0.0, duration: float | None = None, normalize: str = "auto",
            units: str | None = None, session: Session | None = None, progress=None, cancel=None,
            head_scale: float | None = None) -> Result:
    """Predict offsets for `mesh` (path or (vertices, faces)) speaking `audio` (a path, or float
    samples [N], mono at 16 kHz), in memory. `head_scale`: how many times life size the head is
    (a sculpt at 2x: 2); the model sees it at life size and its motion is scaled back with it.

    `progress(stage, fraction, message)` is called as work advances; `cancel()` returning True
    stops the job with `Cancelled` at the next check. For long clips use `animate_to_file`, which
    streams frames to disk and never holds them all.
    """
    sink, out_fps, meta = _run(mesh, audio, checkpoint, fps, device, start, duration, normalize, units,
                               session, progress, cancel, ArraySink, head_scale=head_scale)
    return Result(offsets=sink.offsets, fps=out_fps, meta=meta)


@dataclass
class FileResult:
    path: Path
    frames: int
    vertices: int
    fps: float
    meta: dict = field(default_factory=dict)


def animate_to_file(mesh, audio, out, checkpoint=None, fps: float | None = None, device: str = "auto",
                    start: float = 0.0, duration: float | None = None, normalize: str = "auto",
                    units: str | None = None, dtype: str = "float32", session: Session | None = None,
                    progress=None, cancel=None, head_scale: float | None = None) -> FileResult:
    """`animate`, streamed: frames are written to the result file `out` (backend.result_file) in
    blocks as they are decoded; memory does not grow with the clip's length. The file appears
    (atomically) only when complete; a cancel or error leaves nothing."""
    from .result_file import ResultWriter

    writer = None

    def make_sink(n_frames, n_vertices):
        nonlocal writer
        writer = ResultWriter(out, n_frames, n_vertices, dtype)
        return writer

    try:
        sink, out_fps, meta = _run(mesh, audio, checkpoint, fps, device, start, duration, normalize, units,
                                   session, progress, cancel, make_sink, dtype=dtype, head_scale=head_scale)
        if cancel is not None and cancel():
            raise Cancelled("cancelled")
        t = time.perf_counter()
        path = writer.finish(out_fps, meta)
        meta["timings"]["write"] = round(meta["timings"].get("write", 0.0) + time.perf_counter() - t, 4)
    except ValueError as exc:
        if writer is not None:
            writer.abort()
        if "float16" in str(exc):
            raise BadRequest(str(exc)) from exc
        raise
    except BaseException:
        if writer is not None:
            writer.abort()
        raise
    return FileResult(path=Path(path), frames=meta["frames"], vertices=meta["vertices"], fps=out_fps, meta=meta)


def write_result(result: Result, path, dtype: str = "float32") -> Path:
    """Write an in-memory `Result` in the result-file format, atomically."""
    from .result_file import ResultWriter

    w = ResultWriter(path, len(result.offsets), result.offsets.shape[1], dtype)
    with w:
        step = max(1, WRITE_BLOCK_BYTES // max(1, result.offsets[0].nbytes))
        for a in range(0, len(result.offsets), step):
            w.write(result.offsets[a:a + step])
        return w.finish(result.fps, result.meta)
