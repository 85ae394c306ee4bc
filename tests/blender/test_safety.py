"""Safety under real Blender: pressing Check backend / Animate never runs a `backend` package that
someone planted in the shared temp folder or in Blender's working directory (on a shared Linux
machine /tmp is writable by everyone)."""
import importlib
import os
import tempfile
from pathlib import Path

import pytest

bpy = pytest.importorskip("bpy", reason="bpy is not importable: run these tests with a bpy venv's python")

from tests.blender.conftest import PKG  # noqa: E402

pytestmark = pytest.mark.slow


def _plant(folder: Path, marker: Path) -> None:
    code = f"open({str(marker)!r}, 'a').write('ran from {folder}\\n')\n"
    (folder / "backend").mkdir(parents=True, exist_ok=True)
    for name in ("__init__.py", "__main__.py"):
        (folder / "backend" / name).write_text(code)
    (folder / "runpy.py").write_text(code)


def test_check_backend_and_worker_ignore_planted_packages(addon, backend, tmp_path, monkeypatch):
    py, _ = backend
    rt = importlib.import_module(PKG + ".runtime")
    benv = importlib.import_module(PKG + ".backend_env")
    marker = tmp_path / "PWNED"
    systmp, cwd = tmp_path / "tmp", tmp_path / "cwd"
    _plant(systmp, marker)
    _plant(cwd, marker)
    monkeypatch.setattr(tempfile, "tempdir", str(systmp))
    monkeypatch.setattr(benv, "_workdir", None)
    monkeypatch.chdir(cwd)
    rt.stop_worker()
    benv.clear_cache()
    prefs = bpy.context.preferences.addons[PKG].preferences
    prefs.python_path = py
    try:
        assert bpy.ops.scantalk.check_backend() == {"FINISHED"}
        assert rt.doctor_lines[0].startswith("Backend OK"), rt.doctor_lines
        worker = rt.get_worker()
        assert worker.call("ping", timeout=120)["event"] == "pong"
        assert Path(benv.private_workdir()).parent == systmp  # mkdtemp under the temp folder ...
        assert os.stat(benv.private_workdir()).st_mode & 0o077 == 0  # ... but private to this user
    finally:
        rt.stop_worker()
        prefs.python_path = ""
    assert not marker.exists(), marker.read_text()
