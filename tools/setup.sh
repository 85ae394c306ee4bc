#!/usr/bin/env bash
# Create the project's virtual environments (safe to re-run: existing ones are reused).
#   .venv        the backend, the trainer and the test tools
#   .venv-bpy50  real Blender 5.0 as a Python module, for the add-on tests (newest supported)
#   .venv-bpy42  real Blender 4.2 LTS as a Python module (oldest supported)
# `--backend-only` skips the two Blender environments (~375 MB each).
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
fi
