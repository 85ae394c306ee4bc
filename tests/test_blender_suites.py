"""Run the add-on tests (tests/blender) under real Blender: bpy 5.2 LTS, 5.0 and 4.2 LTS from PyPI.

bpy needs its own interpreter (one Blender version per venv), so this test starts each venv's
Python on tests/blender; the backend worker runs in this interpreter (SCANTALK_BACKEND_PYTHON).
The venvs come from `tools/setup.sh`; SCANTALK_BPY_PYTHONS (os.pathsep-separated) overrides.
"""
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import ROOT

DEFAULT = {"bpy 5.2": ROOT / ".venv-bpy52" / "bin" / "python",  # newest supported (Python 3.13)
           "bpy 5.0": ROOT / ".venv-bpy50" / "bin" / "python",
           "bpy 4.2": ROOT / ".venv-bpy42" / "bin" / "python"}  # oldest supported


def _pythons():
    env = os.environ.get("SCANTALK_BPY_PYTHONS")
    if env:
        return {Path(p).parent.parent.name: Path(p) for p in env.split(os.pathsep) if p}
    return DEFAULT


@pytest.mark.parametrize("label", list(_pythons()))
def test_addon_suite_under_real_blender(label, tmp_path):
    py = _pythons()[label]
    if not py.exists():
        if os.environ.get("CI"):
            pytest.fail(f"{py} is missing: CI must create it (tools/setup.sh)")
        pytest.skip(f"{py} not found: run `bash tools/setup.sh` to create the Blender venvs")
    env = dict(os.environ, SCANTALK_BACKEND_PYTHON=sys.executable, PYTHONPATH=str(ROOT),
               SCANTALK_CACHE_DIR=str(tmp_path / "cache"))
    p = subprocess.run([str(py), "-m", "pytest", "tests/blender", "-q", "-p", "no:cacheprovider", "-rs"],
                       cwd=ROOT, env=env, capture_output=True, text=True, timeout=1800)
    tail = p.stdout[-6000:] + p.stderr[-3000:]
    # bpy 4.2 can segfault at interpreter exit after a clean run; judge by pytest's summary line.
    summary = re.findall(r"^=*\s*(\d+ (?:passed|failed|skipped|errors?).*?) in [\d.]+s", p.stdout, re.M)
    assert summary, f"no pytest summary under {label} (exit {p.returncode}):\n{tail}"
    assert "failed" not in summary[-1] and "error" not in summary[-1], tail
    assert re.search(r"\d+ passed", summary[-1]), tail
    assert p.returncode in (0, -11, 139), f"exit {p.returncode}:\n{tail}"
