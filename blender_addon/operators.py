"""Operators. Thin shells: the logic lives in pipeline, job, writeback and backend_env."""
from __future__ import annotations

import contextlib
import os
import shlex

import bpy
from bpy.props import EnumProperty, FloatProperty, StringProperty
from bpy_extras.io_utils import ExportHelper

from . import backend_env, pipeline, runtime, writeback
from .backend_env import BackendNotFound
from .job import CANCELLED, DONE, RUNNING, AnimateJob
from .mesh_export import AXES_ITEMS
from .properties import DESCRIPTIONS
from .worker_client import WorkerError


def _report_lines(op, level, text):
    """Reports show one line well: put the first in the report, the rest in the console too."""
    op.report({level}, text)
    if "\n" in text:
        print(f"ScanTalk: {text}")


def _redraw():
    wm = getattr(bpy.context, "window_manager", None)
    if wm is None:
        return
    for win in wm.windows:
        for area in win.screen.areas:
            if area.type in ("VIEW_3D", "PREFERENCES"):
                area.tag_redraw()


class Running:
    """What the panel shows while an animate runs from the UI."""

    def __init__(self, prep, job):
        self.prep = prep
        self.job = job
        self.cancel_requested = False


class SCANTALK_OT_animate(bpy.types.Operator):
    """Animate the active mesh so it speaks the chosen sound strip or audio file"""

    bl_idname = "scantalk.animate"
    bl_label = "Animate"
    # UNDO without REGISTER: one undo step, but no redo panel (a redo would re-run the backend
    # synchronously and freeze the UI; re-run from the panel instead).
    bl_options = {"UNDO"}

    strip: StringProperty(name="Strip", description=DESCRIPTIONS["strip"], options={"SKIP_SAVE"})
    audio_path: StringProperty(name="Audio File", description=DESCRIPTIONS["audio_path"], subtype="FILE_PATH",
                               options={"SKIP_SAVE"})
    checkpoint: StringProperty(name="Checkpoint", description=DESCRIPTIONS["checkpoint"], subtype="FILE_PATH",
                               options={"SKIP_SAVE"})
    mode: EnumProperty(name="Mode", items=writeback.MODE_ITEMS, default="COMPACT", options={"SKIP_SAVE"})
    strength: FloatProperty(name="Strength", default=1.0, min=0.0, max=10.0, options={"SKIP_SAVE"})
    smoothing: FloatProperty(name="Smoothing", default=0.0, min=0.0, max=20.0, options={"SKIP_SAVE"})
    max_error_mm: FloatProperty(name="Max Error (mm)", default=0.1, min=0.001, max=100.0, options={"SKIP_SAVE"})
    axes: EnumProperty(name="Axes", items=AXES_ITEMS, default="AUTO", options={"SKIP_SAVE"})

    _timer = None

    @classmethod
    def poll(cls, context):
        if runtime.active is not None:
            cls.poll_message_set("ScanTalk is already animating")
            return False
        return True

    # -- shared steps --------------------------------------------------------------------------
    def _prepare(self, context):
        settings = pipeline.Settings.gather(context, self)
        return pipeline.prepare(context, settings)

    def _finish(self, context, prep, job):
        try:
            if job.state == DONE:
                summary = pipeline.apply_result(context, prep, job.result)
                for w in prep.warnings:
                    self.report({"WARNING"}, w)
                self.report({"INFO"}, summary)
                runtime.last_message = summary
                return {"FINISHED"}
            if job.state == CANCELLED:
                if job.killed_worker:
                    runtime.forget_worker(job.client)
                self.report({"WARNING"}, "ScanTalk: cancelled; nothing was changed")
                runtime.last_message = "Cancelled"
                return {"CANCELLED"}
            msg = job.message or "the backend failed"
            _report_lines(self, "ERROR", f"ScanTalk: {msg}")
            runtime.last_message = msg
            return {"CANCELLED"}
        except pipeline.PipelineError as exc:
            _report_lines(self, "ERROR", f"ScanTalk: {exc}")
            runtime.last_message = str(exc)
            return {"CANCELLED"}
        except Exception as exc:  # a bug or MemoryError: still a message in the UI, never a stuck state
            import traceback

            traceback.print_exc()
            msg = f"unexpected error while writing the result ({type(exc).__name__}: {exc}); nothing was changed"
            _report_lines(self, "ERROR", f"ScanTalk: {msg}")
            runtime.last_message = msg
            return {"CANCELLED"}
        finally:
            prep.cleanup()

    # -- synchronous (scripts, background) -----------------------------------------------------
    def execute(self, context):
        try:
            prep = self._prepare(context)
        except (pipeline.PipelineError, BackendNotFound) as exc:
            _report_lines(self, "ERROR", f"ScanTalk: {exc}")
            return {"CANCELLED"}
        job = AnimateJob(lambda: runtime.get_worker(context), prep.fields)
        try:
            job.start()  # a missing backend ends the job in ERROR with the message to show
            job.wait()
        except KeyboardInterrupt:
            job.cancel()
            job.wait(timeout=10)
        return self._finish(context, prep, job)

    # -- modal (UI) -----------------------------------------------------------------------------
    def invoke(self, context, event):
        if bpy.app.background or context.window is None:
            return self.execute(context)
        try:
            prep = self._prepare(context)
        except (pipeline.PipelineError, BackendNotFound) as exc:
            _report_lines(self, "ERROR", f"ScanTalk: {exc}")
            return {"CANCELLED"}
        job = AnimateJob(lambda: runtime.get_worker(context), prep.fields).start()
        if job.state != RUNNING:
            return self._finish(context, prep, job)
        runtime.active = Running(prep, job)
        wm = context.window_manager
        self._timer = wm.event_timer_add(0.1, window=context.window)
        wm.modal_handler_add(self)
        _redraw()
        return {"RUNNING_MODAL"}

    def modal(self, context, event):
        run = runtime.active
        if run is None:
            return self._end(context, {"CANCELLED"})
        if event.type == "ESC":
            if event.value == "PRESS":
                run.job.cancel()
            return {"RUNNING_MODAL"}  # Esc is ours while animating
        if event.type != "TIMER":
            return {"PASS_THROUGH"}
        if getattr(run, "cancel_requested", False):
            run.job.cancel()
        try:
            state = run.job.poll()
        except Exception as exc:  # never leave the panel stuck in "running"
            run.job.cancel()
            run.prep.cleanup()
            _report_lines(self, "ERROR", f"ScanTalk: {exc}")
            return self._end(context, {"CANCELLED"})
        _redraw()
        if state == RUNNING:
            return {"PASS_THROUGH"}
        run.job.stage, run.job.fraction = "keys", max(run.job.fraction, 0.98)
        return self._end(context, self._finish(context, run.prep, run.job))

    def _end(self, context, result):
        if self._timer is not None:
            context.window_manager.event_timer_remove(self._timer)
            self._timer = None
        runtime.active = None
        _redraw()
        return result

    def cancel(self, context):  # Blender stops the modal (file load, quit)
        run = runtime.active
        if run is not None:
            run.job.cancel()
            run.prep.cleanup()
        self._end(context, {"CANCELLED"})


class SCANTALK_OT_cancel(bpy.types.Operator):
    """Stop the running ScanTalk animation (nothing is changed)"""

    bl_idname = "scantalk.cancel"
    bl_label = "Cancel"

    @classmethod
    def poll(cls, context):
        return runtime.active is not None

    def execute(self, context):
        runtime.active.cancel_requested = True
        runtime.active.job.cancel()
        return {"FINISHED"}


class SCANTALK_OT_clear(bpy.types.Operator):
    """Remove ScanTalk's shape keys and their animation from the active mesh (your own shape keys stay)"""

    bl_idname = "scantalk.clear"
    bl_label = "Remove Animation"
    bl_options = {"REGISTER", "UNDO"}

    @classmethod
    def poll(cls, context):
        return context.active_object is not None and context.active_object.type == "MESH"

    def execute(self, context):
        obj = context.active_object
        if writeback.clear_result(obj):
            self.report({"INFO"}, f"Removed ScanTalk animation from '{obj.name}'")
            return {"FINISHED"}
        self.report({"WARNING"}, f"'{obj.name}' has no ScanTalk animation")
        return {"CANCELLED"}


def fbx_settings() -> dict:
    """FBX exporter settings that keep shape-key animation (see blender-facts.md)."""
    return dict(use_selection=True, object_types={"MESH"}, use_mesh_modifiers=False, add_leaf_bones=False,
                bake_anim=True, bake_anim_use_all_bones=False, bake_anim_use_nla_strips=False,
                bake_anim_use_all_actions=False, bake_anim_force_startend_keying=True,
                bake_anim_step=1.0, bake_anim_simplify_factor=0.0)


def _ensure_addon(module: str) -> None:
    import addon_utils

    loaded, enabled = addon_utils.check(module)
    if not enabled:
        addon_utils.enable(module, default_set=False)


@contextlib.contextmanager
def _exporting_only(context, obj):
    """Select only `obj` and widen the scene range to the clip plus a neutral frame either side;
    put selection and range back afterwards, whatever happens."""
    scene = context.scene
    old_range = (scene.frame_start, scene.frame_end)
    old_sel = [o for o in context.view_layer.objects if o.select_get()]
    tag = writeback.result_info(obj)
    if tag:
        scene.frame_start = min(scene.frame_start, int(tag["frame_start"]) - 1)
        scene.frame_end = max(scene.frame_end, int(tag["frame_end"]) + 1)
    for o in old_sel:
        o.select_set(False)
    obj.select_set(True)
    try:
        yield
    finally:
        scene.frame_start, scene.frame_end = old_range
        obj.select_set(False)
        for o in old_sel:
            o.select_set(True)


class _ExportBase(ExportHelper):
    format_name = ""
    exporter_addon = ""

    @classmethod
    def poll(cls, context):
        return context.active_object is not None and context.active_object.type == "MESH"

    def export(self, context, obj):
        raise NotImplementedError

    def notes(self, obj) -> list[tuple[str, str]]:
        return []

    def execute(self, context):
        obj = context.active_object
        _ensure_addon(self.exporter_addon)
        try:
            with _exporting_only(context, obj):
                self.export(context, obj)
        except (RuntimeError, TypeError) as exc:
            self.report({"ERROR"}, f"ScanTalk: {self.format_name} export failed: {exc}")
            return {"CANCELLED"}
        for level, text in self.notes(obj):
            self.report({level}, text)
        return {"FINISHED"}


class SCANTALK_OT_export_fbx(bpy.types.Operator, _ExportBase):
    """Export the active mesh with its shape-key animation to FBX (settings that keep the animation)"""

    bl_idname = "scantalk.export_fbx"
    bl_label = "Export FBX"
    filename_ext = ".fbx"
    filter_glob: StringProperty(default="*.fbx", options={"HIDDEN"})
    format_name = "FBX"
    exporter_addon = "io_scene_fbx"

    def export(self, context, obj):
        bpy.ops.export_scene.fbx(filepath=self.filepath, **fbx_settings())

    def notes(self, obj):
        out = []
        mods = [m.name for m in obj.modifiers if m.type != "ARMATURE" and m.show_viewport]
        if mods:
            out.append(("WARNING", f"Modifiers ({', '.join(mods)}) are not applied in the FBX: with them "
                                   "the FBX format drops shape keys"))
        return out + [("INFO", f"Exported {os.path.basename(self.filepath)}")]


class SCANTALK_OT_export_gltf(bpy.types.Operator, _ExportBase):
    """Export the active mesh with its shape-key animation to glTF (.glb)"""

    bl_idname = "scantalk.export_gltf"
    bl_label = "Export glTF"
    filename_ext = ".glb"
    filter_glob: StringProperty(default="*.glb;*.gltf", options={"HIDDEN"})
    format_name = "glTF"
    exporter_addon = "io_scene_gltf2"

    def export(self, context, obj):
        bpy.ops.export_scene.gltf(filepath=self.filepath, use_selection=True, export_morph=True,
                                  export_morph_normal=False, export_animations=True)

    def notes(self, obj):
        return [("INFO", f"Exported {os.path.basename(self.filepath)} (glTF stores seconds: import it "
                         f"into a scene of the same fps)")]


# ---- backend set-up -------------------------------------------------------------------------------
def _poll_task():
    """bpy.app.timers callback: redraw preferences while the set-up runs."""
    _redraw()
    task = runtime.setup_task
    return 0.5 if task is not None and task.state == "RUNNING" else None


class SCANTALK_OT_setup_backend(bpy.types.Operator):
    """Create a Python environment in the add-on's user folder and install the backend (PyTorch etc.)
    into it with pip. Needs an internet connection and a few GB of disk"""

    bl_idname = "scantalk.setup_backend"
    bl_label = "Set up backend"

    @classmethod
    def poll(cls, context):
        t = runtime.setup_task
        return t is None or t.state != "RUNNING"

    def execute(self, context):
        from . import prefs

        p = prefs.get(context)
        extra = shlex.split(p.pip_args) if p is not None and p.pip_args else []
        bundle = runtime.bundle_dir()
        import sys

        base = backend_env.base_python_for_venv(sys.executable)
        runtime.setup_task = task = backend_env.SetupTask(base, runtime.venv_dir(), bundle, extra).start()
        runtime.doctor_lines = []
        runtime.stop_worker()
        if bpy.app.background:
            task.join()
            level = "INFO" if task.state == "DONE" else "ERROR"
            self.report({level}, task.message)
            return {"FINISHED"} if task.state == "DONE" else {"CANCELLED"}
        bpy.app.timers.register(_poll_task, first_interval=0.5)
        self.report({"INFO"}, "Setting up the ScanTalk backend (progress in the add-on preferences)")
        return {"FINISHED"}


class SCANTALK_OT_cancel_setup(bpy.types.Operator):
    """Stop setting up the backend"""

    bl_idname = "scantalk.cancel_setup"
    bl_label = "Cancel Setup"

    def execute(self, context):
        if runtime.setup_task is not None:
            runtime.setup_task.cancel()
        return {"FINISHED"}


class SCANTALK_OT_check_backend(bpy.types.Operator):
    """Find the backend and report its versions, device and whether CUDA is available"""

    bl_idname = "scantalk.check_backend"
    bl_label = "Check backend"

    def execute(self, context):
        try:
            backend = runtime.discover(context)
        except BackendNotFound as exc:
            runtime.doctor_lines = [str(exc)]
            _report_lines(self, "ERROR", f"ScanTalk: {exc}")
            return {"CANCELLED"}
        runtime.doctor_lines = [f"Checking {backend.describe()} ..."]
        args = ["--cache-dir", runtime.cache_dir()]  # bpy is not called from the thread

        def work():
            try:
                res = backend_env.doctor(backend, args)
                runtime.doctor_lines = [f"Backend OK: {backend.describe()}", *backend_env.format_doctor(res)]
            except WorkerError as exc:
                runtime.doctor_lines = [f"Backend check failed: {backend.python}",
                                        *exc.user_message().splitlines()]

        if bpy.app.background:
            work()
            ok = runtime.doctor_lines[0].startswith("Backend OK")
            for line in runtime.doctor_lines:
                print("ScanTalk:", line)
            self.report({"INFO" if ok else "ERROR"}, runtime.doctor_lines[0])
            return {"FINISHED"} if ok else {"CANCELLED"}
        import threading

        thread = threading.Thread(target=work, daemon=True)
        thread.start()

        def poll():
            _redraw()
            return 0.5 if thread.is_alive() else None

        bpy.app.timers.register(poll, first_interval=0.5)
        return {"FINISHED"}


classes = (SCANTALK_OT_animate, SCANTALK_OT_cancel, SCANTALK_OT_clear, SCANTALK_OT_export_fbx,
           SCANTALK_OT_export_gltf, SCANTALK_OT_setup_backend, SCANTALK_OT_cancel_setup, SCANTALK_OT_check_backend)


def register():
    for c in classes:
        bpy.utils.register_class(c)


def unregister():
    for c in reversed(classes):
        bpy.utils.unregister_class(c)
