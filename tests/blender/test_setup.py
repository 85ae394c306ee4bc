"""Set up backend under real bpy: online access respected, an offline set-up from local wheels
(faketorch stands in for torch), the log in a text block, a failing Repair keeping the venv,
Remove backend. The venv goes to a temporary $SCANTALK_BACKEND_DIR, never the user's data folder."""
import importlib
import types
from pathlib import Path

import pytest

bpy = pytest.importorskip("bpy", reason="bpy is not importable: run these tests with a bpy venv's python")

from tests.blender.conftest import PKG  # noqa: E402
from tests.setup_helpers import make_bundle, make_wheels  # noqa: E402


@pytest.fixture
def setup_env(addon, tmp_path, monkeypatch):
    rt = importlib.import_module(PKG + ".runtime")
    benv = importlib.import_module(PKG + ".backend_env")
    target = tmp_path / "shared data" / "backend"
    monkeypatch.setenv(benv.BACKEND_DIR_VAR, str(target))
    monkeypatch.delenv(benv.ENV_VAR, raising=False)
    prefs = bpy.context.preferences.addons[PKG].preferences
    saved = (prefs.pip_args, prefs.torch_build)
    rt.setup_task = None
    rt.forget_backend_status()
    yield target, prefs
    prefs.pip_args, prefs.torch_build = saved
    rt.setup_task = None
    rt.forget_backend_status()
    benv.clear_cache()


def _left(target: Path):
    return sorted(p.name for p in target.parent.glob("*")) if target.parent.exists() else []


def test_setup_refused_without_online_access(setup_env, monkeypatch):
    target, prefs = setup_env
    ops = importlib.import_module(PKG + ".operators")
    if bpy.app.online_access:  # the PyPI wheels start with it off; a build with it on: switch it off
        monkeypatch.setattr(ops, "online_access", lambda: (False, "Online access is off: test"))
    prefs.pip_args = ""
    with pytest.raises(RuntimeError, match="Online access is off|started offline"):
        bpy.ops.scantalk.setup_backend()
    assert _left(target) == []  # nothing made, not even the log
    # allowed, but an unclosed quote in the extra arguments: said, nothing made
    monkeypatch.setattr(ops, "online_access", lambda: (True, ""))
    prefs.pip_args = '--find-links "C:\\My Wheels'
    with pytest.raises(RuntimeError, match="Extra pip Arguments"):
        bpy.ops.scantalk.setup_backend()
    assert _left(target) == []


def test_offline_setup_log_repair_and_remove(setup_env, tmp_path, monkeypatch):
    """--no-index installs need no online access; the preferences then offer Repair and Remove."""
    target, prefs = setup_env
    rt = importlib.import_module(PKG + ".runtime")
    benv = importlib.import_module(PKG + ".backend_env")
    from tests.blender.test_ui import Layout

    wheels = make_wheels(tmp_path / "my wheels")
    bundle = make_bundle(tmp_path / "addon")
    monkeypatch.setattr(rt, "bundle_dir", lambda: bundle)
    prefs.pip_args = f'--no-index --find-links "{wheels[0].parent}"'
    prefs.torch_build = "CPU"
    assert bpy.ops.scantalk.setup_backend() == {"FINISHED"}, rt.setup_task.message
    assert _left(target) == ["backend", "backend-setup.log"]
    assert rt.discover("").source == "venv"
    assert benv.read_marker(target)["torch"] == "2.13.0"

    def draw():
        lay = Layout()
        type(prefs).draw(types.SimpleNamespace(layout=lay, torch_build="CPU"), bpy.context)
        return lay

    lay = draw()
    assert {"scantalk.repair_backend", "scantalk.remove_backend", "scantalk.open_setup_log",
            "scantalk.check_backend"} <= set(lay.ops())
    assert "scantalk.setup_backend" not in lay.ops()
    assert any(t.startswith("Installed: PyTorch 2.13.0 (CPU)") for t in lay.texts("label"))

    assert bpy.ops.scantalk.open_setup_log(target="TEXT") == {"FINISHED"}
    assert "Successfully installed" in bpy.data.texts["scantalk-setup.log"].as_string()

    Path(bundle, "requirements.txt").write_text("surely-not-a-package-xyz==1.0\n")
    with pytest.raises(RuntimeError, match="surely-not-a-package-xyz"):
        bpy.ops.scantalk.repair_backend()
    assert _left(target) == ["backend", "backend-setup.log"] and benv.read_marker(target)["torch"] == "2.13.0"

    assert bpy.ops.scantalk.remove_backend() == {"FINISHED"}
    assert _left(target) == ["backend-setup.log"]
    assert "scantalk.setup_backend" in draw().ops()
