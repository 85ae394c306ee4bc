#!/usr/bin/env bash
# Create the project's virtual environments (safe to re-run: existing ones are reused).
#   .venv        the backend, the trainer and the test tools
#   .venv-bpy52  real Blender 5.2 LTS as a Python module (newest supported; its wheel needs Python
#                3.13: python3.13 on PATH, or PYTHON313=/path/to/python3.13)
#   .venv-bpy50  real Blender 5.0 (the first with the workspace sequencer scene)
#   .venv-bpy42  real Blender 4.2 LTS (oldest supported; Python 3.11)
# `--backend-only` skips the Blender environments (~375 MB each).
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}

make_venv() { [ -x "$1/bin/python" ] || "$PY" -m venv "$1"; "$1/bin/pip" install -q --upgrade pip; }

make_venv .venv
# torch first and pinned: a bare `torch` requirement would pull a multi-GB CUDA build here.
.venv/bin/pip install -q "torch==2.13.0"
.venv/bin/pip install -q -e ".[train,test]"

if [ "${1:-}" != "--backend-only" ]; then
  make_venv .venv-bpy50
  .venv-bpy50/bin/pip install -q "bpy==5.0.1" pytest
  make_venv .venv-bpy42
  .venv-bpy42/bin/pip install -q "bpy==4.2.*" pytest
  # pyenv shims need the version named; a python3.13 elsewhere on PATH ignores PYENV_VERSION.
  PY313=${PYTHON313:-python3.13}
  if PYENV_VERSION=${PYENV_VERSION:-3.13.0} "$PY313" -c "import sys; assert sys.version_info[:2] == (3, 13)" 2>/dev/null; then
    PYENV_VERSION=${PYENV_VERSION:-3.13.0} PY="$PY313" make_venv .venv-bpy52
    .venv-bpy52/bin/pip install -q "bpy==5.2.3" pytest
  else
    echo "setup.sh: no Python 3.13 found (set PYTHON313): skipping .venv-bpy52 (Blender 5.2)" >&2
  fi
fi
