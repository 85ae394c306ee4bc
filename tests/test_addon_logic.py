"""The add-on's plain-Python parts, without bpy: the worker client, the modal job's logic, backend
discovery, audio timing, axis detection, Compact-mode numerics and the zip builder.

The worker here is a small stand-in speaking the protocol (docs/protocol.md) so that crashes,
hangs and cancels can be produced on demand; the real worker is exercised by tests/blender.
"""
import json
import math
import os
import sys
import textwrap
import time
import types
import zipfile
from pathlib import Path

import numpy as np
import pytest

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from blender_addon import audio_source, backend_env, basis, job as jobmod, mesh_export  # noqa: E402
from blender_addon.worker_client import WorkerClient, WorkerError, WorkerCancelled  # noqa: E402

FAKE_WORKER = textwrap.dedent(r'''
    import json, os, sys, threading, time
    out = sys.stdout
    def send(**ev):
        out.write(json.dumps(ev) + "\n"); out.flush()
    cancelled = set()
    jobs = []
    def run(req):
        rid, audio = req["id"], req.get("audio", "")
        if audio == "crash":
            sys.stderr.write("Traceback (most recent call last):\nRuntimeError: boom in the backend\n")
            sys.stderr.flush()
            os._exit(3)
        if audio == "error":
            send(event="error", id=rid, code="bad_checkpoint", message="checkpoint x.pt is not a ScanTalk model")
            return
        steps = 50 if audio in ("slow", "hang") else 3
        for i in range(steps):
            if rid in cancelled and audio != "hang":
                send(event="cancelled", id=rid); return
            send(event="progress", id=rid, stage="decode", fraction=(i + 1) / (steps + 1), message=f"frame {i}")
            time.sleep(0.1 if steps > 3 else 0.01)
        send(event="result", id=rid, out=req.get("out"), frames=7, fps=req.get("fps"))
    send(event="ready", version="test", pid=os.getpid())
    if os.environ.get("FAKE_PRINT_GARBAGE"):
        out.write("this is not json\n"); out.flush()
    for line in sys.stdin:
        req = json.loads(line)
        cmd = req["cmd"]
        if cmd == "animate":
            t = threading.Thread(target=run, args=(req,), daemon=True); t.start(); jobs.append(t)
        elif cmd == "cancel":
            cancelled.add(req["target"]); send(event="result", id=req["id"], cancelled=True)
        elif cmd == "ping":
            send(event="pong", id=req["id"], version="test")
        elif cmd == "doctor":
            send(event="result", id=req["id"], torch="2.x", device="cpu", cuda_available=False)
        elif cmd == "shutdown":
            send(event="result", id=req["id"], shutdown=True); break
''')


@pytest.fixture
def fake_worker(tmp_path):
    script = tmp_path / "fake_worker.py"
    script.write_text(FAKE_WORKER)
    clients = []

    def make(**env):
        e = dict(os.environ, **env)
        c = WorkerClient([sys.executable, str(script)], env=e, cwd=str(tmp_path)).start()
        clients.append(c)
        return c

    yield make
    for c in clients:
        c.kill()


# ---- worker client ---------------------------------------------------------------------------------
def test_client_rejects_shell_string():
    with pytest.raises(TypeError):
        WorkerClient("python -m backend serve")


def test_ready_ping_doctor_shutdown(fake_worker):
    c = fake_worker()
    assert c.wait_ready(10)["version"] == "test"
    assert c.call("ping", timeout=10)["event"] == "pong"
    assert c.call("doctor", timeout=10)["device"] == "cpu"
    c.close()
    assert not c.alive and c.proc.returncode == 0


def test_animate_events_are_non_blocking(fake_worker):
    c = fake_worker()
    req = c.request("animate", audio="ok", out="/tmp/x.npz", fps=24.0)
    assert isinstance(req.poll(), list)  # returns at once, whatever has arrived
    res = req.wait(timeout=10)
    assert res["frames"] == 7 and res["fps"] == 24.0


def test_error_event_is_readable(fake_worker):
    c = fake_worker()
    with pytest.raises(WorkerError) as ei:
        c.request("animate", audio="error").wait(timeout=10)
    assert ei.value.code == "bad_checkpoint"
    msg = ei.value.user_message()
    assert "not a ScanTalk model" in msg and "checkpoint" in msg.lower()


def test_crash_reports_exit_code_and_stderr_tail(fake_worker):
    c = fake_worker()
    req = c.request("animate", audio="crash")
    with pytest.raises(WorkerError) as ei:
        req.wait(timeout=10)
    err = ei.value
    assert err.code == "crashed"
    assert "exited with code 3" in str(err)
    assert "boom in the backend" in err.user_message()
    assert not c.alive
    # a request after the crash fails at once, readably
    with pytest.raises(WorkerError) as ei2:
        c.request("ping").wait(timeout=5)
    assert ei2.value.code == "crashed"


def test_not_started_interpreter_missing(tmp_path):
    with pytest.raises(WorkerError) as ei:
        WorkerClient([str(tmp_path / "no-python"), "-m", "backend", "serve"]).start()
    assert ei.value.code == "not_started" and "could not start" in str(ei.value)


def test_garbage_on_stdout_is_kept_for_diagnosis(fake_worker):
    c = fake_worker(FAKE_PRINT_GARBAGE="1")
    assert c.call("ping", timeout=10)["event"] == "pong"
    assert "this is not json" in c.stderr_tail()


def test_kill_ends_pending_requests(fake_worker):
    c = fake_worker()
    req = c.request("animate", audio="hang")
    time.sleep(0.3)
    c.kill()
    with pytest.raises(WorkerError):
        req.wait(timeout=10)


# ---- job (the modal operator's logic) ----------------------------------------------------------------
def _job(factory, audio, **kw):
    return jobmod.AnimateJob(factory, {"audio": audio, "out": "/tmp/o.npz", "fps": 25.0}, **kw).start()


def test_job_progress_then_done(fake_worker):
    c = fake_worker()
    j = _job(lambda: c, "slow")
    seen = []
    deadline = time.monotonic() + 20
    while j.poll() == jobmod.RUNNING and time.monotonic() < deadline:
        seen.append(j.fraction)
        time.sleep(0.05)
    assert j.state == jobmod.DONE and j.result["frames"] == 7
    assert seen == sorted(seen) and max(seen) > 0.2  # progress moved forward only
    assert j.fraction == 1.0
    assert "Predicting motion" in j.progress_text or j.stage == "decode"


def test_job_cancel_acknowledged(fake_worker):
    c = fake_worker()
    j = _job(lambda: c, "slow")
    time.sleep(0.3)
    j.poll()
    j.cancel()
    assert j.cancelling and j.label == "Cancelling..."
    assert j.wait(timeout=20) == jobmod.CANCELLED
    assert not j.killed_worker and c.alive  # the worker stays up for the next run


def test_job_cancel_kills_a_worker_that_does_not_answer(fake_worker):
    c = fake_worker()
    j = _job(lambda: c, "hang", cancel_grace=0.5)
    time.sleep(0.2)
    j.cancel()
    assert j.wait(timeout=20) == jobmod.CANCELLED
    assert j.killed_worker and not c.alive


def test_job_error_and_crash(fake_worker):
    c = fake_worker()
    j = _job(lambda: c, "error")
    assert j.wait(timeout=10) == jobmod.ERROR and "not a ScanTalk model" in j.message
    c2 = fake_worker()
    j2 = _job(lambda: c2, "crash")
    assert j2.wait(timeout=10) == jobmod.ERROR
    assert "exited with code 3" in j2.message and "boom in the backend" in j2.message


def test_job_factory_failure_is_an_error_state():
    def factory():
        raise WorkerError("could not start the ScanTalk backend (nope)", code="not_started")

    j = _job(factory, "ok")
    assert j.state == jobmod.ERROR and "could not start" in j.message
    assert j.poll() == jobmod.ERROR

    def no_backend():
        raise backend_env.BackendNotFound("No backend Python found. Open Edit > Preferences ...")

    j = _job(no_backend, "ok")
    assert j.state == jobmod.ERROR and j.message.startswith("No backend Python found")


def test_job_progress_parsing_with_fake_clock():
    class Req:
        id = "r1"

        def __init__(self):
            self.evs = []

        def poll(self):
            out, self.evs = self.evs, []
            return out

    class Client:
        killed = False

        def __init__(self):
            self.req = Req()

        def request(self, cmd, **f):
            return self.req

        def cancel(self, target):
            pass

        def kill(self):
            self.killed = True

        def stderr_tail(self):
            return ""

    now = [0.0]
    cl = Client()
    j = jobmod.AnimateJob(lambda: cl, {}, cancel_grace=5, clock=lambda: now[0]).start()
    cl.req.evs += [{"event": "progress", "id": "r1", "stage": "load_model", "fraction": 0.08, "message": "m"},
                   {"event": "progress", "id": "r1", "stage": "operators", "fraction": "bad"},
                   {"event": "progress", "id": "r1", "stage": "audio", "fraction": 0.02}]
    assert j.poll() == jobmod.RUNNING
    assert j.stage == "audio" and j.fraction == pytest.approx(0.08)  # never backwards, junk ignored
    j.cancel()
    now[0] = 4.9
    assert j.poll() == jobmod.RUNNING and not cl.killed
    now[0] = 5.1
    assert j.poll() == jobmod.CANCELLED and cl.killed


# ---- backend discovery -------------------------------------------------------------------------------
def _bundle(tmp_path, reqs=("numpy",)):
    b = tmp_path / "bundled"
    (b / "backend").mkdir(parents=True)
    (b / "backend" / "__init__.py").write_text("")
    (b / "requirements.txt").write_text("\n".join(reqs) + "\n")
    return str(b)


def test_resolve_prefers_preferences_then_env(tmp_path):
    bundle = _bundle(tmp_path)
    be = backend_env.resolve(pref_python=sys.executable, bundle_dir=bundle, env={})
    assert be.source == "preferences" and be.python == sys.executable
    be = backend_env.resolve(bundle_dir=bundle, env={backend_env.ENV_VAR: sys.executable})
    assert be.source == "environment"
    argv = be.worker_argv("--cache-dir", "C")
    assert argv[:2] == [sys.executable, "-I"] and argv[-3:] == ["serve", "--cache-dir", "C"]
    assert be.package_dir == str((ROOT / "backend").resolve())  # this venv's own (editable) backend


def test_probe_and_worker_share_one_environment(tmp_path):
    """Blender's PYTHONHOME/PYTHONPATH never reach either process, whichever started first."""
    bundle = _bundle(tmp_path)
    be = backend_env.resolve(pref_python=sys.executable, bundle_dir=bundle, env={})
    env = be.worker_env({"PYTHONHOME": "/blender/python", "PYTHONPATH": "/x", "HOME": "/h"})
    assert env == backend_env.process_env({"PYTHONHOME": "/blender/python", "PYTHONPATH": "/x", "HOME": "/h"})
    assert env == {"HOME": "/h"}


def _plant_backend(folder: Path, marker: Path) -> None:
    """A hostile `backend` package (and a `runpy` the launcher imports) that leaves a marker."""
    pkg = folder / "backend"
    pkg.mkdir(parents=True, exist_ok=True)
    code = f"open({str(marker)!r}, 'a').write('ran from {folder}\\n')\n"
    (pkg / "__init__.py").write_text(code)
    (pkg / "__main__.py").write_text(code)
    (folder / "runpy.py").write_text(code)
    (folder / "json.py").write_text(code)


def test_planted_backend_in_cwd_or_temp_never_runs(tmp_path, monkeypatch):
    """Safety: the probe, the worker and doctor ignore a `backend/` in the system temp folder and in
    the working directory, and the worker answers from the real package."""
    import tempfile

    marker = tmp_path / "PWNED"
    systmp, cwd = tmp_path / "systmp", tmp_path / "cwd"
    _plant_backend(systmp, marker)
    _plant_backend(cwd, marker)
    monkeypatch.setattr(tempfile, "tempdir", str(systmp))
    monkeypatch.setattr(backend_env, "_workdir", None)
    monkeypatch.chdir(cwd)
    monkeypatch.setenv("PYTHONPATH", f"{systmp}{os.pathsep}{cwd}")  # even if Blender's env had it
    backend_env.clear_cache()
    be = backend_env.resolve(pref_python=sys.executable, bundle_dir=str(systmp), env={})
    assert be.package_dir == str((ROOT / "backend").resolve())
    assert not Path(backend_env.private_workdir()).samefile(systmp)
    assert oct(os.stat(backend_env.private_workdir()).st_mode & 0o777) == "0o700"
    client = be.start_worker()
    try:
        res = client.call("doctor", timeout=120)
        assert "torch" in res
    finally:
        client.close(timeout=10)
    # the same planted folder given as the work dir of a worker started by hand
    client = WorkerClient(be.worker_argv(), env=be.worker_env(), cwd=str(cwd)).start()
    try:
        assert client.wait_ready(120)
    finally:
        client.close(timeout=10)
    assert not marker.exists(), marker.read_text()


def test_worker_refuses_a_backend_other_than_the_probed_one(tmp_path):
    """If `backend` would come from elsewhere than the probe saw, the worker exits with a message."""
    be = backend_env.resolve(pref_python=sys.executable, bundle_dir=None, env={})
    be.info = dict(be.info, backend_own=str(tmp_path / "elsewhere" / "backend"))
    client = be.start_worker()
    with pytest.raises(WorkerError) as ei:
        client.wait_ready(60)
    assert "refused to start the backend" in ei.value.user_message()
    assert str(ROOT / "backend") in ei.value.user_message()


def test_resolve_explicit_bad_python_is_an_error(tmp_path):
    with pytest.raises(backend_env.BackendNotFound) as ei:
        backend_env.resolve(pref_python=str(tmp_path / "nope" / "python"), env={})
    assert "does not exist" in str(ei.value)


def test_resolve_missing_requirement_is_named(tmp_path):
    bundle = _bundle(tmp_path, reqs=("numpy", "surely-not-installed-pkg>=1"))
    with pytest.raises(backend_env.BackendNotFound) as ei:
        backend_env.resolve(pref_python=sys.executable, bundle_dir=bundle, env={})
    assert "surely-not-installed-pkg" in str(ei.value)


def test_resolve_nothing_found_says_where_to_set_up(tmp_path):
    with pytest.raises(backend_env.BackendNotFound) as ei:
        backend_env.resolve(venv_dir=str(tmp_path / "venv"), running_python=None, bundle_dir=None, env={})
    assert "Set up backend" in str(ei.value) and str(tmp_path / "venv") in str(ei.value)


def test_resolve_running_interpreter_with_bundle(tmp_path):
    bundle = _bundle(tmp_path)
    be = backend_env.resolve(venv_dir=str(tmp_path / "venv"), running_python=sys.executable, bundle_dir=bundle,
                             env={})
    assert be.source == "blender"


def test_requirement_names():
    assert backend_env.requirement_names(["torch>=2.2,<3", "robust-laplacian>=0.2", "a[x]==1", "b ; python_version>'3'"]) \
        == ["torch", "robust-laplacian", "a", "b"]


def test_setup_task_without_requirements_fails_readably(tmp_path):
    t = backend_env.SetupTask(sys.executable, str(tmp_path / "venv"), None).start()
    assert t.join(30) == "ERROR" and "requirements" in t.message


# ---- audio timing (duck-typed strips; real strips are tested under bpy) ---------------------------------
def _scene(strips, fps=24, base=1.0, channels_muted=()):
    se = types.SimpleNamespace(strips_all=strips, channels={c: types.SimpleNamespace(mute=True) for c in channels_muted})
    return types.SimpleNamespace(name="Scene", sequence_editor=se, frame_start=1,
                                 render=types.SimpleNamespace(fps=fps, fps_base=base))


def _strip(name, start, off_start=0, length=100, off_end=0, mute=False, channel=1, kind="SOUND", sound_offset=0.0):
    return types.SimpleNamespace(name=name, type=kind, frame_start=float(start), frame_offset_start=off_start,
                                 frame_final_start=start + off_start, frame_final_end=start + length - off_end,
                                 mute=mute, channel=channel, sound_offset=sound_offset, sound=None)


def test_strip_timing_with_trims_and_offset():
    s = _strip("v", start=17, off_start=10, length=170, off_end=20, sound_offset=0.5)
    first, start, dur = audio_source.strip_timing(s, 24.0)
    assert first == 27
    assert start == pytest.approx(10 / 24 + 0.5)
    assert dur == pytest.approx(140 / 24)


def test_negative_sound_offset_gives_leading_silence():
    s = _strip("v", start=1, sound_offset=-0.5)
    assert audio_source.strip_timing(s, 24.0)[1] == pytest.approx(-0.5)  # the backend pads silence


def test_scene_fps_uses_fps_base():
    assert audio_source.scene_fps(_scene([], fps=30, base=1.001)) == pytest.approx(29.97, abs=1e-3)


def test_choose_strip_skips_muted_and_non_sound():
    a = _strip("muted", 1, mute=True)
    b = _strip("later", 50)
    c = _strip("first", 10)
    m = _strip("movie", 1, kind="MOVIE")
    d = _strip("chan_muted", 2, channel=3)
    strip, note = audio_source.choose_strip(_scene([a, b, c, m, d], channels_muted=(3,)))
    assert strip.name == "first" and "2 unmuted" in note
    assert audio_source.choose_strip(_scene([a, b]), "muted")[0].name == "muted"  # by name: allowed
    with pytest.raises(audio_source.AudioSourceError, match="not a sound strip"):
        audio_source.choose_strip(_scene([m]), "movie")
    with pytest.raises(audio_source.AudioSourceError, match="muted"):
        audio_source.choose_strip(_scene([a]))
    with pytest.raises(audio_source.AudioSourceError, match="no sound strip"):
        audio_source.choose_strip(_scene([m]))


def test_sequences_all_of_blender_42():
    se = types.SimpleNamespace(sequences_all=[_strip("x", 1)])
    scene = types.SimpleNamespace(name="S", sequence_editor=se)
    assert [s.name for s in audio_source.strips_all(scene)] == ["x"]
    assert audio_source.strips_collection_name(scene) == "sequences_all"


# ---- axes -----------------------------------------------------------------------------------------------
def test_axis_maps_are_rotations_into_y_up_z_forward():
    R = mesh_export.rotation_for("Z_UP")
    assert np.allclose(R @ R.T, np.eye(3)) and np.isclose(np.linalg.det(R), 1)
    assert np.allclose(R @ [0, 0, 1], [0, 1, 0])  # Blender up -> model up
    assert np.allclose(R @ [0, -1, 0], [0, 0, 1])  # Blender front (-Y) -> model front (+Z)
    assert np.allclose(mesh_export.rotation_for("Y_UP"), np.eye(3))


def test_detect_axes_from_shape_and_orientation():
    eye = np.eye(4)
    tall_z = np.array([[0, 0, 0], [0.16, 0.2, 0.3]])  # Z-up head: taller (z) than deep (y)
    tall_y = tall_z[:, [0, 2, 1]]
    assert mesh_export.detect_axes(eye, tall_z)[0] == "Z_UP"
    axes, note = mesh_export.detect_axes(eye, tall_y)  # FLAME imported without conversion, lying down
    assert axes == "Y_UP" and "lies on its side" in note
    rot_x90 = np.array([[1, 0, 0, 0], [0, 0, -1, 0], [0, 1, 0, 0], [0, 0, 0, 1]], float)  # stood up
    assert mesh_export.detect_axes(rot_x90, tall_y) == ("Y_UP", "")
    cube = np.array([[0, 0, 0], [1, 1, 1]])  # no shape cue: the orientation decides
    assert mesh_export.detect_axes(rot_x90, cube)[0] == "Y_UP"
    assert mesh_export.detect_axes(eye, cube)[0] == "Z_UP"


# ---- compact numerics ------------------------------------------------------------------------------------
def _offsets(T=120, V=900, rank=6, noise=0.0, seed=0):
    rng = np.random.default_rng(seed)
    basis = rng.standard_normal((rank, V * 3)).astype(np.float32) * 1e-3
    w = np.sin(np.linspace(0, 12, T)[:, None] * (1 + np.arange(rank))).astype(np.float32)
    D = w @ basis + 3e-4  # a constant part: the mean must be representable
    return (D + noise * rng.standard_normal(D.shape).astype(np.float32)).astype(np.float32)


def _max_err(D, W, B):
    R = (D - W @ B).reshape(D.shape[0], -1, 3)
    return float(np.sqrt((R ** 2).sum(-1)).max())


@pytest.mark.parametrize("T", [40, 600])  # Gram path and randomized path
def test_compact_basis_meets_the_tolerance(T):
    D = _offsets(T=T, noise=2e-6)
    tol = 2e-5
    W, B, err, K = basis.compact_basis(D, tol, k_max=64)
    assert _max_err(D, W, B) <= err * (1 + 1e-4) and err <= tol  # a bound, within the tolerance
    assert 7 <= K <= 40  # rank 6 + mean needs 7; noise may need a few more


def test_compact_basis_minimal_k():
    D = _offsets(T=80, rank=4, noise=0.0)
    W, B, err, K = basis.compact_basis(D, 1e-6, k_max=32)
    assert K == 5 and err <= 1e-6  # rank 4 + the constant offset, nothing more
    W1, B1, e1, K1 = basis.compact_basis(D, 1.0, k_max=32)
    assert K1 == 1  # a huge tolerance needs one key


def test_compact_basis_reports_real_error_when_k_max_is_too_small():
    D = _offsets(T=80, rank=10)
    W, B, err, K = basis.compact_basis(D, 1e-9, k_max=3)
    assert K == 3 and err > 1e-9 and err == pytest.approx(_max_err(D, W, B), rel=1e-3)


def test_smooth_time_keeps_constants_and_smooths_steps():
    x = np.ones((20, 6), np.float32)
    assert np.allclose(basis.smooth_time(x, 2.0), 1.0)
    step = np.zeros((20, 1), np.float32)
    step[10:] = 1
    y = basis.smooth_time(step, 1.5)
    assert 0 < y[9, 0] < 0.5 < y[10, 0] < 1 and y[0, 0] == pytest.approx(0) and y[-1, 0] == pytest.approx(1)
    assert basis.smooth_time(step, 0) is not None and np.array_equal(basis.smooth_time(step, 0), step)


# ---- the zip ------------------------------------------------------------------------------------------
def test_build_addon_zip(tmp_path):
    sys.path.insert(0, str(ROOT))
    import build_addon

    path = build_addon.build(tmp_path)
    with zipfile.ZipFile(path) as zf:
        names = zf.namelist()
        reqs = zf.read("bundled/requirements.txt").decode()
        manifest = zf.read("blender_manifest.toml").decode()
    assert "blender_manifest.toml" in names and "__init__.py" in names and "worker_client.py" in names
    assert "bundled/backend/__init__.py" in names and "bundled/backend/worker.py" in names
    assert not [n for n in names if "__pycache__" in n or n.endswith(".pyc")]
    assert not [n for n in names if build_addon.FORBIDDEN.search(n.split("/")[-1])]
    with zipfile.ZipFile(path) as zf:
        zf_torch = zf.read("bundled/torch.txt").decode()
    # torch only in torch.txt, pinned as tools/setup.sh pins it; everything else bounded both ways
    torch = [l for l in zf_torch.splitlines() if l and not l.startswith("#")]
    assert torch == [build_addon.TORCH_PIN] == [backend_env.DEFAULT_TORCH_PIN]
    assert f'"{build_addon.TORCH_PIN}"' in (ROOT / "tools" / "setup.sh").read_text()
    lines = [l for l in reqs.splitlines() if l and not l.startswith("#")]
    assert lines and not [l for l in lines if "torch" in l]
    assert all(">=" in l and "<" in l.split(">=", 1)[1] for l in lines), lines
    assert 'id = "scantalk"' in manifest
    assert not [n for n in names if n.startswith(("tests/", "training/"))]


def test_addon_reads_results_with_the_backends_own_reader(tmp_path, monkeypatch):
    """One reader: blender_addon/result_file.py is backend/result_file.py byte for byte (the
    add-on cannot import the backend package: it runs in Blender, without torch), and the build
    refuses a copy that has drifted."""
    import build_addon

    assert (ROOT / "blender_addon" / "result_file.py").read_bytes() == (ROOT / "backend" / "result_file.py").read_bytes()
    assert "import torch" not in (ROOT / "blender_addon" / "result_file.py").read_text()
    stale = tmp_path / "result_file.py"
    stale.write_text("# stale\n")
    monkeypatch.setitem(build_addon.SHARED_COPIES, "result_file.py", stale)
    with pytest.raises(SystemExit, match="differs from"):
        build_addon.build(tmp_path / "dist")


def test_build_never_bundles_licensed_files():
    import build_addon

    for bad in ["assets/FLAME_sample.ply", "assets/biwi_head.obj", "assets/scantalk_vocaset.pth.tar",
                "assets/official_format_tiny.pth.tar", "assets/x.pth"]:
        assert build_addon.FORBIDDEN.search(bad), bad
    for ok in ["assets/default_model.pt", "assets/demo_head.obj", "worker.py"]:
        assert not build_addon.FORBIDDEN.search(ok), ok


def _venv_leftovers(target: Path) -> list[str]:
    return sorted(p.name for p in target.parent.glob(target.name + "*") if not p.name.endswith("-setup.log"))


def test_setup_task_builds_aside_moves_into_place_and_repair_keeps_it_on_failure(tmp_path):
    """Set up backend, offline: local wheels (faketorch stands in for torch) found through a folder
    with a space, built at <target>.new, moved into place, checked where it lives; the venv does not
    point at the bundle (every Blender version appends its own). A venv still works after a rename
    (the add-on only runs <venv>/python -I ...). A failing repair keeps the working venv."""
    import subprocess

    from tests.setup_helpers import make_bundle, make_wheels

    wheels = make_wheels(tmp_path / "my wheels")
    bundle = make_bundle(tmp_path / "addon")
    target = tmp_path / "user data" / "backend"
    extra = backend_env.split_pip_args(f'--no-index --find-links "{wheels[0].parent}"')
    task = backend_env.SetupTask(sys.executable, str(target), bundle, extra, torch_build="CPU",
                                 upgrade_pip=False).start()
    assert task.join(600) == "DONE", task.message + "\n" + "\n".join(task.log[-30:])
    assert task.fraction == 1.0 and "Backend ready" in task.message and "2.13.0" in task.message
    assert _venv_leftovers(target) == ["backend"]  # no .new / .old
    prog = task.progress
    assert prog.files == {"faketorch", "scantalk-dep"} and prog.n_packages == 2
    assert prog.total_bytes == sum(w.stat().st_size for w in wheels) and prog.fraction() == 1.0
    marker = backend_env.read_marker(target)
    assert marker["torch_build"] == "CPU" and marker["torch"] == "2.13.0"
    log = Path(task.log_path).read_text()
    assert "Successfully installed faketorch-2.13.0" in log and "download.pytorch.org/whl/cpu" in log
    assert "--dry-run" in log and "To install: 2 packages" in log
    be = backend_env.resolve(venv_dir=str(target), bundle_dir=bundle, env={})
    assert be.source == "venv" and be.use_bundle and be.package_dir == str(Path(bundle, "backend").resolve())
    # venvs are not relocatable in general, but `python -I` finds pyvenv.cfg beside itself
    moved = tmp_path / "moved venv"
    target.rename(moved)
    mpy = backend_env.venv_python(moved)
    backend_env.clear_cache()
    info = backend_env.probe(str(mpy), bundle, backend_env.read_requirements(bundle), use_cache=False)
    assert backend_env.usable(info) and info["backend_bundle"] == str(Path(bundle, "backend").resolve())
    out = subprocess.run([str(mpy), "-I", "-c", "import sys, faketorch; print(sys.prefix)"], capture_output=True,
                         text=True)
    assert out.returncode == 0 and out.stdout.strip() == str(moved), out
    moved.rename(target)
    # Repair with a requirement pip cannot find: the venv in place stays as it was
    Path(bundle, "requirements.txt").write_text("surely-not-a-package-xyz==1.0\n")
    task = backend_env.SetupTask(sys.executable, str(target), bundle, extra, upgrade_pip=False).start()
    assert task.join(600) == "ERROR" and "surely-not-a-package-xyz" in task.message
    assert _venv_leftovers(target) == ["backend"] and backend_env.read_marker(target) == marker
    assert backend_env.remove_backend(target) and _venv_leftovers(target) == []


def test_setup_failure_or_cancel_leaves_nothing(tmp_path):
    from tests.setup_helpers import make_bundle, make_wheels

    wheels = make_wheels(tmp_path / "wheels")
    extra = ["--no-index", "--find-links", str(wheels[0].parent)]
    bundle = make_bundle(tmp_path / "addon", reqs=("surely-not-a-package-xyz==1.0",))
    target = tmp_path / "data" / "backend"
    task = backend_env.SetupTask(sys.executable, str(target), bundle, extra, upgrade_pip=False).start()
    assert task.join(600) == "ERROR", task.message
    assert "surely-not-a-package-xyz" in task.message and _venv_leftovers(target) == []
    assert "surely-not-a-package-xyz" in Path(task.log_path).read_text()  # the log stays for reading
    # a cancel while the venv is being made
    task = backend_env.SetupTask(sys.executable, str(target), make_bundle(tmp_path / "ok"), extra,
                                 upgrade_pip=False).start()
    deadline = time.time() + 120
    while not task.new_dir.exists() and task.state == "RUNNING" and time.time() < deadline:
        time.sleep(0.02)
    task.cancel()
    assert task.join(120) == "CANCELLED" and "nothing was changed" in task.message
    assert _venv_leftovers(target) == []


def test_torch_pip_args_per_platform_and_build():
    pin = "torch==2.13.0"
    cpu, cu = "https://download.pytorch.org/whl/cpu", "https://download.pytorch.org/whl/cu128"
    assert backend_env.torch_args("CPU", pin, "linux") == [pin, "--index-url", cpu]
    assert backend_env.torch_args("CU128", pin, "linux") == [pin, "--index-url", cu]
    assert backend_env.torch_args("CPU", pin, "win32") == [pin]  # PyPI's Windows wheel is the CPU build
    assert backend_env.torch_args("CU126", pin, "win32") == [pin, "--index-url", "https://download.pytorch.org/whl/cu126"]
    assert backend_env.torch_args("CPU", pin, "darwin") == [pin]  # CPU + MPS
    with pytest.raises(ValueError, match="macOS"):
        backend_env.torch_args("CU128", pin, "darwin")
    with pytest.raises(ValueError):
        backend_env.torch_args("CU999", pin, "linux")
    extra = backend_env.split_pip_args(r'--find-links "C:\Users\Jo Smith\wheels" --no-index', windows=True)
    argv = backend_env.pip_argv(r"C:\B\backend\Scripts\python.exe", backend_env.torch_args("CU128", pin, "win32"), extra,
                                raw_progress=True)
    assert argv == [r"C:\B\backend\Scripts\python.exe", "-I", "-m", "pip", "install", "--disable-pip-version-check",
                    "--no-input", "--progress-bar", "raw", pin, "--index-url", cu,
                    "--find-links", r"C:\Users\Jo Smith\wheels", "--no-index"]
    dry = backend_env.pip_argv("py", ["numpy>=1.24,<3"], [], report="r.json")
    assert dry[dry.index("--progress-bar") + 1] == "off" and dry[-4:] == ["--dry-run", "--report", "r.json", "numpy>=1.24,<3"]
    assert backend_env.works_offline(extra) and not backend_env.works_offline([])


def test_extra_pip_args_keep_windows_paths():
    split = backend_env.split_pip_args
    assert split(r'--no-index --find-links "C:\Program Files\My Wheels\" -v', windows=True) == \
        ["--no-index", "--find-links", "C:\\Program Files\\My Wheels\\", "-v"]
    assert split(r"--find-links=D:\wheels\torch --cert C:\certs\corp.pem", windows=True) == \
        [r"--find-links=D:\wheels\torch", "--cert", r"C:\certs\corp.pem"]
    assert split(r'--find-links "/home/jo/my wheels" --index-url https://m.example/simple', windows=False) == \
        ["--find-links", "/home/jo/my wheels", "--index-url", "https://m.example/simple"]
    assert split("  ", windows=True) == [] and split("", windows=False) == []
    with pytest.raises(ValueError):
        split('--find-links "C:\\x', windows=True)
    with pytest.raises(ValueError):
        split('--find-links "/x', windows=False)


def test_one_backend_dir_per_user_outside_blender():
    d = backend_env.default_backend_dir
    assert d({}, "linux", "/home/jo") == "/home/jo/.local/share/scantalk-blender/backend"
    assert d({"XDG_DATA_HOME": "/data/jo"}, "linux", "/home/jo") == "/data/jo/scantalk-blender/backend"
    assert d({}, "darwin", "/Users/jo") == "/Users/jo/Library/Application Support/scantalk-blender/backend"
    win = d({"LOCALAPPDATA": r"C:\Users\Jo Smith\AppData\Local"}, "win32", r"C:\Users\Jo Smith")
    assert win.replace("\\", "/") == "C:/Users/Jo Smith/AppData/Local/scantalk-blender/backend"
    assert d({backend_env.BACKEND_DIR_VAR: "/tmp/st"}, "linux", "/home/jo") == "/tmp/st"
    assert backend_env.setup_log_path("/a/backend") == "/a/backend-setup.log"


def test_suggest_cuda_build_from_nvidia_smi():
    smi = lambda name: "/usr/bin/nvidia-smi" if name == "nvidia-smi" else None  # noqa: E731
    out = lambda ver: (lambda argv: f"| NVIDIA-SMI 570.1   Driver Version: 570.1   CUDA Version: {ver}  |")  # noqa: E731
    sb = backend_env.suggest_build
    assert sb("linux", which=lambda n: None)[0] == "CPU"
    assert sb("linux", which=smi, run=out("12.8"))[0] == "CU128"
    assert sb("win32", which=smi, run=out("12.6"))[0] == "CU126"
    assert sb("linux", which=smi, run=out("13.2"))[0] == "CU130"
    assert sb("linux", which=smi, run=out("11.8"))[0] == "CPU"  # driver too old: says so
    assert sb("linux", which=smi, run=lambda argv: "garbage")[0] == backend_env.DEFAULT_CUDA_BUILD
    assert sb("darwin", which=smi)[0] == "CPU"


def test_pip_progress_counts_bytes_and_packages():
    exp = [{"name": "torch", "size": 900_000_000}, {"name": "numpy", "size": 16_000_000},
           {"name": "sympy", "size": None}]
    p = backend_env.PipProgress(exp)
    assert p.total_bytes == 916_000_000 and p.n_packages == 3
    lines = ["Collecting torch==2.13.0",
             "  Downloading https://download.pytorch.org/whl/cpu/torch-2.13.0%2Bcpu-cp311-cp311-manylinux_2_28_x86_64.whl (900.0 MB)",
             "Progress 0 of 900000000", "Progress 450000000 of 900000000"]
    for line in lines:
        p.feed(line)
    assert p.bytes_seen == 450_000_000 and 0.45 < p.fraction() < 0.5
    assert "Downloading torch 450.0 MB of 900.0 MB" in p.text() and "package 1 of 3" in p.text()
    assert not p.feed("Downloading sympy-1.13.0-py3-none-any.whl.metadata (12 kB)")  # not the package
    p.feed("  Downloading sympy-1.13.0-py3-none-any.whl (6.2 MB)")  # pip 23 (no raw): torch is done
    assert p.done_bytes == 900_000_000 and p.total_bytes == 922_200_000
    p.feed("  Using cached numpy-2.1.0-cp311-cp311-manylinux_2_17_x86_64.whl (16.0 MB)")
    p.feed("Installing collected packages: sympy, numpy, torch")
    assert p.text().startswith("Installing 3 packages") and p.fraction() == 1.0
    p.feed("Successfully installed numpy-2.1.0 sympy-1.13.0 torch-2.13.0+cpu")
    assert p.installed == ["numpy-2.1.0", "sympy-1.13.0", "torch-2.13.0+cpu"] and not p.installing
    assert backend_env.parse_size("(512 bytes)") == 512 and backend_env.parse_size("(1.5 GB)") == 1_500_000_000
    assert backend_env.dist_name("robust_laplacian-1.1.0-cp311-cp311-win_amd64.whl") == "robust-laplacian"
    assert backend_env.dist_name("plyfile-1.1.tar.gz") == "plyfile"
    rep = {"install": [{"metadata": {"name": "Robust_Laplacian", "version": "1.1.0"},
                        "download_info": {"url": "https://files.example/robust_laplacian-1.1.0.whl"}}]}
    assert backend_env.report_packages(rep) == [{"name": "robust-laplacian", "version": "1.1.0",
                                                 "url": "https://files.example/robust_laplacian-1.1.0.whl"}]


# ---- results that fit an animator's workflow (no bpy) ------------------------------------------------
def test_esc_cancels_only_over_our_panel():
    panels = [(1500, 40, 300, 900)]  # a 3D View sidebar showing the ScanTalk tab
    assert jobmod.esc_cancels((1600, 500), panels)
    assert not jobmod.esc_cancels((800, 500), panels)  # over the viewport: Esc stops playback
    assert not jobmod.esc_cancels((1600, 500), [])  # no sidebar on our tab


@pytest.mark.parametrize("mode", ["COMPACT", "EXACT"])
def test_plan_keys_all_weights_in_0_1_and_rebuild_the_offsets(mode):
    rng = np.random.default_rng(0)
    T, V = 40, 50
    t = np.arange(T)[:, None]
    modes = rng.standard_normal((3, V * 3)).astype(np.float32)
    D = (np.sin(t * [0.2, 0.31, 0.47]) @ modes * 1e-3).astype(np.float32)  # weights of both signs
    plan = basis.plan_result(D.reshape(T, V, 3), 7, mode=mode, max_error=1e-6)
    rebuilt = np.zeros((T, V * 3), np.float64)
    for i in range(len(plan.names)):
        frames, vals = plan.curve(i)
        assert vals.min() >= 0.0 and vals.max() <= 1.0  # importers that clamp weights keep the motion
        assert vals[0] == 0 and vals[-1] == 0  # neutral on the frames either side of the clip
        assert frames[0] == (6 if mode == "COMPACT" else 6 + i)
        for f, v in zip(frames, vals):
            if 7 <= f < 7 + T:
                rebuilt[int(f) - 7] += v * plan.shapes[i]
    err = np.linalg.norm((rebuilt - D).reshape(T, V, 3), axis=2).max()
    assert err <= max(plan.max_error, 1e-7) + 1e-6
    if mode == "COMPACT":
        assert plan.names[-1] == "bias" and plan.basis_size == 3 and len(plan.names) == 4


def test_cancel_requests_do_not_stay_pending(fake_worker):
    c = fake_worker()
    req = c.request("animate", audio="slow")
    c.cancel(req.id)
    with pytest.raises(WorkerCancelled):
        req.wait(timeout=20)
    time.sleep(0.2)
    assert not c._pending  # neither the animate nor the cancel is left waiting
    assert not hasattr(c, "stray_stdout")


def test_prefs_and_runtime_do_not_import_each_other():
    src = (ROOT / "blender_addon" / "runtime.py").read_text()
    assert "prefs" not in src.replace("preference", "")
    for name in ("pipeline.py", "runtime.py", "writeback.py", "job.py"):
        assert "prefs.get(" not in (ROOT / "blender_addon" / name).read_text(), name


def test_smooth_frames_reads_a_window_and_equals_smoothing_the_clip():
    x = np.random.default_rng(3).standard_normal((50, 4)).astype(np.float32)
    reads = []

    def read(a, b):
        reads.append((a, b))
        return x[a:b]

    whole = basis.smooth_time(x, 1.7)
    for a, b in [(0, 7), (7, 30), (30, 50), (49, 50)]:
        assert np.allclose(basis.smooth_frames(read, 50, a, b, 1.7), whole[a:b], atol=1e-6)
    assert max(b - a for a, b in reads) <= 23 + 2 * 6  # the block and the kernel's reach either side


def test_plan_from_the_backends_weights_keys_0_1_and_rebuilds_them():
    rng = np.random.default_rng(4)
    W = rng.standard_normal((30, 3)).astype(np.float32)
    W[:, 2] = np.abs(W[:, 2])  # a weight that is never negative needs no bias
    B = rng.standard_normal((3, 60)).astype(np.float32)
    plan = basis.plan_from_weights(W, B, 5, max_error=1e-5)
    assert plan.names[-1] == "bias" and plan.basis_size == 3 and plan.max_error == 1e-5
    assert plan.weights.min() >= 0 and plan.weights.max() <= 1
    assert np.allclose(plan.weights @ plan.shapes, W @ B, atol=1e-5)
    with pytest.raises(basis.PlanError, match="NaN"):
        basis.plan_from_weights(W * np.nan, B, 5, 0.0)


def test_exact_size_estimate_warns_then_refuses():
    from blender_addon import estimate

    assert estimate.exact_check(300, 50_000, 16 << 30) == ("", "")
    level, text = estimate.exact_check(1800, 50_000, 16 << 30)  # 60 s at 30 fps: 1.08 GB
    assert level == "WARNING" and "1.1 GB" in text and "Compact mode stores" in text
    level, text = estimate.exact_check(18_000, 50_000, 16 << 30)  # 10 min: 10.8 GB of keys
    assert level == "ERROR" and "10.8 GB" in text and "Use Compact" in text
    assert estimate.physical_memory() is None or estimate.physical_memory() > 1 << 28


def test_result_that_cannot_fit_on_the_temp_disk_is_refused_before_the_job(tmp_path):
    from blender_addon import estimate

    assert estimate.disk_check(18_000, 50_000, str(tmp_path), free=20 << 30) == ""  # 10.8 GB fits in 20 GB
    text = estimate.disk_check(18_000, 50_000, str(tmp_path), free=5 << 30)
    assert "10.8 GB" in text and "5.4 GB free" in text and str(tmp_path) in text and "TMPDIR" in text
    assert estimate.disk_check(300, 5_000, str(tmp_path)) == ""  # this disk, 18 MB
