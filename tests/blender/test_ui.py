"""The panel and the preferences draw in every state (no window in bpy from PyPI: the layout is
a recording stand-in), and show what the user needs: progress bar + Cancel while running, the
result with Export / Remove after, set-up progress and errors in the preferences."""
import importlib
import types

import pytest

bpy = pytest.importorskip("bpy", reason="bpy is not importable: run these tests with a bpy venv's python")

from tests.blender import helpers as H  # noqa: E402
from tests.blender.conftest import PKG  # noqa: E402


class Layout:
    """Records UILayout calls; sub-layouts share the record."""

    def __init__(self, calls=None):
        self.calls = [] if calls is None else calls

    def __getattr__(self, name):
        def call(*args, **kw):
            self.calls.append((name, args, kw))
            if name in ("row", "column", "box", "split", "grid_flow", "column_flow"):
                return Layout(self.calls)
            return types.SimpleNamespace()
        return call

    def texts(self, kind):
        return [kw.get("text", a[0] if a else "") for n, a, kw in self.calls if n == kind]

    def ops(self):
        return [a[0] for n, a, kw in self.calls if n == "operator"]


def draw_panel():
    lay = Layout()
    bpy.types.VIEW3D_PT_scantalk.draw(types.SimpleNamespace(layout=lay), bpy.context)
    return lay


def test_panel_states(scene, addon):
    rt = importlib.import_module(PKG + ".runtime")
    job = importlib.import_module(PKG + ".job")
    wb = importlib.import_module(PKG + ".writeback")
    assert "Select the head mesh" in draw_panel().texts("label")

    obj = H.sphere_head(subdiv=2)
    lay = draw_panel()
    assert "scantalk.animate" in lay.ops() and "scantalk.export_fbx" not in lay.ops()

    ops = importlib.import_module(PKG + ".operators")
    j = job.AnimateJob(lambda: None, {})
    j.stage, j.fraction = "decode", 0.5
    notice = "Exact mode writes 4,000 shape keys of 2,562 vertices"  # said before the job, shown during it
    rt.active = run = ops.Running(types.SimpleNamespace(cleanup=lambda: None, notices=[notice]), j)
    try:
        lay = draw_panel()
        assert any(notice.startswith(t) for t in lay.texts("label"))
        prog = [kw for n, a, kw in lay.calls if n == "progress"]
        assert prog and prog[0]["factor"] == pytest.approx(0.45) and "Predicting motion 45%" in prog[0]["text"]
        assert "scantalk.cancel" in lay.ops() and "scantalk.animate" not in lay.ops()
        # progress goes on through reading the result and writing keys
        run.phase = "result"
        assert "Reading the result 93%" in [kw for n, a, kw in draw_panel().calls if n == "progress"][0]["text"]
        run.phase = "keys"
        assert "Writing shape keys 97%" in [kw for n, a, kw in draw_panel().calls if n == "progress"][0]["text"]
        run.cancel_requested = True
        assert "Cancelling" in [kw for n, a, kw in draw_panel().calls if n == "progress"][0]["text"]
    finally:
        rt.active = None

    wb.write_result(obj, H.synthetic_offsets(len(obj.data.vertices), 10), 3, mode="COMPACT", max_error=1e-4)
    lay = draw_panel()
    assert {"scantalk.export_fbx", "scantalk.export_gltf", "scantalk.clear"} <= set(lay.ops())
    assert any("frames 3-12" in t for t in lay.texts("label"))


def test_panel_strip_picker_uses_this_versions_collection(scene, addon):
    H.sphere_head(subdiv=1)
    scene.sequence_editor_create()
    lay = draw_panel()
    searches = [a for n, a, kw in lay.calls if n == "prop_search"]
    want = "strips_all" if hasattr(scene.sequence_editor, "strips_all") else "sequences_all"
    assert searches and searches[0][3] == want


def test_preferences_draw_setup_states(scene, addon):
    rt = importlib.import_module(PKG + ".runtime")
    benv = importlib.import_module(PKG + ".backend_env")
    prefs_cls = type(bpy.context.preferences.addons[PKG].preferences)

    def draw():
        lay = Layout()
        prefs_cls.draw(types.SimpleNamespace(layout=lay, torch_build="AUTO"), bpy.context)
        return lay

    lay = draw()
    if not benv.venv_python(rt.venv_dir()).exists():
        assert {"scantalk.setup_backend", "scantalk.check_backend"} <= set(lay.ops())
    assert any("Installs into" in t and "every Blender version" in t for t in lay.texts("label"))
    assert any(t.startswith("Automatic: ") for t in lay.texts("label"))  # what AUTO resolves to, and why
    assert "torch_build" in [a[1] for n, a, kw in lay.calls if n == "prop"]  # CPU or a CUDA build
    task = benv.SetupTask("python", "/nowhere", None)
    task.state, task.fraction = "RUNNING", 0.3
    task.message = "Downloading torch 450.0 MB of 900.0 MB · 450.0 MB of 1.2 GB · package 1 of 30"
    rt.setup_task = task
    try:
        lay = draw()
        assert [kw for n, a, kw in lay.calls if n == "progress"][0]["text"] == task.message
        assert "scantalk.cancel_setup" in lay.ops() and "scantalk.remove_backend" not in lay.ops()
        task.state, task.message = "ERROR", "Set-up failed: pip could not reach the index\nmore detail"
        assert "Set-up failed: pip could not reach the index" in draw().texts("label")
    finally:
        rt.setup_task = None


def test_animate_is_greyed_out_with_a_reason(scene, addon, monkeypatch, tmp_path):
    ops = importlib.import_module(PKG + ".operators")
    rt = importlib.import_module(PKG + ".runtime")
    assert "Select the head mesh" in ops.cannot_animate(bpy.context)
    assert not bpy.ops.scantalk.animate.poll()
    bpy.ops.object.camera_add()
    assert "is a camera, not a mesh" in ops.cannot_animate(bpy.context)
    H.sphere_head(subdiv=1)
    # no backend anywhere: greyed out, the panel says where to set it up
    monkeypatch.delenv("SCANTALK_BACKEND_PYTHON", raising=False)
    monkeypatch.setattr(rt.sys, "executable", str(tmp_path / "no-python"))
    rt.forget_backend_status()
    try:
        assert "Set up backend" in ops.cannot_animate(bpy.context)
        assert not bpy.ops.scantalk.animate.poll()
        labels = " ".join(draw_panel().texts("label"))
        assert "No backend Python found" in labels and "Backend ready" not in labels
    finally:
        monkeypatch.undo()
        rt.forget_backend_status()


def test_settings_live_on_each_object(scene, addon):
    pipeline = importlib.import_module(PKG + ".pipeline")
    a, b = H.sphere_head("A", subdiv=1), H.sphere_head("B", subdiv=1)
    a.scantalk.mode, a.scantalk.strength, a.scantalk.axes = "EXACT", 0.5, "Y_UP"
    b.scantalk.smoothing, b.scantalk.checkpoint, b.scantalk.head_scale = 2.0, "//b.pt", 1.8
    for obj, want in ((a, ("EXACT", 0.5, 0.0, "Y_UP", "", 1.0)), (b, ("COMPACT", 1.0, 2.0, "AUTO", "//b.pt", 1.8))):
        bpy.context.view_layer.objects.active = obj
        s = pipeline.Settings.gather(bpy.context)
        assert (s.mode, s.strength, s.smoothing, s.axes, s.checkpoint, round(s.head_scale, 5)) == want, obj.name
        lay = draw_panel()
        props = [(a_[0], a_[1]) for n, a_, kw in lay.calls if n == "prop"]
        assert (obj.scantalk, "mode") in props  # the panel edits this object's own settings
        assert (obj.scantalk, "head_scale") in props


def test_path_settings_take_blend_relative_paths(scene, addon):
    """"//" paths are how a .blend keeps its audio and checkpoint next to it: Blender 4.5+ warns on
    each unless the property declares it takes them."""
    import warnings

    obj = H.sphere_head("A", subdiv=1)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        obj.scantalk.checkpoint = "//models/head.pt"
        bpy.context.scene.scantalk.audio_path = "//voice.wav"
    assert obj.scantalk.checkpoint == "//models/head.pt"
    if bpy.app.version >= (4, 5, 0):
        op = bpy.ops.scantalk.animate.get_rna_type()
        for rna, name in ((obj.scantalk.bl_rna, "checkpoint"), (bpy.context.scene.scantalk.bl_rna, "audio_path"),
                          (op, "checkpoint"), (op, "audio_path")):
            assert rna.properties[name].is_path_supports_blend_relative, name


def test_animate_and_remove_are_one_undo_step_each(scene, addon):
    """Ctrl+Z after Animate: the operator declares UNDO and finishes once (the modal returns FINISHED
    only after the write), so Blender pushes one undo step holding the whole result. bpy from PyPI
    has no window, so its undo stack cannot run here (ed.undo's poll fails); what the step relies on,
    a write that changes nothing unless it completes, is tested in test_writeback."""
    assert bpy.types.SCANTALK_OT_animate.bl_options == {"UNDO"}
    assert "UNDO" in bpy.types.SCANTALK_OT_clear.bl_options
    if bpy.app.background:
        assert not bpy.ops.ed.undo.poll()
