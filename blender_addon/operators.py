"""Operators. Thin shells: the logic lives in pipeline, job, writeback and backend_env."""
from __future__ import annotations

import contextlib
import os

import bpy
from bpy.props import EnumProperty, FloatProperty, StringProperty
from bpy_extras.io_utils import ExportHelper

from . import backend_env, pipeline, prefs, rig, runtime, writeback
from .backend_env import BackendNotFound
from .job import BACKEND_SHARE, CANCELLED, DONE, RUNNING, STAGE_LABELS, AnimateJob, esc_cancels
from .mesh_export import AXES_ITEMS
from .properties import DESCRIPTIONS, RELATIVE_PATH
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
    """An animate run from the UI: the backend's job, then reading the result (on a thread), then
    writing keys. The panel draws its progress; Cancel works in every phase until the write."""

    def __init__(self, prep, job):
        self.prep = prep
        self.job = job
        self.phase = "backend"  # -> "result" (ComputeThread) -> "keys" (one write on the main thread)
        self.compute = None
        self.cancel_requested = False

    def cancel(self) -> None:
        self.cancel_requested = True
        self.job.cancel()

    @property
    def cancelling(self) -> bool:
        return self.cancel_requested or self.job.cancelling

    @property
    def fraction(self) -> float:
        if self.phase == "backend":
            return self.job.fraction * BACKEND_SHARE
        return 0.93 if self.phase == "result" else 0.97

    @property
    def progress_text(self) -> str:
        if self.cancelling:
            return "Cancelling..."
        label = self.job.label if self.phase == "backend" else STAGE_LABELS[self.phase]
        return f"{label} {int(round(self.fraction * 100))}%"


def _panel_rects(context) -> list:
    """Window rectangles of the 3D View sidebars that show the ScanTalk tab."""
    from .ui import VIEW3D_PT_scantalk

    out = []
    screen = context.window.screen if context.window is not None else None
    for area in screen.areas if screen is not None else ():
        if area.type != "VIEW_3D":
            continue
        for region in area.regions:
            category = getattr(region, "active_panel_category", VIEW3D_PT_scantalk.bl_category)
            if region.type == "UI" and region.width > 1 and category == VIEW3D_PT_scantalk.bl_category:
                out.append((region.x, region.y, region.width, region.height))
    return out


class SCANTALK_OT_animate(bpy.types.Operator):
    """Animate the active mesh so it speaks the chosen sound strip or audio file"""

    bl_idname = "scantalk.animate"
    bl_label = "Animate"
    # UNDO without REGISTER: one undo step (pushed when the modal finishes), but no redo panel (a
    # redo would re-run the backend synchronously and freeze the UI; re-run from the panel instead).
    bl_options = {"UNDO"}

    strip: StringProperty(name="Strip", description=DESCRIPTIONS["strip"], options={"SKIP_SAVE"})
    audio_path: StringProperty(name="Audio File", description=DESCRIPTIONS["audio_path"], subtype="FILE_PATH",
                               options={"SKIP_SAVE"} | RELATIVE_PATH)
    checkpoint: StringProperty(name="Checkpoint", description=DESCRIPTIONS["checkpoint"], subtype="FILE_PATH",
                               options={"SKIP_SAVE"} | RELATIVE_PATH)
    mode: EnumProperty(name="Mode", items=writeback.MODE_ITEMS, default="COMPACT", options={"SKIP_SAVE"})
    strength: FloatProperty(name="Strength", default=1.0, min=0.0, max=10.0, options={"SKIP_SAVE"})
    smoothing: FloatProperty(name="Smoothing", default=0.0, min=0.0, max=20.0, options={"SKIP_SAVE"})
    max_error_mm: FloatProperty(name="Max Error (mm)", default=0.1, min=0.001, max=100.0, options={"SKIP_SAVE"})
    axes: EnumProperty(name="Axes", items=AXES_ITEMS, default="AUTO", options={"SKIP_SAVE"})
    head_scale: FloatProperty(name="Head Scale", default=1.0, min=0.1, max=10.0, options={"SKIP_SAVE"},
                              description=DESCRIPTIONS["head_scale"])
    rig_keyset: EnumProperty(name="Keys", items=rig.KEYSET_ITEMS, default="ALL", options={"SKIP_SAVE"},
                             description=DESCRIPTIONS["rig_keyset"])
    rig_keys: StringProperty(name="Rig Keys", description=DESCRIPTIONS["rig_keys"], options={"SKIP_SAVE"})
    rig_smooth: FloatProperty(name="Rig Smoothness", default=0.001, min=0.0, max=100.0, options={"SKIP_SAVE"})
    companions: StringProperty(name="Jaw Followers", description=DESCRIPTIONS["companions"], options={"SKIP_SAVE"})

    _timer = None

    @classmethod
    def poll(cls, context):
        why = cannot_animate(context)
        if why:
            cls.poll_message_set(why)
            return False
        return True

    # -- outcomes ------------------------------------------------------------------------------
    def _failed(self, msg):
        _report_lines(self, "ERROR", f"ScanTalk: {msg}")
        runtime.last_message = msg
        return {"CANCELLED"}

    def _cancelled(self):
        self.report({"WARNING"}, "ScanTalk: cancelled; nothing was changed")
        runtime.last_message = "Cancelled"
        return {"CANCELLED"}

    def _job_ended(self, job):
        """The backend's job ended without a result."""
        if job.state == CANCELLED:
            if job.killed_worker:
                runtime.forget_worker(job.client)
            return self._cancelled()
        return self._failed(job.message or "the backend failed")

    def _guarded(self, step):
        """Run a step that reads or writes the result; any failure is a message, never a stuck state
        (writeback keeps the previous result when a write fails)."""
        try:
            return step()
        except pipeline.PipelineError as exc:
            return self._failed(str(exc))
        except Exception as exc:  # a bug or MemoryError
            import traceback

            traceback.print_exc()
            return self._failed(f"unexpected error while writing the result ({type(exc).__name__}: {exc}); "
                                "nothing was changed")

    def _written(self, prep, summary):
        for w in prep.warnings:
            self.report({"WARNING"}, w)
        self.report({"INFO"}, summary)
        runtime.last_message = summary
        return {"FINISHED"}

    def _start(self, context):
        """Preferences are read here, once, and passed down as plain values."""
        pv = prefs.values(context)
        prep = pipeline.prepare(context, pipeline.Settings.gather(context, self, pv))
        for text in prep.notices:  # before the job: e.g. an Exact result that will be huge
            _report_lines(self, "WARNING", f"ScanTalk: {text}")
        return prep, AnimateJob(lambda: runtime.get_worker(pv.python_path), prep.fields)

    # -- synchronous (scripts, background) -----------------------------------------------------
    def execute(self, context):
        try:
            prep, job = self._start(context)
        except (pipeline.PipelineError, BackendNotFound) as exc:
            return self._failed(str(exc))
        try:
            try:
                job.start()  # a missing backend ends the job in ERROR with the message to show
                job.wait()
            except KeyboardInterrupt:
                job.cancel()
                job.wait(timeout=10)
            if job.state != DONE:
                return self._job_ended(job)
            return self._guarded(lambda: self._written(prep, pipeline.apply_result(context, prep, job.result)))
        finally:
            prep.cleanup()

    # -- modal (UI) -----------------------------------------------------------------------------
    def invoke(self, context, event):
        if bpy.app.background or context.window is None:
            return self.execute(context)
        try:
            prep, job = self._start(context)
        except (pipeline.PipelineError, BackendNotFound) as exc:
            return self._failed(str(exc))
        job.start()
        if job.state != RUNNING:
            prep.cleanup()
            return self._job_ended(job)
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
            # ours only over our panel: elsewhere Esc stops playback, leaves a menu...
            if event.value == "PRESS" and esc_cancels((event.mouse_x, event.mouse_y), _panel_rects(context)):
                run.cancel()
                return {"RUNNING_MODAL"}
            return {"PASS_THROUGH"}
        if event.type != "TIMER":
            return {"PASS_THROUGH"}
        result = self._guarded(lambda: self._step(context, run))
        _redraw()
        return {"PASS_THROUGH"} if result is None else self._end(context, result)

    def _step(self, context, run):
        """One timer tick; None while there is more to do."""
        if run.phase == "backend":
            if run.cancel_requested:
                run.job.cancel()
            if run.job.poll() == RUNNING:
                return None
            if run.job.state != DONE:
                return self._job_ended(run.job)
            run.phase = "result"
            run.compute = pipeline.ComputeThread(run.prep, run.job.result)
            return None
        if run.cancel_requested:  # nothing has been written yet
            return self._cancelled()
        if run.phase == "result":
            if not run.compute.done:
                return None
            run.compute.get()  # raises what the thread raised
            run.phase = "keys"  # drawn before the write below blocks for a moment
            return None
        wm = context.window_manager
        wm.progress_begin(0.0, 1.0)
        try:
            summary = pipeline.write(context, run.prep, run.compute.get(), progress=wm.progress_update)
        finally:
            wm.progress_end()
        return self._written(run.prep, summary)

    def _end(self, context, result):
        if self._timer is not None:
            context.window_manager.event_timer_remove(self._timer)
            self._timer = None
        run, runtime.active = runtime.active, None
        if run is not None:
            run.prep.cleanup()
        _redraw()
        return result

    def cancel(self, context):  # Blender stops the modal (file load, quit)
        run = runtime.active
        if run is not None:
            run.job.cancel()
        self._end(context, {"CANCELLED"})


def cannot_animate(context) -> str:
    """Why Animate is greyed out now ('' when it is not)."""
    if runtime.active is not None:
        return "ScanTalk is already animating"
    obj = getattr(context, "active_object", None)
    if obj is None:
        return "Select the head mesh (make it the active object)"
    if obj.type != "MESH":
        return f"'{obj.name}' is a {obj.type.lower()}, not a mesh: select the head mesh"
    ok, text = runtime.backend_status(prefs.values(context).python_path)
    return "" if ok else text


class SCANTALK_OT_cancel(bpy.types.Operator):
    """Stop the running ScanTalk animation (nothing is changed)"""

    bl_idname = "scantalk.cancel"
    bl_label = "Cancel"

    @classmethod
    def poll(cls, context):
        return runtime.active is not None

    def execute(self, context):
        runtime.active.cancel()
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
        try:
            removed = writeback.clear_result(obj)
        except writeback.WritebackError as exc:
            self.report({"ERROR"}, f"ScanTalk: {exc}")
            return {"CANCELLED"}
        if removed:
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
    followers = [o for o in (bpy.data.objects.get(c.get("object", "")) for c in (tag or {}).get("companions", []))
                 if o is not None and o.name in context.view_layer.objects]
    for o in [obj, *followers]:  # Rig mode: the jaw followers' keyed transforms go with the head
        o.select_set(True)
    try:
        yield
    finally:
        scene.frame_start, scene.frame_end = old_range
        for o in followers:
            o.select_set(False)
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
        # SCENE: one baked animation of what plays (the user's action and our NLA strip together);
        # per-action export would split them into animations an engine plays one at a time
        bpy.ops.export_scene.gltf(filepath=self.filepath, use_selection=True, export_morph=True,
                                  export_morph_normal=False, export_animations=True,
                                  export_animation_mode="SCENE")

    def notes(self, obj):
        return [("INFO", f"Exported {os.path.basename(self.filepath)} (glTF stores seconds: import it "
                         f"into a scene of the same fps)")]


class _RigExportBase(ExportHelper):
    @classmethod
    def poll(cls, context):
        tag = writeback.result_info(context.active_object)
        return bool(tag and tag.get("mode") == "RIG")

    def text(self, obj) -> str:
        raise NotImplementedError

    def execute(self, context):
        obj = context.active_object
        try:
            text = self.text(obj)
        except writeback.WritebackError as exc:
            self.report({"ERROR"}, f"ScanTalk: {exc}")
            return {"CANCELLED"}
        with open(self.filepath, "w", encoding="utf-8", newline="") as fh:
            fh.write(text)
        self.report({"INFO"}, f"Exported {os.path.basename(self.filepath)}")
        return {"FINISHED"}


class SCANTALK_OT_export_rig_csv(bpy.types.Operator, _RigExportBase):
    """Export the Rig result's weights as a CSV in the layout Live Link Face writes (Timecode,
    BlendShapeCount, the 52 ARKit shapes in Apple's order, head and eye rotations)"""

    bl_idname = "scantalk.export_rig_csv"
    bl_label = "Export Live Link CSV"
    filename_ext = ".csv"
    filter_glob: StringProperty(default="*.csv", options={"HIDDEN"})

    def text(self, obj):
        names, W, start, fps = writeback.keyed_weights(obj)
        return rig.live_link_csv(names, W, fps, start_frame=start)


class SCANTALK_OT_export_rig_json(bpy.types.Operator, _RigExportBase):
    """Export the Rig result's weights (every driven shape key, by name) and its fit error as JSON"""

    bl_idname = "scantalk.export_rig_json"
    bl_label = "Export Weights JSON"
    filename_ext = ".json"
    filter_glob: StringProperty(default="*.json", options={"HIDDEN"})

    def text(self, obj):
        names, W, start, fps = writeback.keyed_weights(obj)
        tag = writeback.result_info(obj)
        return rig.weights_json(names, W, fps, start, report=tag.get("fit"))


class SCANTALK_OT_companion_add(bpy.types.Operator):
    """Add a jaw follower slot (lower teeth, tongue); with other objects selected, add those"""

    bl_idname = "scantalk.companion_add"
    bl_label = "Add Jaw Follower"
    bl_options = {"REGISTER", "UNDO"}

    @classmethod
    def poll(cls, context):
        return context.active_object is not None and context.active_object.type == "MESH"

    def execute(self, context):
        head = context.active_object
        items = head.scantalk.companions
        have = {c.object for c in items}
        picked = [o for o in context.selected_objects if o != head and o not in have]
        for o in picked or [None]:
            items.add().object = o
        return {"FINISHED"}


class SCANTALK_OT_companion_remove(bpy.types.Operator):
    """Remove this jaw follower (its keyed motion goes with the next Animate or Remove Animation)"""

    bl_idname = "scantalk.companion_remove"
    bl_label = "Remove Jaw Follower"
    bl_options = {"REGISTER", "UNDO"}

    index: bpy.props.IntProperty()

    def execute(self, context):
        items = context.active_object.scantalk.companions
        if 0 <= self.index < len(items):
            items.remove(self.index)
        return {"FINISHED"}


# ---- backend set-up -------------------------------------------------------------------------------
def _poll_task():
    """bpy.app.timers callback: redraw preferences while the set-up runs."""
    _redraw()
    task = runtime.setup_task
    if task is not None and task.state != "RUNNING":
        runtime.forget_backend_status()
        return None
    return 0.5 if task is not None else None


def online_access() -> tuple[bool, str]:
    """(allowed, why not): Preferences > System > Network > Allow Online Access (Blender 4.2+)."""
    if getattr(bpy.app, "online_access", True):
        return True, ""
    if getattr(bpy.app, "online_access_override", False):
        return False, ("Blender was started offline (--offline-mode): start it without that option, or "
                       "give Extra pip Arguments '--no-index --find-links <folder of wheels>'. Nothing was installed.")
    return False, ("Online access is off: allow it in Edit > Preferences > System > Network > Allow Online "
                   "Access, then press the button again (or give Extra pip Arguments '--no-index --find-links "
                   "<folder of wheels>' to install offline). Nothing was installed.")


def _setup_refusal() -> str:
    """Why a set-up cannot start now ('' if it can)."""
    t = runtime.setup_task
    if t is not None and t.state == "RUNNING":
        return "A set-up is already running"
    if runtime.active is not None:
        return "Wait for the running animation to finish (or cancel it) first"
    return ""


class _SetupBase:
    """Set up and Repair: the same build (aside, moved into place when it works); two buttons.
    (A registered operator class must not be subclassed by another: the shared part lives here.)"""

    @classmethod
    def poll(cls, context):
        t = runtime.setup_task
        return t is None or t.state != "RUNNING"

    def execute(self, context):
        import sys

        p = prefs.values(context)
        why = _setup_refusal()
        if why:
            self.report({"ERROR"}, why)
            return {"CANCELLED"}
        try:
            extra = backend_env.split_pip_args(p.pip_args)
        except ValueError as exc:
            self.report({"ERROR"}, f"Extra pip Arguments: {exc}: {p.pip_args}")
            return {"CANCELLED"}
        allowed, why = online_access()
        if not allowed and not backend_env.works_offline(extra):
            runtime.doctor_lines = [why]
            self.report({"ERROR"}, why)
            return {"CANCELLED"}
        build = prefs.resolved_build(p.torch_build)[0]
        try:
            backend_env.torch_args(build, "torch", sys.platform)  # e.g. CUDA on macOS
        except ValueError as exc:
            self.report({"ERROR"}, f"PyTorch Build: {exc}")
            return {"CANCELLED"}
        base = backend_env.base_python_for_venv(sys.executable)
        runtime.stop_worker()  # the venv may be replaced (Windows cannot rename a folder in use)
        runtime.forget_backend_status()
        runtime.doctor_lines = []
        runtime.setup_task = task = backend_env.SetupTask(
            base, runtime.venv_dir(), runtime.bundle_dir(), extra, torch_build=build).start()
        if bpy.app.background:
            task.join()
            runtime.forget_backend_status()
            if task.state != "DONE":
                _report_lines(self, "ERROR", task.message)
                return {"CANCELLED"}
            self.report({"INFO"}, task.message)
            return {"FINISHED"}
        bpy.app.timers.register(_poll_task, first_interval=0.5)
        self.report({"INFO"}, "Setting up the ScanTalk backend (progress in the add-on preferences)")
        return {"FINISHED"}


class SCANTALK_OT_setup_backend(_SetupBase, bpy.types.Operator):
    """Create the backend's Python environment (one per user, shared by every Blender version) and
    install PyTorch (the build chosen in the preferences) and the backend's packages into it with pip.
    Needs online access and a few GB of disk"""

    bl_idname = "scantalk.setup_backend"
    bl_label = "Set up backend"


class SCANTALK_OT_repair_backend(_SetupBase, bpy.types.Operator):
    """Build the backend's environment again from scratch (e.g. after changing the PyTorch build, or
    when it is damaged); the current one is kept until the new one works"""

    bl_idname = "scantalk.repair_backend"
    bl_label = "Repair backend"

    def invoke(self, context, event):
        return context.window_manager.invoke_confirm(self, event)


class SCANTALK_OT_remove_backend(bpy.types.Operator):
    """Delete the backend's environment made by Set up backend (PyTorch and the other packages)"""

    bl_idname = "scantalk.remove_backend"
    bl_label = "Remove backend"

    @classmethod
    def poll(cls, context):
        t = runtime.setup_task
        return t is None or t.state != "RUNNING"

    def invoke(self, context, event):
        return context.window_manager.invoke_confirm(self, event)

    def execute(self, context):
        if runtime.active is not None:
            self.report({"ERROR"}, "Wait for the running animation to finish (or cancel it) first")
            return {"CANCELLED"}
        runtime.stop_worker()
        venv = runtime.venv_dir()
        removed = backend_env.remove_backend(venv)
        runtime.forget_backend_status()
        runtime.doctor_lines = []
        runtime.setup_task = None
        if not removed:
            self.report({"WARNING"}, f"No backend to remove in {venv}")
            return {"CANCELLED"}
        if os.path.exists(venv):
            self.report({"ERROR"}, f"Could not remove all of {venv} (a file in use?)")
            return {"CANCELLED"}
        self.report({"INFO"}, f"Removed the backend ({venv})")
        return {"FINISHED"}


class SCANTALK_OT_open_setup_log(bpy.types.Operator):
    """Open the full log of the last set-up"""

    bl_idname = "scantalk.open_setup_log"
    bl_label = "Open Set-up Log"

    target: EnumProperty(items=[("FILE", "File", "Open the log file with the system's text viewer"),
                                ("TEXT", "Text Block", "Load the log into Blender's text editor")],
                         default="FILE", options={"SKIP_SAVE"})

    def execute(self, context):
        path = backend_env.setup_log_path(runtime.venv_dir())
        if not os.path.isfile(path):
            self.report({"WARNING"}, "No set-up log yet")
            return {"CANCELLED"}
        if self.target == "FILE" and not bpy.app.background:
            return bpy.ops.wm.path_open(filepath=path)
        name = "scantalk-setup.log"
        text = bpy.data.texts.get(name) or bpy.data.texts.new(name)
        with open(path, encoding="utf-8", errors="replace") as f:
            text.from_string(f.read())
        self.report({"INFO"}, f"The set-up log is in the text block '{name}' ({path})")
        return {"FINISHED"}


class SCANTALK_OT_cancel_setup(bpy.types.Operator):
    """Stop setting up the backend; nothing is changed"""

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
        runtime.forget_backend_status()
        try:
            backend = runtime.discover(prefs.values(context).python_path)
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
           SCANTALK_OT_export_gltf, SCANTALK_OT_export_rig_csv, SCANTALK_OT_export_rig_json,
           SCANTALK_OT_companion_add, SCANTALK_OT_companion_remove, SCANTALK_OT_setup_backend, SCANTALK_OT_repair_backend, SCANTALK_OT_remove_backend,
           SCANTALK_OT_open_setup_log, SCANTALK_OT_cancel_setup, SCANTALK_OT_check_backend)


def register():
    for c in classes:
        bpy.utils.register_class(c)


def unregister():
    for c in reversed(classes):
        bpy.utils.unregister_class(c)
