"""Session state that outlives one operator call: the shared backend worker, the running animate
job (for the panel's progress bar), the set-up task and the last doctor report."""
from __future__ import annotations

import atexit
import os
import sys
from pathlib import Path

from . import backend_env
from .worker_client import WorkerClient

ADDON_DIR = Path(__file__).resolve().parent

_worker: WorkerClient | None = None
_worker_key = None
active = None  # operators.Running while an animate runs from the UI
setup_task: backend_env.SetupTask | None = None
doctor_lines: list[str] = []
last_message: str = ""


def user_dir(sub: str) -> str:
    """A writable folder of this extension (venv, cache)."""
    import bpy

    pkg = __package__ or "scantalk"
    if pkg.startswith("bl_ext."):
        try:
            return bpy.utils.extension_path_user(pkg, path=sub, create=True)
        except Exception:
            pass
    p = Path(bpy.utils.user_resource("SCRIPTS", path="scantalk_data", create=True)) / sub
    p.mkdir(parents=True, exist_ok=True)
    return str(p)


def venv_dir() -> str:
    """The backend venv of Set up backend: one per user, outside Blender's per-version folders, so
    every Blender version shares it ($SCANTALK_BACKEND_DIR overrides). Not created here."""
    return backend_env.default_backend_dir()


def cache_dir() -> str:
    return user_dir("cache")


def bundle_dir() -> str | None:
    return backend_env.find_bundle(ADDON_DIR)


def discover(pref_python: str = "") -> backend_env.Backend:
    """The backend to use; `pref_python` is the preference's interpreter (absolute, or empty)."""
    return backend_env.resolve(pref_python=pref_python, venv_dir=venv_dir(), running_python=sys.executable,
                               bundle_dir=bundle_dir())


_status: dict = {}


def backend_status(pref_python: str = "") -> tuple[bool, str]:
    """(usable, one line for the panel), without starting anything once known: cached per
    preference, environment variable, venv presence and running interpreter (the first call may
    probe an interpreter, ~0.1-0.5 s). `forget_backend_status()` after set-up or a check."""
    key = (pref_python, os.environ.get(backend_env.ENV_VAR, ""), backend_env.venv_python(venv_dir()).exists(),
           sys.executable, setup_task.state if setup_task is not None else None)
    if key not in _status:
        try:
            b = discover(pref_python)
            _status.clear()
            _status[key] = (True, f"Backend: {b.describe()}")
        except backend_env.BackendNotFound as exc:
            _status[key] = (False, str(exc))
    return _status[key]


def forget_backend_status() -> None:
    _status.clear()


def get_worker(pref_python: str = "") -> WorkerClient:
    """The shared worker (models stay warm between runs); restarted if it died or the backend
    settings changed. Raises BackendNotFound or WorkerError with a readable message."""
    global _worker, _worker_key
    backend = discover(pref_python)
    args = ("--cache-dir", cache_dir())
    key = tuple(backend.worker_argv(*args))
    if _worker is not None and (_worker_key != key or not _worker.alive):
        stop_worker()
    if _worker is None:
        _worker = backend.start_worker(*args)
        _worker_key = key
    return _worker


def stop_worker() -> None:
    global _worker, _worker_key
    if _worker is not None:
        try:
            _worker.close(timeout=3)
        except Exception:
            _worker.kill()
    _worker, _worker_key = None, None


def forget_worker(client) -> None:
    """Drop a worker that a job had to kill."""
    global _worker, _worker_key
    if client is _worker:
        _worker, _worker_key = None, None


def shutdown() -> None:
    global setup_task
    if active is not None:
        try:
            active.job.cancel()
        except Exception:
            pass
    if setup_task is not None and setup_task.state == "RUNNING":
        setup_task.cancel()
    stop_worker()


atexit.register(stop_worker)
