"""Find the Python that runs the backend, build the worker's command line, and set up a venv.

Plain Python, no bpy (the bpy side passes in the preference, the venv folder and the bundle).

Discovery order (first that is set wins; an explicitly set interpreter that does not work is an
error, not a silent fall-through):
  1. the interpreter set in the add-on preferences;
  2. the environment variable SCANTALK_BACKEND_PYTHON (scripts, CI);
  3. the venv made by "Set up backend" (one per user, shared by every Blender version; see
     default_backend_dir);
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
import os
import subprocess
import sys
import threading
from dataclasses import dataclass, field
from pathlib import Path

ENV_VAR = "SCANTALK_BACKEND_PYTHON"
BUNDLE_DIR = "bundled"

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
    """Requirement lines of the bundle: the torch pin (bundled/torch.txt) and requirements.txt
    (empty list when there is neither)."""
    reqs = _requirements_txt(bundle_dir)
    if bundle_dir and Path(bundle_dir, TORCH_PIN_FILE).is_file():
        reqs = [torch_requirement(bundle_dir), *reqs]
    return reqs


def _requirements_txt(bundle_dir) -> list[str]:
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
            try:
                info = probe(str(vpy), bundle_dir, reqs)
            except BackendNotFound as exc:  # e.g. the Blender whose Python made it was removed
                raise BackendNotFound(f"{exc}. Press 'Repair backend' in the add-on preferences.") from exc
            if usable(info):
                return make(str(vpy), "venv", info)
            raise BackendNotFound(_why_unusable(str(vpy), info,
                                                "The venv is incomplete: press 'Repair backend' in the add-on preferences."))

    if running_python and os.path.exists(running_python):
        try:
            info = probe(running_python, bundle_dir, reqs)
        except BackendNotFound:
            info = {}
        if usable(info):
            return make(running_python, "blender", info)

    raise BackendNotFound("No backend Python found. " + setup_hint)


# ------------------------------------------------------------------------------------------------
# "Set up backend": one shared venv per user (outside Blender's per-version folders), PyTorch pinned
# and chosen (CPU / CUDA build), the rest within tested bounds, real progress, built aside and
# moved into place only when it works.
# ------------------------------------------------------------------------------------------------
BACKEND_DIR_VAR = "SCANTALK_BACKEND_DIR"  # overrides where Set up backend builds the venv (tests, studios)
APP_DIR = "scantalk-blender"
TORCH_PIN_FILE = "torch.txt"  # written by build_addon.py next to requirements.txt
DEFAULT_TORCH_PIN = "torch==2.13.0"  # the same pin as tools/setup.sh and build_addon.TORCH_PIN
TORCH_INDEX = "https://download.pytorch.org/whl/"
# (id, label, CUDA version) of the PyTorch builds offered; the id's lower case names the index.
CUDA_BUILDS = [("CU126", "CUDA 12.6", (12, 6)), ("CU128", "CUDA 12.8", (12, 8)), ("CU130", "CUDA 13.0", (13, 0))]
DEFAULT_CUDA_BUILD = "CU128"
MARKER = "scantalk-backend.json"  # what was installed, read by the preferences
PIP_SPEC = "pip>=24.2,<27"  # a pip that knows --progress-bar raw (tested with 26.x)


def user_data_dir(env=None, platform: str | None = None, home: str | None = None) -> Path:
    """The per-user data folder of ScanTalk, shared by every Blender version (stdlib only):
    Linux $XDG_DATA_HOME or ~/.local/share, Windows %LOCALAPPDATA%, macOS ~/Library/Application Support."""
    env = os.environ if env is None else env
    platform = platform or sys.platform
    home = home or os.path.expanduser("~")
    if platform == "win32":
        base = env.get("LOCALAPPDATA") or os.path.join(home, "AppData", "Local")
        return Path(base) / APP_DIR
    if platform == "darwin":
        return Path(home, "Library", "Application Support", APP_DIR)
    return Path(env.get("XDG_DATA_HOME") or os.path.join(home, ".local", "share"), APP_DIR)


def default_backend_dir(env=None, platform: str | None = None, home: str | None = None) -> str:
    """Where Set up backend puts the venv: $SCANTALK_BACKEND_DIR, else <user data>/backend."""
    env = os.environ if env is None else env
    if env.get(BACKEND_DIR_VAR):
        return os.path.abspath(os.path.expanduser(env[BACKEND_DIR_VAR]))
    return str(user_data_dir(env, platform, home) / "backend")


def setup_log_path(venv_dir) -> str:
    """The set-up log, beside the venv (so it survives a failed or cancelled set-up)."""
    p = Path(venv_dir)
    return str(p.with_name(p.name + "-setup.log"))


def torch_requirement(bundle_dir) -> str:
    """The pinned torch requirement of the bundle (bundled/torch.txt), else the default pin."""
    if bundle_dir:
        p = Path(bundle_dir) / TORCH_PIN_FILE
        if p.is_file():
            for line in p.read_text(encoding="utf-8").splitlines():
                line = line.split("#", 1)[0].strip()
                if line:
                    return line
    return DEFAULT_TORCH_PIN


def other_requirements(bundle_dir) -> list[str]:
    """The bundle's requirements without torch (installed after it)."""
    torch_name = requirement_names([torch_requirement(bundle_dir)])[0].lower()
    return [r for r in _requirements_txt(bundle_dir) if requirement_names([r])[0].lower() not in ("torch", torch_name)]


def build_label(build: str) -> str:
    return "CPU" if build == "CPU" else dict((b, lab) for b, lab, _ in CUDA_BUILDS).get(build, build)


def torch_args(build: str, pin: str, platform: str | None = None) -> list[str]:
    """pip install arguments for torch: the pin, and for CUDA (any OS but macOS) or a Linux CPU
    build the PyTorch index of that build. Windows' and macOS' PyPI wheels are CPU (MPS) builds."""
    platform = platform or sys.platform
    if build == "CPU":
        return [pin, "--index-url", TORCH_INDEX + "cpu"] if platform.startswith("linux") else [pin]
    if build not in {b for b, _, _ in CUDA_BUILDS}:
        raise ValueError(f"unknown PyTorch build {build!r}")
    if platform == "darwin":
        raise ValueError("PyTorch has no CUDA builds for macOS: choose CPU (it uses Apple's GPU through MPS)")
    return [pin, "--index-url", TORCH_INDEX + build.lower()]


def pip_argv(python: str, args: list[str], extra_args: list[str] = (), raw_progress: bool = False,
             report: str | None = None) -> list[str]:
    """`python -I -m pip install ...` as a list (never a shell string). The user's extra arguments
    come last, so e.g. their own --index-url (a mirror) wins."""
    argv = [str(python), ISOLATED, "-m", "pip", "install", "--disable-pip-version-check", "--no-input",
            "--progress-bar", "raw" if raw_progress else "off"]
    if report:
        argv += ["--dry-run", "--report", report]
    return argv + list(args) + list(extra_args)


def split_pip_args(text: str, windows: bool | None = None) -> list[str]:
    """The 'Extra pip Arguments' preference as a list. POSIX shell rules on Linux and macOS; on
    Windows backslashes are literal and double quotes group (C:\\My Wheels stays one argument).
    Raises ValueError on an unclosed quote."""
    windows = sys.platform == "win32" if windows is None else windows
    text = (text or "").strip()
    if not text:
        return []
    if not windows:
        import shlex

        return shlex.split(text)
    out, cur, quoted, have = [], [], False, False
    for ch in text:
        if ch == '"':
            quoted, have = not quoted, True
        elif ch.isspace() and not quoted:
            if have:
                out.append("".join(cur))
            cur, have = [], False
        else:
            cur.append(ch)
            have = True
    if quoted:
        raise ValueError("unclosed quote")
    if have:
        out.append("".join(cur))
    return out


def works_offline(extra_args: list[str]) -> bool:
    """True when pip is told to use local files only (--no-index): no online access needed."""
    return "--no-index" in extra_args


def parse_cuda_version(nvidia_smi_output: str):
    import re

    m = re.search(r"CUDA Version:\s*(\d+)\.(\d+)", nvidia_smi_output or "")
    return (int(m.group(1)), int(m.group(2))) if m else None


def suggest_build(platform: str | None = None, which=None, run=None) -> tuple[str, str]:
    """(build, why): a CUDA build when an NVIDIA driver is found (nvidia-smi), the newest one the
    driver supports; CPU otherwise (always on macOS)."""
    import shutil

    platform = platform or sys.platform
    which = which or shutil.which
    if platform == "darwin":
        return "CPU", "macOS: PyTorch uses Apple's GPU (MPS) from the CPU build"
    smi = which("nvidia-smi")
    if not smi:
        return "CPU", "no NVIDIA GPU found"
    try:
        out = (run or (lambda argv: subprocess.run(argv, capture_output=True, text=True, timeout=5).stdout))([smi])
    except Exception:
        out = ""
    ver = parse_cuda_version(out)
    if ver is None:
        return DEFAULT_CUDA_BUILD, "NVIDIA GPU found"
    fits = [b for b, _, v in CUDA_BUILDS if v <= ver]
    if not fits:
        return "CPU", f"NVIDIA driver too old for PyTorch's CUDA builds (supports CUDA {ver[0]}.{ver[1]}): update it"
    return fits[-1], f"NVIDIA GPU found, driver supports CUDA {ver[0]}.{ver[1]}"


_suggestion: tuple | None = None


def suggested_build() -> tuple[str, str]:
    """suggest_build(), computed once per session (the preferences draw it)."""
    global _suggestion
    if _suggestion is None:
        _suggestion = suggest_build()
    return _suggestion


def read_marker(venv_dir) -> dict:
    """What Set up backend installed into `venv_dir` ({} when unknown)."""
    try:
        return json.loads(Path(venv_dir, MARKER).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}


def remove_backend(venv_dir) -> bool:
    """Delete the venv and any half-made `.new`/`.old` beside it; True if something was removed."""
    import shutil

    removed = False
    for p in (Path(venv_dir), _aside(venv_dir, "new"), _aside(venv_dir, "old")):
        if p.exists() or p.is_symlink():
            shutil.rmtree(p, ignore_errors=True) if p.is_dir() and not p.is_symlink() else p.unlink()
            removed = True
    clear_cache()
    return removed


def _aside(venv_dir, what: str) -> Path:
    p = Path(venv_dir)
    return p.with_name(f"{p.name}.{what}")


def _canon(name: str) -> str:
    import re

    return re.sub(r"[-_.]+", "-", name).lower()


_UNITS = {"bytes": 1, "kb": 1e3, "mb": 1e6, "gb": 1e9, "kib": 1024, "mib": 1024 ** 2, "gib": 1024 ** 3}


def parse_size(text: str) -> int | None:
    """pip's '(16.3 MB)' / '(512 bytes)' -> bytes."""
    parts = text.strip().strip("()").split()
    if len(parts) != 2 or parts[1].lower() not in _UNITS:
        return None
    try:
        return int(float(parts[0]) * _UNITS[parts[1].lower()])
    except ValueError:
        return None


def human_size(n: float) -> str:
    for unit, f in (("GB", 1e9), ("MB", 1e6), ("kB", 1e3)):
        if n >= f:
            return f"{n / f:.1f} {unit}"
    return f"{int(n)} B"


def dist_name(file_or_url: str) -> str:
    """The distribution a wheel or sdist file (or its URL) belongs to."""
    from urllib.parse import unquote, urlsplit

    s = file_or_url.strip()
    if "://" in s:
        s = urlsplit(s).path
    base = unquote(s.replace("\\", "/").rsplit("/", 1)[-1])
    for suffix in (".whl", ".tar.gz", ".zip", ".tar.bz2"):
        if base.endswith(suffix):
            base = base[: -len(suffix)]
            return _canon(base.split("-")[0] if suffix == ".whl" else base.rsplit("-", 1)[0])
    return _canon(base)


def report_packages(report: dict) -> list[dict]:
    """From `pip install --dry-run --report`: [{name, version, url}] of what would be installed."""
    out = []
    for item in report.get("install", []):
        md = item.get("metadata", {})
        out.append({"name": _canon(md.get("name", "?")), "version": md.get("version", ""),
                    "url": item.get("download_info", {}).get("url", "")})
    return out


def remote_size(url: str, timeout: float = 10.0) -> int | None:
    """Size of a package file: stat for file:// URLs, Content-Length of a HEAD request otherwise."""
    from urllib.parse import unquote, urlsplit
    from urllib.request import Request, urlopen, url2pathname

    try:
        if url.startswith("file:"):
            return os.path.getsize(url2pathname(unquote(urlsplit(url).path)))
        if url.startswith(("http://", "https://")):
            with urlopen(Request(url, method="HEAD"), timeout=timeout) as r:
                n = r.headers.get("Content-Length")
                return int(n) if n else None
    except Exception:
        return None
    return None


class PipProgress:
    """Bytes and packages of a pip install, from what pip prints: `Downloading F (N MB)` (a file
    starts; the one before it is complete), `Progress X of Y` (--progress-bar raw), `Using cached`,
    `Processing <local file>`, `Installing collected packages`, `Successfully installed`.
    `expected` ([{name, version, size}], from the dry run) gives the totals up front."""

    def __init__(self, expected: list[dict] | None = None):
        self.expected = {p["name"]: p for p in (expected or [])}
        self.total_bytes = sum(p.get("size") or 0 for p in self.expected.values())
        self.done_bytes = 0
        self.current: list | None = None  # [name, size, bytes so far]
        self.files: set[str] = set()  # packages whose file was fetched or found
        self.installing = ""
        self.installed: list[str] = []

    @property
    def n_packages(self) -> int:
        return max(len(self.expected), len(self.files))

    @property
    def bytes_seen(self) -> int:
        return self.done_bytes + (self.current[2] if self.current else 0)

    def fraction(self) -> float:
        """0..1 of the download: bytes when the sizes are known, else files."""
        total = max(self.total_bytes, self.bytes_seen + (self.current[1] - self.current[2] if self.current and self.current[1] else 0))
        if total > 0:
            return min(1.0, self.bytes_seen / total)
        return len(self.files) / self.n_packages if self.n_packages else 0.0

    def _finish_current(self):
        if self.current:
            self.done_bytes += self.current[1] or self.current[2]
            self.current = None

    def feed(self, line: str) -> bool:
        """Take one line of pip's output; True if the progress changed."""
        s = line.strip()
        if s.startswith("Progress ") and " of " in s:
            try:
                got, total = (int(x) for x in s[len("Progress "):].split(" of "))
            except ValueError:
                return False
            if self.current:
                self.current[2] = got
                if total and not self.current[1]:
                    self.current[1] = total
            return True
        for head in ("Downloading ", "Using cached ", "Processing "):
            if s.startswith(head):
                rest = s[len(head):]
                size = None
                if rest.endswith(")") and " (" in rest:
                    rest, sz = rest.rsplit(" (", 1)
                    size = parse_size(sz)
                if rest.endswith(".metadata"):
                    return False  # a few kB of metadata, not the package
                self._finish_current()
                name = dist_name(rest)
                exp = self.expected.get(name, {})
                if size is None:
                    size = exp.get("size")
                    if size is None and head == "Processing " and os.path.isfile(rest):
                        size = os.path.getsize(rest)
                if name not in self.expected and size:
                    self.total_bytes += size  # not in the dry run's list: count it anyway
                    self.expected[name] = {"name": name, "size": size}
                elif size and not exp.get("size"):
                    self.total_bytes += size
                    exp["size"] = size
                self.files.add(name)
                if head == "Downloading ":
                    self.current = [name, size or 0, 0]
                else:
                    self.done_bytes += size or 0
                return True
        if s.startswith("Installing collected packages:"):
            self._finish_current()
            self.installing = s.split(":", 1)[1].strip()
            return True
        if s.startswith("Successfully installed"):
            self._finish_current()
            self.installed += s.split()[2:]
            self.installing = ""
            return True
        return False

    def text(self) -> str:
        total = human_size(self.total_bytes) if self.total_bytes else "?"
        count = f"package {min(len(self.files), self.n_packages)} of {self.n_packages}" if self.n_packages else ""
        if self.installing:
            n = len(self.installing.split(","))
            return f"Installing {n} package{'s' * (n != 1)} (this can take minutes)"
        if self.current:
            name, size, got = self.current
            what = f"Downloading {name} {human_size(got)} of {human_size(size)}" if size else f"Downloading {name}"
            return f"{what} · {human_size(self.bytes_seen)} of {total} · {count}"
        return f"{human_size(self.bytes_seen)} of {total} · {count}" if count else "Preparing"


class SetupTask:
    """Build a backend venv for `venv_dir` aside (`<venv_dir>.new`), install the pinned torch of the
    chosen build first and then the bundle's other requirements, check it, and only then move it
    into place (the previous one, if any, is replaced only at that point). A failure or a cancel
    removes the half-made folder and leaves the previous venv as it was. Runs on a thread; poll
    `state`, `fraction`, `message`; the whole pip output goes to `log_path`.

    The venv does not point at the bundle (no .pth): every Blender version's add-on appends its own
    bundle when it starts the backend, so one venv serves them all."""

    def __init__(self, base_python: str, venv_dir: str, bundle_dir: str | None, extra_args: list[str] | None = None,
                 torch_build: str = "CPU", platform: str | None = None, upgrade_pip: bool = True,
                 log_path: str | None = None, size_lookup=remote_size):
        self.base_python = base_python
        self.venv_dir = str(venv_dir)
        self.bundle_dir = bundle_dir
        self.extra_args = list(extra_args or [])
        self.torch_build = torch_build
        self.platform = platform or sys.platform
        self.upgrade_pip = upgrade_pip
        self.log_path = log_path or setup_log_path(venv_dir)
        self.size_lookup = size_lookup
        self.state = "IDLE"  # RUNNING, DONE, ERROR, CANCELLED
        self.fraction = 0.0
        self.message = ""
        self.log: list[str] = []  # the last lines (the whole log is in log_path)
        self.error: str | None = None
        self.progress: PipProgress | None = None
        self._proc: subprocess.Popen | None = None
        self._cancel = False
        self._thread: threading.Thread | None = None
        self._logf = None

    @property
    def new_dir(self) -> Path:
        return _aside(self.venv_dir, "new")

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
        p = self._proc
        if p is not None and p.poll() is None:
            p.terminate()

    def _step(self, fraction, message):
        self.fraction = max(self.fraction, min(1.0, fraction))
        self.message = message

    def _check_cancel(self):
        if self._cancel:
            raise _SetupCancelled()

    def _write_log(self, line: str):
        self.log.append(line)
        if len(self.log) > 2000:
            del self.log[:500]
        if self._logf:
            self._logf.write(line + "\n")
            self._logf.flush()

    def _run_cmd(self, argv, on_line=None, check=True) -> int:
        self._check_cancel()
        self._write_log("$ " + subprocess.list2cmdline(argv) if self.platform == "win32" else
                        "$ " + " ".join(__import__("shlex").quote(a) for a in argv))
        self._proc = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                                      errors="replace", cwd=private_workdir(), env=process_env())
        for line in self._proc.stdout:
            line = line.rstrip()
            if on_line and on_line(line):
                continue  # progress lines are not logged (there are thousands)
            self._write_log(line)
        rc = self._proc.wait()
        self._check_cancel()
        if rc != 0 and check:
            tail = "\n".join(l for l in self.log[-12:] if l.strip() and not l.startswith("$ "))
            raise RuntimeError(f"{' '.join(map(os.path.basename, argv[:1]))} {' '.join(argv[3:5])} failed "
                               f"(exit code {rc}):\n{tail}")
        return rc

    def _pip_knows_raw(self, vpy) -> bool:
        cp = subprocess.run([str(vpy), ISOLATED, "-m", "pip", "install", "--help"], capture_output=True, text=True,
                            errors="replace", cwd=private_workdir(), env=process_env())
        return "raw" in cp.stdout

    def _dry_run(self, vpy, args, raw) -> list[dict]:
        report = Path(private_workdir(), f"pip-report-{os.getpid()}-{id(self)}.json")
        prog, head = PipProgress(), self.message

        def on_line(line):  # an index without separate metadata makes pip download whole files here
            if prog.feed(line) and prog.current:
                self.message = f"{head}: {prog.text()}"
            return line.startswith("Progress ")

        try:
            self._run_cmd(pip_argv(vpy, args, self.extra_args, raw_progress=raw, report=str(report)), on_line=on_line)
            return report_packages(json.loads(report.read_text(encoding="utf-8")))
        finally:
            report.unlink(missing_ok=True)

    def _sizes(self, packages):
        from concurrent.futures import ThreadPoolExecutor

        with ThreadPoolExecutor(8) as ex:
            for p, size in zip(packages, ex.map(lambda p: self.size_lookup(p["url"]), packages)):
                p["size"] = size

    def _run(self):
        import shutil

        target, new, old = Path(self.venv_dir), self.new_dir, _aside(self.venv_dir, "old")
        try:
            Path(self.log_path).parent.mkdir(parents=True, exist_ok=True)
            self._logf = open(self.log_path, "w", encoding="utf-8")
            self._write_log(f"ScanTalk: Set up backend into {target} (PyTorch build: {build_label(self.torch_build)})")
            reqs = other_requirements(self.bundle_dir)
            if not _requirements_txt(self.bundle_dir):
                raise RuntimeError("the add-on carries no requirements list (bundled/requirements.txt); "
                                   "reinstall the add-on from a zip made by build_addon.py")
            pin = torch_requirement(self.bundle_dir)
            t_args = torch_args(self.torch_build, pin, self.platform)
            # leftovers of an interrupted set-up: a half-made .new goes; an .old whose swap did not
            # finish is the previous good venv
            if new.exists():
                shutil.rmtree(new, ignore_errors=True)
            if old.exists():
                if target.exists():
                    shutil.rmtree(old, ignore_errors=True)
                else:
                    old.rename(target)
            target.parent.mkdir(parents=True, exist_ok=True)

            self._step(0.01, "Creating the Python environment")
            self._run_cmd([self.base_python, ISOLATED, "-m", "venv", str(new)])
            vpy = venv_python(new)
            if self.upgrade_pip:
                self._step(0.05, "Updating pip")
                if self._run_cmd(pip_argv(vpy, [PIP_SPEC], self.extra_args), check=False) != 0:
                    self._write_log("(pip could not be updated; going on with the one the venv has)")
            raw = self._pip_knows_raw(vpy)
            # PyTorch first, from the index of the chosen build; then the rest, with torch pinned
            # so nothing can swap it for another build.
            steps = [("PyTorch", t_args), ("the other packages", [*reqs, pin])]
            self._step(0.08, "Finding the packages to download")
            expected = []
            for args in (t_args, reqs):  # (torch is not installed yet: the rest is resolved without it)
                expected += [p for p in self._dry_run(vpy, args, raw)
                             if p["name"] not in {e["name"] for e in expected}]
            self._check_cancel()
            self._sizes(expected)
            self._check_cancel()
            self.progress = prog = PipProgress(expected)
            self._write_log(f"To install: {len(expected)} packages, "
                            f"{human_size(prog.total_bytes) if prog.total_bytes else 'size unknown'}")
            for i, (label, args) in enumerate(steps):
                def on_line(line, i=i):
                    changed = prog.feed(line)
                    if changed:
                        self._step(0.12 + 0.68 * prog.fraction() + 0.15 * i / len(steps), prog.text())
                    return line.startswith("Progress ")

                self._step(0.12 + 0.68 * prog.fraction() + 0.15 * i / len(steps), f"Installing {label}")
                self._run_cmd(pip_argv(vpy, args, self.extra_args, raw_progress=raw), on_line=on_line)
            self._step(0.95, "Checking the backend")
            all_reqs = [pin, *reqs]
            info = probe(str(vpy), self.bundle_dir, all_reqs, use_cache=False)
            if not usable(info):
                raise RuntimeError(_why_unusable(str(vpy), info, "See the set-up log."))
            torch_version = subprocess.run(
                [str(vpy), ISOLATED, "-c", "import importlib.metadata as m, sys; print(m.version(sys.argv[1]))",
                 requirement_names([pin])[0]],
                capture_output=True, text=True, cwd=private_workdir(), env=process_env()).stdout.strip()
            Path(new, MARKER).write_text(json.dumps({
                "torch_build": self.torch_build, "torch": torch_version or None, "python": info.get("python"),
                "requirements": all_reqs, "extra_args": self.extra_args, "created": __import__("time").time()},
                indent=1), encoding="utf-8")
            self._check_cancel()
            # into place: previous -> .old, new -> target, drop .old (put back if the move fails)
            self._step(0.97, "Moving the environment into place")
            if target.exists():
                target.rename(old)
            try:
                new.rename(target)
            except OSError:
                if old.exists():
                    old.rename(target)
                raise
            shutil.rmtree(old, ignore_errors=True)
            _fix_scripts(target, new)
            clear_cache()
            vpy = venv_python(target)
            info = probe(str(vpy), self.bundle_dir, all_reqs, use_cache=False)  # it works where it lives
            if not usable(info):
                raise RuntimeError(_why_unusable(str(vpy), info, "See the set-up log."))
            tv = f"PyTorch {torch_version} " if torch_version else ""
            self._step(1.0, f"Backend ready: {tv}({build_label(self.torch_build)}), Python {info.get('python')}")
            self.state = "DONE"
        except _SetupCancelled:
            self.message = "Set-up cancelled: nothing was changed"
            self.state = "CANCELLED"
        except Exception as exc:  # shown in the preferences, so keep every failure readable
            self.error = str(exc)
            self.message = f"Set-up failed: {exc}"
            self.state = "ERROR"
        finally:
            if self.state != "DONE":
                shutil.rmtree(new, ignore_errors=True)
                if self.state == "RUNNING":
                    self.state = "ERROR"
            self._write_log(f"ScanTalk: {self.message}")
            if self._logf:
                self._logf.close()
                self._logf = None


def _fix_scripts(venv: Path, built_at: Path) -> None:
    """Point the venv's text scripts (pip, activate...) at where it lives now. The add-on only runs
    `<venv>/bin/python -I -m ...`, which needs none of this (Python finds pyvenv.cfg beside itself),
    but a user running the venv's pip by hand should not get the vanished .new path."""
    old, now = str(built_at), str(venv)
    for d in ("bin", "Scripts"):
        for f in (venv / d).glob("*") if (venv / d).is_dir() else ():
            if f.is_symlink() or not f.is_file() or f.stat().st_size > 1_000_000:
                continue
            try:
                text = f.read_text(encoding="utf-8")
            except (UnicodeDecodeError, OSError):
                continue  # binaries (Windows launchers) keep their path
            if old in text:
                f.write_text(text.replace(old, now), encoding="utf-8")
    cfg = venv / "pyvenv.cfg"
    if cfg.is_file():
        text = cfg.read_text(encoding="utf-8")
        if old in text:
            cfg.write_text(text.replace(old, now), encoding="utf-8")


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
