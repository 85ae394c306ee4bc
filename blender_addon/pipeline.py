"""One animate run, split so the synchronous and the modal operator share it:

    prep = prepare(context, settings)      # validate, export mesh, resolve audio (touches nothing)
    job = AnimateJob(factory, prep.fields) # the backend works (job.py)
    computed = compute(prep, job.result)   # plan the keys from the result file (no bpy: a thread may run it)
    summary = write(context, prep, computed)   # write shape keys, action, NLA strip

`apply_result` is the last two in one call. Every failure raises PipelineError with a message for
the UI; `prep.cleanup()` removes temp files.
"""
from __future__ import annotations

import json
import math
import os
import shutil
import tempfile
import threading
import zipfile
from dataclasses import dataclass, field

import bpy
import numpy as np

from . import audio_source, basis, companions, estimate, mesh_export, result_file, rig, writeback
from .audio_source import AudioSourceError
from .mesh_export import MeshExportError
from .properties import OBJECT_SETTINGS
from .writeback import WritebackError

TYPICAL_HEAD_DIAGONAL_M = 0.35  # bounding-box diagonal of a human head (for unit guessing)


class PipelineError(RuntimeError):
    pass


@dataclass
class Settings:
    strip: str = ""
    audio_path: str = ""
    checkpoint: str = ""
    mode: str = "COMPACT"
    strength: float = 1.0
    smoothing: float = 0.0
    max_error_mm: float = 0.1
    axes: str = "AUTO"
    head_scale: float = 1.0  # the head's size in life sizes (a sculpt at 2x: 2)
    fit_frame_range: bool = True
    device: str = "auto"
    max_basis: int = 64
    rig_keyset: str = "ALL"  # Rig mode: ALL, ARKIT or LIST
    rig_keys: str = ""  # LIST: comma-separated shape-key names
    rig_smooth: float = 0.001
    companions: str = ""  # Rig mode: comma-separated objects that follow the jaw

    @classmethod
    def gather(cls, context, op=None, prefs=None) -> "Settings":
        """Operator properties that were set win; then the panel's settings (audio: the scene's;
        model, mode, strength...: the active object's own); then defaults. `prefs` is the
        preferences' plain values (prefs.values()), read once by the operator."""
        s = cls()
        scene_settings = getattr(context.scene, "scantalk", None)
        if scene_settings is not None:
            if scene_settings.source == "FILE":
                s.audio_path = scene_settings.audio_path
            else:
                s.strip = scene_settings.strip
            s.fit_frame_range = scene_settings.fit_frame_range
        obj = getattr(context, "active_object", None)
        obj_settings = getattr(obj, "scantalk", None)
        if obj_settings is not None:
            for name in OBJECT_SETTINGS:
                setattr(s, name, getattr(obj_settings, name))
            s.companions = ", ".join(c.object.name for c in getattr(obj_settings, "companions", ())
                                     if c.object is not None)
        if op is not None:
            props = op.properties
            if props.is_property_set("audio_path") or props.is_property_set("strip"):
                s.audio_path = op.audio_path if props.is_property_set("audio_path") else ""
                s.strip = op.strip if props.is_property_set("strip") else ""
            for name in OBJECT_SETTINGS:
                if props.is_property_set(name):
                    setattr(s, name, getattr(op, name))
            if "companions" in props.bl_rna.properties and props.is_property_set("companions"):
                s.companions = op.companions
        if prefs is not None:
            s.device, s.max_basis = prefs.device, prefs.max_basis
        return s


@dataclass
class Prepared:
    object_name: str
    scene_name: str
    settings: Settings
    export: mesh_export.ExportInfo
    audio: audio_source.AudioSpec
    fields: dict
    temp_dir: str
    warnings: list = field(default_factory=list)
    rig: dict | None = None  # Rig mode: names, deltas_local, ranges, companions (object names)
    notices: list = field(default_factory=list)  # said when the job starts (e.g. Exact's size)

    def cleanup(self) -> None:
        shutil.rmtree(self.temp_dir, ignore_errors=True)


def prepare(context, settings: Settings) -> Prepared:
    obj = context.active_object if hasattr(context, "active_object") else context.object
    if obj is None:
        raise PipelineError("Select the head mesh (make it the active object) and try again.")
    if obj.type != "MESH":
        raise PipelineError(f"'{obj.name}' is a {obj.type.lower()}, not a mesh: select the head mesh.")
    if obj.data.library is not None:
        raise PipelineError(f"Mesh '{obj.data.name}' is linked from a library; make it local first.")
    if obj.mode == "EDIT":
        obj.update_from_editmode()
        if bpy.ops.object.mode_set.poll():
            bpy.ops.object.mode_set(mode="OBJECT")
    context.view_layer.update()  # a script may have just moved the object: matrix_world must be current
    ckpt = ""
    if settings.checkpoint:
        ckpt = os.path.normpath(bpy.path.abspath(settings.checkpoint))
        if not os.path.isfile(ckpt):
            raise PipelineError(f"Checkpoint file not found: {ckpt}")
    scene = context.scene
    tmp = tempfile.mkdtemp(prefix="scantalk_")
    try:
        audio = audio_source.resolve(scene, settings.strip, settings.audio_path, temp_dir=tmp,
                                     seq_scene=audio_source.sequencer_scene(context))
        export = mesh_export.export_mesh(obj, os.path.join(tmp, "mesh.npz"), settings.axes)
    except (AudioSourceError, MeshExportError) as exc:
        shutil.rmtree(tmp, ignore_errors=True)
        raise PipelineError(str(exc)) from exc
    except Exception:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    frames = clip_frames(audio)
    if frames is not None:
        full = estimate.disk_check(frames, export.stats["vertices"], tmp)
        if full:
            shutil.rmtree(tmp, ignore_errors=True)
            raise PipelineError(full)
    notices = []
    if settings.mode == "EXACT" and frames is not None:
        level, text = estimate.exact_check(frames, export.stats["vertices"], estimate.physical_memory())
        if level == "ERROR":
            shutil.rmtree(tmp, ignore_errors=True)
            raise PipelineError(text)
        if text:
            notices.append(text)
    fields = {"mesh": export.path, "out": os.path.join(tmp, "result.npz"), "checkpoint": ckpt or None,
              "device": settings.device, "normalize": "auto", "head_scale": float(settings.head_scale),
              **audio.request_fields()}
    if settings.mode == "COMPACT":  # the backend fits the basis; Blender receives K shapes + weights
        fields["compact"] = {"max_error_mm": float(settings.max_error_mm), "k_max": int(settings.max_basis),
                             "strength": float(settings.strength), "smoothing": float(settings.smoothing)}
    rig_input = None
    if settings.mode == "RIG":
        try:
            rig_input = _prepare_rig(obj, settings, export, tmp, fields)
        except Exception:
            shutil.rmtree(tmp, ignore_errors=True)
            raise
    return Prepared(object_name=obj.name, scene_name=scene.name, settings=settings, export=export, audio=audio,
                    fields=fields, temp_dir=tmp, warnings=[*audio.warnings, *export.warnings], rig=rig_input,
                    notices=notices)


def clip_frames(audio: audio_source.AudioSpec) -> int | None:
    """Frames the backend will return for `audio` (None when its length cannot be told cheaply)."""
    seconds = audio.duration
    if seconds is None:
        length = audio_source._sound_seconds(audio.path) or estimate.wav_seconds(audio.path)
        seconds = None if length is None else max(0.0, length - max(audio.start, 0.0))
    return None if seconds is None else int(seconds * audio.fps) + 1


def _prepare_rig(obj, settings: Settings, export, tmp: str, fields: dict) -> dict:
    """Rig mode: the keys to drive (written for the worker, in the model frame) and the companions."""
    prev = writeback.result_info(obj) or {}
    try:
        names, deltas, ranges = rig.collect_keys(obj, settings.rig_keyset, settings.rig_keys, prev.get("keys", ()))
    except rig.RigSetupError as exc:
        raise PipelineError(str(exc)) from exc
    comps = []
    for name in rig.split_list(settings.companions):
        ob = bpy.data.objects.get(name)
        if ob is None:
            raise PipelineError(f"Jaw follower '{name}' does not exist.")
        if ob == obj:
            raise PipelineError(f"'{name}' is the head itself; jaw followers are other objects (lower teeth, tongue).")
        if ob.rotation_mode == "AXIS_ANGLE":
            raise PipelineError(f"Jaw follower '{name}' uses axis-angle rotation: set Quaternion or an Euler order.")
        comps.append(ob.name)
    R = export.rotation.astype(np.float32)
    deltas_model = deltas @ R.T
    path = os.path.join(tmp, "rig_keys.npz")
    rig.save_keys_npz(path, names, deltas_model, ranges)
    fields["rig"] = {"keys": path, "smooth": float(settings.rig_smooth), "scale": float(settings.strength)}
    return {"names": names, "deltas_model": deltas_model, "ranges": ranges, "companions": comps}


def metres_per_unit(meta: dict, neutral_local: np.ndarray) -> float:
    """Size of one local unit in metres at the head's real scale: the backend's unit snap over the
    head scale when it made one, else the same snap done here (nearest of m/dm/cm/mm/in to a human
    head's size)."""
    frame = (meta or {}).get("frame") or {}
    if frame.get("units") not in (None, "as-is") and frame.get("scale"):
        return float(frame["scale"])
    lo, hi = neutral_local.min(0), neutral_local.max(0)
    diag = float(np.linalg.norm(hi - lo))
    if diag <= 0:
        return 1.0
    units = {"m": 1.0, "dm": 0.1, "cm": 0.01, "mm": 0.001, "in": 0.0254}
    return min(units.values(), key=lambda s: abs(math.log(diag * s / TYPICAL_HEAD_DIAGONAL_M)))


def open_result(path: str):
    """The backend's result file, opened for reading by frame ranges (result_file.py)."""
    try:
        return result_file.open_result(path)
    except (OSError, KeyError, ValueError, zipfile.BadZipFile) as exc:
        raise PipelineError(f"Could not read the backend's result {path}: {exc}") from exc


EXACT_CHUNK = 64  # frames read at once when checking and writing Exact keys (V*3*4 bytes each)


@dataclass
class Computed:
    plan: basis.Plan | None
    metres_per_unit: float
    extra: dict
    rig: rig.RigResult | None = None
    jaw: np.ndarray | None = None  # Rig mode with companions: [T,4,4] head-local jaw transforms
    warnings: list = field(default_factory=list)  # the backend's, for the user (a head far off life size)


def _compute_rig(prep: Prepared, result: dict) -> Computed:
    path = result.get("out") or prep.fields["out"]
    try:
        fit = rig.read_fit(path)
        with result_file.open_result(path) as r:
            fps, meta = r.fps, r.meta
    except (OSError, KeyError, ValueError, zipfile.BadZipFile) as exc:
        raise PipelineError(f"Could not read the backend's rig weights from {path}: {exc}") from exc
    if math.isfinite(fps) and abs(fps - prep.audio.fps) > 1e-3:
        raise PipelineError(f"The backend returned {fps:g} fps for a {prep.audio.fps:g} fps scene.")
    if fit.names != prep.rig["names"]:
        raise PipelineError("The backend's rig weights are for other shape keys; run Animate again.")
    s = prep.settings
    W = fit.weights
    if s.smoothing > 0:  # a Gaussian of weights within their ranges stays within them
        W = basis.smooth_time(W, s.smoothing)
    fit.weights = np.clip(W, fit.ranges[:, 0], fit.ranges[:, 1]).astype(np.float32)
    jaw = None
    if prep.rig["companions"]:
        neutral_model = prep.export.neutral_local @ prep.export.rotation.T
        region = companions.jaw_region(fit.names, prep.rig["deltas_model"], neutral_model)
        jaw = companions.jaw_transforms(neutral_model, prep.rig["deltas_model"], fit.weights, region,
                                        prep.export.rotation)
    mpu = float(fit.report.get("metres_per_unit") or metres_per_unit(meta, prep.export.neutral_local))
    extra = {
        "audio": prep.audio.label, "audio_path": prep.audio.path if not prep.audio.temp else "(packed)",
        "audio_start": prep.audio.start, "fps": prep.audio.fps, "axes": prep.export.axes,
        "checkpoint": prep.fields.get("checkpoint") or "bundled", "metres_per_unit": mpu,
        "device": result.get("device") or meta.get("device"), "model": meta.get("model"),
        "strength": s.strength, "smoothing": s.smoothing, "rig_keyset": s.rig_keyset,
        "fit": {k: fit.report.get(k) for k in ("lips_mean_mm", "lips_max_mm", "face_mean_mm", "face_max_mm",
                                               "lips_explained", "lips_from")},
    }
    return Computed(plan=None, metres_per_unit=mpu, extra=extra, rig=fit, jaw=jaw,
                    warnings=list(meta.get("warnings") or []))


def compute(prep: Prepared, result: dict) -> Computed:
    """Read what the backend wrote and plan the keys. Plain numpy, no bpy: safe on a thread.
    Neither mode loads the [T, V, 3] offsets: Compact reads the backend's basis and weights,
    Exact checks the frames chunk by chunk here and reads them again while writing."""
    if prep.settings.mode == "RIG":
        return _compute_rig(prep, result)
    path = result.get("out") or prep.fields["out"]
    s = prep.settings
    V = len(prep.export.neutral_local)
    with open_result(path) as r:
        fps, meta = r.fps, r.meta
        if math.isfinite(fps) and abs(fps - prep.audio.fps) > 1e-3:
            raise PipelineError(f"The backend returned {fps:g} fps for a {prep.audio.fps:g} fps scene.")
        if r.n_vertices != V:
            raise PipelineError(f"The result has {r.n_vertices} vertices but the mesh has {V}.")
        try:
            if s.mode == "COMPACT":
                plan, mpu = _compact_plan(prep, r)
            else:
                plan, mpu = _exact_plan(prep, r, path), metres_per_unit(meta, prep.export.neutral_local)
        except basis.PlanError as exc:
            raise PipelineError(str(exc)) from exc
        except (OSError, KeyError, ValueError, zipfile.BadZipFile) as exc:
            raise PipelineError(f"Could not read the backend's result {path}: {exc}") from exc
    extra = {
        "audio": prep.audio.label, "audio_path": prep.audio.path if not prep.audio.temp else "(packed)",
        "audio_start": prep.audio.start, "fps": prep.audio.fps, "axes": prep.export.axes,
        "checkpoint": prep.fields.get("checkpoint") or "bundled", "metres_per_unit": mpu,
        "device": result.get("device") or meta.get("device"), "model": meta.get("model"),
    }
    return Computed(plan=plan, metres_per_unit=mpu, extra=extra, warnings=list(meta.get("warnings") or []))


def _compact_plan(prep: Prepared, r) -> tuple[basis.Plan, float]:
    """The backend's basis [K, V, 3] (model frame) and weights [T, K], strength and smoothing
    already applied, as keys; the basis turns into object space like offsets (a rotation)."""
    if not (r.has("compact_weights") and r.has("compact_basis")):
        raise PipelineError("The backend's result has no Compact basis (an older backend?): press "
                            "'Repair backend' in the preferences, or use Exact mode.")
    W = np.asarray(r.array("compact_weights"), np.float32)
    B = prep.export.offsets_to_local(r.array("compact_basis"))
    report = json.loads(str(r.array("compact_report"))) if r.has("compact_report") else {}
    if W.shape[0] != r.n_frames:
        raise PipelineError(f"The backend's Compact weights cover {W.shape[0]} of {r.n_frames} frames.")
    s = prep.settings
    plan = basis.plan_from_weights(W, B.reshape(len(B), 3 * r.n_vertices), prep.audio.frame_start,
                                   float(report.get("max_error", float("nan"))), s.strength, s.smoothing)
    mpu = float(report.get("metres_per_unit") or metres_per_unit(r.meta, prep.export.neutral_local))
    return plan, mpu


def _exact_plan(prep: Prepared, r, path: str) -> basis.Plan:
    level, text = estimate.exact_check(r.n_frames, r.n_vertices, estimate.physical_memory())
    if level == "ERROR":  # the clip's length was unknown before the job (e.g. an mp3 under bpy 4.2)
        raise PipelineError(text + " Nothing was written.")
    for _, block in r.iter_chunks(EXACT_CHUNK):  # refuse NaN before anything is written
        if not np.isfinite(block.sum()):
            raise basis.PlanError("The backend returned NaN or infinite offsets; nothing was written.")
    s = prep.settings
    source = basis.FrameSource(open=lambda: result_file.open_result(path), n_frames=r.n_frames,
                               n_vertices=r.n_vertices, to_local=prep.export.offsets_to_local,
                               strength=s.strength, smoothing=s.smoothing)
    return basis.exact_plan(source, prep.audio.frame_start)


class ComputeThread:
    """compute() on a thread, so the UI keeps drawing progress while a long clip is fitted."""

    def __init__(self, prep: Prepared, result: dict):
        self.value: Computed | None = None
        self.error: BaseException | None = None
        self._thread = threading.Thread(target=self._run, args=(prep, result), daemon=True)
        self._thread.start()

    def _run(self, prep, result):
        try:
            self.value = compute(prep, result)
        except BaseException as exc:  # re-raised on the main thread by get()
            self.error = exc

    @property
    def done(self) -> bool:
        return not self._thread.is_alive()

    def get(self) -> Computed:
        self._thread.join()
        if self.error is not None:
            raise self.error
        return self.value


def write(context, prep: Prepared, computed: Computed, timings: dict | None = None, progress=None) -> str:
    """Write a computed result onto the object; returns a one-line summary."""
    obj = bpy.data.objects.get(prep.object_name)
    if obj is None:
        raise PipelineError(f"Object '{prep.object_name}' was deleted while it was being animated.")
    scene = bpy.data.scenes.get(prep.scene_name) or context.scene
    prep.warnings.extend(computed.warnings)  # reported with the summary once the write succeeds
    if obj.mode == "EDIT":  # keys written in edit mode would be overwritten when it is left
        obj.update_from_editmode()
        if context.view_layer.objects.active == obj and bpy.ops.object.mode_set.poll():
            bpy.ops.object.mode_set(mode="OBJECT")
    s = prep.settings
    if computed.rig is not None:
        return _write_rig(context, prep, computed, obj, scene, timings)
    try:
        tag = writeback.write_plan(obj, computed.plan, computed.extra, timings=timings, progress=progress)
    except WritebackError as exc:
        raise PipelineError(str(exc)) from exc
    if s.fit_frame_range and tag["frame_end"] > scene.frame_end:
        scene.frame_end = tag["frame_end"]
    mpu = computed.metres_per_unit
    if s.mode == "COMPACT":
        err_mm = tag["max_error"] * mpu * 1000
        detail = f"{tag['basis_size']} basis keys, error <= {err_mm:.3f} mm"
        if err_mm > s.max_error_mm * 1.0001:
            prep.warnings.append(f"the max error {err_mm:.3f} mm is above the {s.max_error_mm:g} mm asked for: "
                                 f"raise Max Basis Keys in the preferences or use Exact mode")
    else:
        detail = f"{tag['basis_size']} shape keys"
    return (f"Animated '{obj.name}' from {prep.audio.label}: frames {tag['frame_start']}-{tag['frame_end']} "
            f"({s.mode.lower()}, {detail}), on the NLA track '{tag['track']}'")


def _write_rig(context, prep: Prepared, computed: Computed, obj, scene, timings) -> str:
    fit = computed.rig
    comps = []
    prev = writeback.result_info(obj) or {}
    prev_rest = {c.get("object"): c.get("rest") for c in prev.get("companions", [])}
    try:
        for name in prep.rig["companions"]:
            ob = bpy.data.objects.get(name)
            if ob is None:
                raise PipelineError(f"Jaw follower '{name}' was deleted while the head was being animated.")
            curves, rest = companions.object_curves(ob, obj, computed.jaw, prev_rest.get(name))
            comps.append((ob, curves, rest))
        tag = writeback.write_rig(obj, fit.names, fit.weights, fit.ranges, prep.audio.frame_start, computed.extra,
                                  companions=comps, timings=timings)
    except (WritebackError, ValueError) as exc:
        raise PipelineError(str(exc)) from exc
    if prep.settings.fit_frame_range and tag["frame_end"] > scene.frame_end:
        scene.frame_end = tag["frame_end"]
    follow = f", {len(comps)} jaw follower{'s' * (len(comps) != 1)}" if comps else ""
    return (f"Animated '{obj.name}' from {prep.audio.label}: frames {tag['frame_start']}-{tag['frame_end']} "
            f"(rig, {len(fit.names)} shape keys{follow}; {rig.fit_summary(fit.report)}), "
            f"on the NLA track '{tag['track']}'")


def apply_result(context, prep: Prepared, result: dict, timings: dict | None = None) -> str:
    """compute() then write(), in one call (scripts, background mode)."""
    return write(context, prep, compute(prep, result), timings=timings)
