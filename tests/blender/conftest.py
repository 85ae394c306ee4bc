"""Add-on tests under real bpy (run with a bpy venv's python, e.g. /work/venv-bpy50 or -bpy42):

    /work/venv-bpy50/bin/python -m pytest tests/blender -q

Every module here starts with `pytest.importorskip("bpy")`, so without bpy the folder is skipped
with that reason. Blender's user folders go to a temporary directory (set before bpy is imported)
so installing the extension never touches a real Blender configuration. The add-on is built with
build_addon.py and installed from the zip like a user would; tests use the installed module.

End-to-end tests need the backend: the interpreter in $SCANTALK_BACKEND_PYTHON (CI sets it to the
main venv's python) and a model (the bundled default, or the official-format test checkpoint under
../shared); they skip with the reason otherwise.
"""
import os
import shutil
import sys
import tempfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
_USER = tempfile.mkdtemp(prefix="scantalk_blender_user_")
os.environ["BLENDER_USER_RESOURCES"] = _USER  # read by Blender when bpy is first imported

try:
    import bpy  # noqa: F401

    BPY_ERROR = None
except ImportError as exc:  # the folder's modules skip themselves with this reason
    BPY_ERROR = exc

PKG = "bl_ext.user_default.scantalk"


@pytest.fixture(scope="session")
def addon(tmp_path_factory):
    """The extension, built from this checkout and installed from its zip."""
    import importlib

    import bpy

    sys.path.insert(0, str(ROOT))
    import build_addon

    zpath = build_addon.build(tmp_path_factory.mktemp("dist"))
    res = bpy.ops.extensions.package_install_files(filepath=str(zpath), repo="user_default",
                                                   enable_on_install=True)
    assert res == {"FINISHED"}, res
    assert PKG in bpy.context.preferences.addons, list(bpy.context.preferences.addons.keys())
    mod = importlib.import_module(PKG)
    installed = Path(mod.__file__).parent
    assert installed.is_relative_to(Path(_USER)), installed  # the installed copy, not the source
    yield mod
    importlib.import_module(PKG + ".runtime").stop_worker()


@pytest.fixture
def scene(addon):
    """An empty file at 24 fps, for each test."""
    import bpy

    bpy.ops.wm.read_homefile(use_empty=True)
    sc = bpy.context.scene
    sc.render.fps, sc.render.fps_base = 24, 1.0
    sc.frame_start, sc.frame_end = 1, 250
    return sc


def _backend_python():
    return os.environ.get("SCANTALK_BACKEND_PYTHON", "")


@pytest.fixture(scope="session")
def backend(addon):
    """(python, checkpoint or "") for end-to-end runs, or skip with the reason."""
    from importlib import import_module

    benv = import_module(PKG + ".backend_env")
    rt = import_module(PKG + ".runtime")
    py = _backend_python()
    if not py:
        pytest.skip("set SCANTALK_BACKEND_PYTHON to the backend venv's python for end-to-end tests")
    bundle = rt.bundle_dir()
    if bundle is None or not Path(bundle, "backend", "worker.py").is_file():
        pytest.skip("the bundled backend has no worker (python -m backend serve) yet")
    try:
        info = benv.probe(py, bundle, benv.read_requirements(bundle))
    except benv.BackendNotFound as exc:
        pytest.skip(f"backend python unusable: {exc}")
    if not benv.usable(info):
        pytest.skip(f"backend python {py} cannot run the backend: missing {info.get('missing')}")
    ckpt = ROOT.parent / "shared" / "fixtures" / "official_scantalk_tiny" / "official_format_tiny.pth.tar"
    if ckpt.is_file():
        return py, str(ckpt)
    if Path(bundle, "backend", "assets", "default_model.pt").is_file():
        return py, ""
    pytest.skip("no model: neither a bundled default_model.pt nor ../shared's test checkpoint")


def pytest_sessionfinish(session, exitstatus):
    shutil.rmtree(_USER, ignore_errors=True)
    if BPY_ERROR is None:
        import bpy

        if bpy.app.version < (4, 5, 0):
            # bpy 4.2's wheel sometimes segfaults at interpreter exit after all work is done
            # (blender-facts.md); leave with pytest's own status once the report is written.
            session.config.add_cleanup(lambda: _hard_exit(session))


def _hard_exit(session):
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(int(session.exitstatus))
