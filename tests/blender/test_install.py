"""The zip made by build_addon.py is a valid extension for this Blender and installs as one."""
import subprocess
import sys
from pathlib import Path

import pytest

bpy = pytest.importorskip("bpy", reason="bpy is not importable: run these tests with a bpy venv's python")

from tests.blender.conftest import PKG, ROOT  # noqa: E402


def test_zip_passes_blenders_own_validator(tmp_path):
    sys.path.insert(0, str(ROOT))
    import build_addon

    zpath = build_addon.build(tmp_path)
    cli = Path(bpy.utils.system_resource("SCRIPTS"), "addons_core", "bl_pkg", "cli", "blender_ext.py")
    if not cli.is_file():
        pytest.skip(f"this Blender has no extension CLI at {cli}")
    out = subprocess.run([sys.executable, str(cli), "validate", str(zpath)], capture_output=True, text=True)
    assert out.returncode == 0 and "Success" in out.stdout, out.stdout + out.stderr


def test_installed_extension_layout(addon):
    root = Path(addon.__file__).parent
    assert (root / "blender_manifest.toml").is_file()
    assert (root / "bundled" / "backend" / "worker.py").is_file()
    assert "torch" not in (root / "bundled" / "requirements.txt").read_text().replace("after torch.txt", "")
    assert "torch==" in (root / "bundled" / "torch.txt").read_text()
    assert addon.__name__ == PKG
    prefs = bpy.context.preferences.addons[PKG].preferences
    assert prefs.max_basis == 64 and prefs.device in ("auto", "cpu", "cuda")
    rt = __import__(PKG + ".runtime", fromlist=["x"])
    assert rt.bundle_dir() == str(root / "bundled")
    venv = Path(rt.venv_dir())  # one per user, outside the per-version extension folder
    assert "scantalk-blender" in venv.parts and not venv.is_relative_to(root.parent)


def test_settings_defaults(scene):
    assert (scene.scantalk.source, scene.scantalk.fit_frame_range) == ("STRIP", True)
    bpy.ops.mesh.primitive_cube_add()
    ob = bpy.context.active_object.scantalk  # per object
    assert (ob.mode, ob.axes, ob.max_error_mm, ob.strength, ob.smoothing, ob.checkpoint) == \
        ("COMPACT", "AUTO", pytest.approx(0.1), 1.0, 0.0, "")
