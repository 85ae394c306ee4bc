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

    j = job.AnimateJob(lambda: None, {})
    j.stage, j.fraction = "decode", 0.42
    rt.active = types.SimpleNamespace(job=j, prep=None)
    try:
        lay = draw_panel()
        prog = [kw for n, a, kw in lay.calls if n == "progress"]
        assert prog and prog[0]["factor"] == pytest.approx(0.42) and "Predicting motion 42%" in prog[0]["text"]
        assert "scantalk.cancel" in lay.ops() and "scantalk.animate" not in lay.ops()
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
        prefs_cls.draw(types.SimpleNamespace(layout=lay), bpy.context)
        return lay

    lay = draw()
    assert {"scantalk.setup_backend", "scantalk.check_backend"} <= set(lay.ops())
    assert any("installs into" in t for t in lay.texts("label"))
    task = benv.SetupTask("python", "/nowhere", None)
    task.state, task.fraction, task.message = "RUNNING", 0.3, "Collecting torch"
    rt.setup_task = task
    try:
        lay = draw()
        assert [kw for n, a, kw in lay.calls if n == "progress"][0]["text"] == "Collecting torch"
        assert "scantalk.cancel_setup" in lay.ops()
        task.state, task.message = "ERROR", "Setup failed: pip could not reach the index\nmore detail"
        assert "Setup failed: pip could not reach the index" in draw().texts("label")
    finally:
        rt.setup_task = None
