"""Session state that outlives one operator call: the shared backend worker, the running animate
job (for the panel's progress bar), the set-up task and the last doctor report."""
from __future__ import annotations

import atexit
import sys
from pathlib import Path

from . import backend_env
from .worker_client import WorkerClient

ADDON_DIR = Path(__file__).resolve().parent

_worker: WorkerClient | None = None
_worker_key = None
active = None  # pipeline.Running while an animate runs from the UI
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
    return user_dir("venv")


def cache_dir() -> str:
    return user_dir("cache")


def bundle_dir() -> str | None:
    return backend_env.find_bundle(ADDON_DIR)


def discover(context=None) -> backend_env.Backend:
    from . import prefs

    p = prefs.get(context)
    pref_python = (p.python_path if p is not None else "") or ""
    if pref_python:
        import bpy

        pref_python = bpy.path.abspath(pref_python)
    return backend_env.resolve(pref_python=pref_python, venv_dir=venv_dir(), running_python=sys.executable,
                               bundle_dir=bundle_dir())


def get_worker(context=None) -> WorkerClient:
    """The shared worker (models stay warm between runs); restarted if it died or the backend
    settings changed. Raises BackendNotFound or WorkerError with a readable message."""
    global _worker, _worker_key
    backend = discover(context)
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
