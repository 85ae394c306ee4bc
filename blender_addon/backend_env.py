"""Find the Python that runs the backend, build the worker's command line, and set up a venv.

Plain Python, no bpy (the bpy side passes in the preference, the venv folder and the bundle).

Discovery order (first that is set wins; an explicitly set interpreter that does not work is an
error, not a silent fall-through):
  1. the interpreter set in the add-on preferences;
  2. the environment variable SCANTALK_BACKEND_PYTHON (scripts, CI);
  3. the venv made by "Set up backend" in the extension's user folder;
  4. the interpreter running Blender, if it can import the backend and its requirements
     (the case under bpy from PyPI installed next to the backend);
  otherwise BackendNotFound with a message that says where to set it up.

The zip made by build_addon.py carries the backend package in `bundled/` (with
`bundled/requirements.txt`). An interpreter that cannot import `backend` by itself gets the bundle
appended to its import path; one that can (a developer's checkout) uses its own. Backend processes
start isolated, from a private folder (see _BOOT).
"""
from __future__ import annotations

import json
import math
import os
import subprocess
import sys
import threading
from dataclasses import dataclass, field
from pathlib import Path

ENV_VAR = "SCANTALK_BACKEND_PYTHON"
BUNDLE_DIR = "bundled"
PTH_NAME = "scantalk_backend.pth"

# Distribution names checked when no requirements file is at hand.
DEFAULT_REQUIREMENTS = ["torch", "numpy", "scipy", "potpourri3d", "robust-laplacian", "transformers",
                        "soundfile", "platformdirs", "plyfile"]

# Every backend process (probe, worker, doctor) starts as `python -I -c _BOOT MODE BUNDLE EXPECTED ...`.
# -I (isolated) keeps the working directory, the script's folder, PYTHON* variables and the user
# site off the import path, so nothing planted in /tmp or the current folder can shadow `backend`
# or a module the launcher imports. The bundle is appended (after site-packages) only when the
# interpreter has no backend of its own, and the worker refuses to run a `backend` other than the
# one the probe found. Probe and worker share this code, so they see the same import path.
_BOOT = r"""
import importlib.util as iu, json, os, sys
mode, bundle, expected = sys.argv[1:4]
del sys.argv[1:4]
def where(name):
    try:
        spec = iu.find_spec(name)
    except Exception:
        return None
    if spec is None or not spec.origin or os.path.basename(spec.origin) != "__init__.py":
        return None
    return os.path.dirname(os.path.realpath(spec.origin))
own = where("backend")
if own is None and bundle:
    sys.path.append(bundle)
bundled = where("backend") if own is None and bundle else None
if mode == "probe":
    import importlib.metadata as md
    missing = []
    for r in json.loads(sys.argv[1]):
        try:
            md.version(r)
        except Exception:
            missing.append(r)
    print(json.dumps({"python": sys.version.split()[0], "executable": sys.executable,
                      "backend_own": own, "backend_bundle": bundled, "missing": missing}))
    raise SystemExit(0)
found = own or bundled
if found is None or (expected and found != os.path.realpath(expected)):
    sys.stderr.write("ScanTalk refused to start the backend: it would be imported from %s, but the "
                     "add-on checked %s. Press 'Check backend' in the add-on preferences.\n"
                     % (found, expected or "nothing"))
    raise SystemExit(3)
import runpy
sys.argv[0] = "python -m backend"
runpy.run_module("backend", run_name="__main__", alter_sys=True)
"""
ISOLATED = "-I"  # see _BOOT


def launch_argv(python: str, mode: str, bundle_dir: str | None, expected: str | None, *args) -> list[str]:
    """The command line of a backend process (no shell; every argument is a list item)."""
    return [python, ISOLATED, "-u", "-X", "utf8", "-c", _BOOT, mode, bundle_dir or "", expected or "",
            *map(str, args)]


class BackendNotFound(Exception):
    pass


@dataclass
class Backend:
    python: str
    source: str  # "preferences", "environment", "venv", "blender"
    use_bundle: bool
    bundle_dir: str | None
    info: dict = field(default_factory=dict)

    @property
    def package_dir(self) -> str | None:
        """The `backend` package the probe found; the worker refuses to import any other."""
        return self.info.get("backend_own") or self.info.get("backend_bundle")

    def worker_argv(self, *args) -> list[str]:
        return launch_argv(self.python, "run", self.bundle_dir if self.use_bundle else None,
                           self.package_dir, "serve", *args)

    def worker_env(self, base: dict | None = None) -> dict:
        return process_env(base)

    def start_worker(self, *args):
        """A started WorkerClient for `serve` (args: e.g. --cache-dir DIR), in a private folder."""
        from .worker_client import WorkerClient

        return WorkerClient(self.worker_argv(*args), env=self.worker_env(), cwd=private_workdir()).start()

    def describe(self) -> str:
        where = {"preferences": "set in preferences", "environment": f"from ${ENV_VAR}",
                 "venv": "venv made by Set up backend", "blender": "Blender's own Python"}[self.source]
        return f"{self.python} ({where}, Python {self.info.get('python', '?')})"


def base_python_for_venv(executable: str) -> str:
    """The interpreter to create the venv with: Blender's own Python (sys.executable is the
    Python binary in Blender 2.91+ and under bpy from PyPI)."""
    name = os.path.basename(executable or "").lower()
    if name.startswith("python"):
        return executable
    for cand in sorted(Path(sys.prefix, "bin").glob("python3*")) + [Path(sys.prefix, "python.exe")]:
        if cand.is_file():
            return str(cand)
    return executable


def venv_python(venv_dir) -> Path:
    venv_dir = Path(venv_dir)
    if sys.platform == "win32":
        return venv_dir / "Scripts" / "python.exe"
    return venv_dir / "bin" / "python"


def read_requirements(bundle_dir) -> list[str]:
    """Requirement lines of the bundle (empty list when there is none)."""
    if not bundle_dir:
        return []
    p = Path(bundle_dir) / "requirements.txt"
    if not p.is_file():
        return []
    out = []
    for line in p.read_text(encoding="utf-8").splitlines():
        line = line.split("#", 1)[0].strip()
        if line and not line.startswith("-"):
            out.append(line)
    return out


def requirement_names(reqs: list[str]) -> list[str]:
    names = []
    for r in reqs:
        name = r
        for sep in "<>=!~;[ ":
            name = name.split(sep, 1)[0]
        if name:
            names.append(name.strip())
    return names


def find_bundle(addon_dir) -> str | None:
    """The folder holding the `backend` package shipped with the add-on (None if absent).
    In the built zip it is `<addon>/bundled`; running from a source checkout, the repo root."""
    addon_dir = Path(addon_dir)
    for cand in (addon_dir / BUNDLE_DIR, addon_dir.parent):
        if (cand / "backend" / "__init__.py").is_file():
            return str(cand)
    return None


_probe_cache: dict = {}


def probe(python: str, bundle_dir: str | None, requirements: list[str] | None = None,
          timeout: float = 60.0, use_cache: bool = True) -> dict:
    """Ask `python` (in a subprocess, from a neutral folder) what it can import."""
    names = requirement_names(requirements) if requirements else DEFAULT_REQUIREMENTS
    key = (python, bundle_dir, tuple(names))
    if use_cache and key in _probe_cache:
        return _probe_cache[key]
    if not python or not Path(python).exists():
        raise BackendNotFound(f"Python interpreter not found: {python}")
    try:
        cp = subprocess.run(launch_argv(python, "probe", bundle_dir, None, json.dumps(names)),
                            capture_output=True, text=True, timeout=timeout, cwd=private_workdir(),
                            env=process_env())
    except (OSError, subprocess.TimeoutExpired) as exc:
        raise BackendNotFound(f"could not run {python}: {exc}") from exc
    if cp.returncode != 0:
        tail = "\n".join(cp.stderr.strip().splitlines()[-5:])
        raise BackendNotFound(f"{python} failed to start (exit code {cp.returncode}): {tail}")
    try:
        info = json.loads(cp.stdout.strip().splitlines()[-1])
    except (ValueError, IndexError) as exc:
        raise BackendNotFound(f"{python} gave an unreadable answer: {cp.stdout[-300:]}") from exc
    if usable(info):
        _probe_cache[key] = info
    return info


def usable(info: dict) -> bool:
    return bool((info.get("backend_own") or info.get("backend_bundle")) and not info.get("missing"))


def clear_cache() -> None:
    _probe_cache.clear()


_workdir: str | None = None


def private_workdir() -> str:
    """The working directory of every process the add-on starts: a folder only this user can write
    (made once per session by mkdtemp, mode 0700), never the shared temp folder itself."""
    global _workdir
    if _workdir is None or not os.path.isdir(_workdir):
        import atexit
        import shutil
        import tempfile

        _workdir = tempfile.mkdtemp(prefix="scantalk-run-")
        atexit.register(shutil.rmtree, _workdir, True)
    return _workdir


def process_env(base: dict | None = None) -> dict:
    """The environment of the probe, the worker and pip alike. Blender sets PYTHONHOME and friends
    for its own Python; -I ignores them anyway, but children of the backend must not inherit them."""
    env = dict(os.environ if base is None else base)
    for k in ("PYTHONHOME", "PYTHONPATH", "PYTHONSTARTUP", "PYTHONEXECUTABLE", "PYTHONSAFEPATH"):
        env.pop(k, None)
    return env


def _why_unusable(python: str, info: dict, fix: str) -> str:
    if not (info.get("backend_own") or info.get("backend_bundle")):
        return f"{python} cannot import the ScanTalk backend. {fix}"
    missing = ", ".join(info.get("missing", []))
    return f"{python} lacks required packages ({missing}). {fix}"


def resolve(pref_python: str = "", venv_dir: str | None = None, running_python: str | None = None,
            bundle_dir: str | None = None, env: dict | None = None) -> Backend:
    """Apply the discovery order; raise BackendNotFound with an actionable message."""
    env = os.environ if env is None else env
    reqs = read_requirements(bundle_dir)
    setup_hint = ("Open Edit > Preferences > Add-ons > ScanTalk and press 'Set up backend'"
                  + (f" (it installs into {venv_dir})" if venv_dir else "")
                  + ", or set 'Backend Python' to an interpreter that has the backend installed.")

    def make(python, source, info):
        return Backend(python=python, source=source, use_bundle=info.get("backend_own") is None,
                       bundle_dir=bundle_dir, info=info)

    explicit = [(pref_python, "preferences"), (env.get(ENV_VAR, ""), "environment")]
    for python, source in explicit:
        if python:
            python = os.path.expanduser(python)
            if os.path.isdir(python):
                python = str(venv_python(python))  # a venv folder was given
            if not os.path.exists(python):
                where = "in the add-on preferences" if source == "preferences" else f"in ${ENV_VAR}"
                raise BackendNotFound(f"The backend Python set {where} does not exist: {python}")
            info = probe(python, bundle_dir, reqs)
            if not usable(info):
                raise BackendNotFound(_why_unusable(python, info, "Fix it or clear the setting."))
            return make(python, source, info)

    if venv_dir:
        vpy = venv_python(venv_dir)
        if vpy.exists():
            info = probe(str(vpy), bundle_dir, reqs)
            if usable(info):
                return make(str(vpy), "venv", info)
            raise BackendNotFound(_why_unusable(str(vpy), info,
                                                "The venv is incomplete: press 'Set up backend' again."))

    if running_python and os.path.exists(running_python):
        try:
            info = probe(running_python, bundle_dir, reqs)
        except BackendNotFound:
            info = {}
        if usable(info):
            return make(running_python, "blender", info)

    raise BackendNotFound("No backend Python found. " + setup_hint)


# ------------------------------------------------------------------------------------------------
# "Set up backend": venv + pip install, on a background thread, with progress.
# ------------------------------------------------------------------------------------------------
class SetupTask:
    """Create `venv_dir` with `base_python`, pip install the bundle's requirements into it and make
    the bundle importable (a .pth file). Runs on a thread; poll `state`, `fraction`, `message`."""

    def __init__(self, base_python: str, venv_dir: str, bundle_dir: str | None, extra_args: list[str] | None = None):
        self.base_python = base_python
        self.venv_dir = str(venv_dir)
        self.bundle_dir = bundle_dir
        self.extra_args = list(extra_args or [])
        self.state = "IDLE"  # RUNNING, DONE, ERROR, CANCELLED
        self.fraction = 0.0
        self.message = ""
        self.log: list[str] = []
        self.error: str | None = None
        self._proc: subprocess.Popen | None = None
        self._cancel = False
        self._thread: threading.Thread | None = None

    def start(self) -> "SetupTask":
        self.state = "RUNNING"
        self._thread = threading.Thread(target=self._run, name="scantalk-setup", daemon=True)
        self._thread.start()
        return self

    def join(self, timeout=None) -> str:
        if self._thread:
            self._thread.join(timeout)
        return self.state

    def cancel(self) -> None:
        self._cancel = True
        if self._proc and self._proc.poll() is None:
            self._proc.terminate()

    def _step(self, fraction, message):
        self.fraction = max(self.fraction, min(1.0, fraction))
        self.message = message

    def _run_cmd(self, argv, on_line=None):
        self.log.append("$ " + " ".join(argv))
        self._proc = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                                      errors="replace", cwd=private_workdir(), env=process_env())
        for line in self._proc.stdout:
            line = line.rstrip()
            self.log.append(line)
            if len(self.log) > 2000:
                del self.log[:500]
            if on_line:
                on_line(line)
        rc = self._proc.wait()
        if self._cancel:
            raise _SetupCancelled()
        if rc != 0:
            tail = "\n".join(l for l in self.log[-12:] if l.strip())
            raise RuntimeError(f"'{' '.join(argv[:4])} ...' failed (exit code {rc}):\n{tail}")

    def _run(self):
        try:
            reqs = read_requirements(self.bundle_dir)
            if not reqs:
                raise RuntimeError("the add-on carries no requirements list (bundled/requirements.txt); "
                                   "reinstall the add-on from a zip made by build_addon.py")
            vpy = venv_python(self.venv_dir)
            if not vpy.exists():
                self._step(0.02, "Creating virtual environment")
                self._run_cmd([self.base_python, ISOLATED, "-m", "venv", self.venv_dir])
            n = [0]

            def on_pip(line):
                if line.startswith(("Collecting", "Downloading", "Using cached", "Requirement already")):
                    n[0] += 1
                    self._step(0.1 + 0.75 * (1 - math.exp(-n[0] / 20)), line[:80])
                elif line.startswith("Installing collected packages"):
                    self._step(0.88, "Installing packages (this can take minutes)")
                elif line.startswith("Successfully installed"):
                    self._step(0.95, "Packages installed")

            self._step(0.1, "Installing packages")
            self._run_cmd([str(vpy), ISOLATED, "-m", "pip", "install", "--progress-bar", "off", *reqs, *self.extra_args],
                          on_line=on_pip)
            if self.bundle_dir:
                cp = subprocess.run([str(vpy), ISOLATED, "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
                                    capture_output=True, text=True, cwd=private_workdir(), env=process_env())
                site = cp.stdout.strip()
                if cp.returncode == 0 and site:
                    Path(site, PTH_NAME).write_text(self.bundle_dir + "\n", encoding="utf-8")
            self._step(0.97, "Checking the backend")
            clear_cache()
            info = probe(str(vpy), self.bundle_dir, reqs, use_cache=False)
            if not usable(info):
                raise RuntimeError(_why_unusable(str(vpy), info, "See the log above."))
            self._step(1.0, f"Backend ready (Python {info.get('python')})")
            self.state = "DONE"
        except _SetupCancelled:
            self.state = "CANCELLED"
            self.message = "Setup cancelled"
        except Exception as exc:  # shown in the preferences, so keep every failure readable
            self.error = str(exc)
            self.message = f"Setup failed: {exc}"
            self.state = "ERROR"


class _SetupCancelled(Exception):
    pass


def doctor(backend: Backend, extra_args: list[str] | None = None, timeout: float = 300.0) -> dict:
    """Run the worker's `doctor` command once in a fresh worker and return its result."""
    client = backend.start_worker(*(extra_args or []))
    try:
        return client.call("doctor", timeout=timeout)
    finally:
        client.close(timeout=5)


def format_doctor(res: dict) -> list[str]:
    """Readable lines from a doctor result (whatever fields the worker gives)."""
    lines = []
    skip = {"event", "id"}
    for k, v in res.items():
        if k in skip:
            continue
        if isinstance(v, dict):
            v = ", ".join(f"{a}={b}" for a, b in v.items())
        elif isinstance(v, list):
            v = ", ".join(map(str, v))
        lines.append(f"{k}: {v}")
    return lines
