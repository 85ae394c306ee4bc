"""Compact in the backend (backend/compact.py): the basis of a result file computed chunk by
chunk keeps every vertex of every frame within the max error, with strength and smoothing, and
says so honestly when k_max is not enough."""
import json

import numpy as np
import pytest

from backend.compact import compact_result_file, smooth_time
from backend.errors import Cancelled
from backend.result_file import ResultWriter, open_result


def speechlike(T=700, V=400, rank=6, noise=2e-6, seed=0):
    """Smooth modes with smooth weights of both signs, a constant part and a little noise (m)."""
    rng = np.random.default_rng(seed)
    modes = rng.standard_normal((rank, V, 3)).astype(np.float32) * 1e-3
    t = np.arange(T)[:, None]
    w = np.sin(t * (0.05 + 0.031 * np.arange(rank)) + rng.uniform(0, 6, rank)).astype(np.float32)
    off = np.einsum("tk,kvc->tvc", w, modes) + 3e-4
    return (off + noise * rng.standard_normal(off.shape)).astype(np.float32)


def write(path, off, units="m", scale=1.0):
    w = ResultWriter(path, len(off), off.shape[1])
    for a in range(0, len(off), 50):
        w.write(off[a:a + 50])
    return w.finish(30.0, {"frame": {"units": units, "scale": scale}})


def vertex_error(target, weights, basis):
    rec = np.einsum("tk,kvc->tvc", weights.astype(np.float64), basis.astype(np.float64))
    return float(np.linalg.norm(rec - target, axis=2).max())


def read(path):
    with open_result(path) as r:
        return r.array("compact_weights"), r.array("compact_basis"), json.loads(str(r.array("compact_report")))


@pytest.mark.parametrize("chunk_bytes", [10_000, 2**26])  # many chunks (a dozen frames) and one
def test_every_vertex_of_every_frame_within_max_error(tmp_path, chunk_bytes):
    off = speechlike()
    path = write(tmp_path / "r.npz", off)
    rep = compact_result_file(path, max_error_mm=0.02, k_max=64, device="cpu", chunk_bytes=chunk_bytes)
    W, B, stored = read(path)
    assert stored == rep and rep["reached"] and W.shape == (700, rep["k"]) and B.shape == (rep["k"], 400, 3)
    err = vertex_error(off, W, B)
    assert err <= 2e-5 and err <= rep["max_error"] * (1 + 1e-4) + 1e-9
    assert 7 <= rep["k"] <= 30  # rank 6 + the constant; the noise may need a few more
    with np.load(path) as z:  # the documented offsets are untouched
        assert np.array_equal(z["offsets"], off)


def test_units_strength_and_smoothing_are_applied_consistently(tmp_path):
    off = speechlike(T=300, seed=1) * 10  # centimetres: 0.05 mm is 0.005 units
    path = write(tmp_path / "r.npz", off, units="cm", scale=0.01)
    rep = compact_result_file(path, max_error_mm=0.05, strength=0.6, smoothing=2.0, device="cpu", chunk_bytes=40_000)
    W, B, _ = read(path)
    assert rep["tolerance"] == pytest.approx(0.005) and rep["metres_per_unit"] == 0.01
    exact = smooth_time((0.6 * off).reshape(300, -1), 2.0).reshape(off.shape)  # what Exact shows
    assert vertex_error(exact, W, B) <= 0.005


def test_tolerance_follows_a_head_scale_given_as_is(tmp_path):
    """normalize=none with head_scale 2: the result is in the mesh's units at 2x life size, so
    0.05 mm at life size is 0.1 mm on the head."""
    off = speechlike(T=100, seed=3) * 2
    rep = compact_result_file(write(tmp_path / "r.npz", off, units="as-is", scale=0.5), max_error_mm=0.05,
                              device="cpu")
    W, B, _ = read(tmp_path / "r.npz")
    assert rep["metres_per_unit"] == 0.5 and rep["tolerance"] == pytest.approx(1e-4)
    assert vertex_error(off, W, B) <= 1e-4


def test_k_max_too_small_reports_the_real_error(tmp_path):
    off = speechlike(T=200, rank=10, seed=2)
    path = write(tmp_path / "r.npz", off)
    rep = compact_result_file(path, max_error_mm=1e-6, k_max=3, device="cpu", chunk_bytes=30_000)
    W, B, _ = read(path)
    assert rep["k"] == 3 and not rep["reached"]
    assert rep["max_error"] == pytest.approx(vertex_error(off, W, B), rel=1e-3)


def test_still_face_and_cancel(tmp_path):
    path = write(tmp_path / "z.npz", np.zeros((20, 30, 3), np.float32))
    rep = compact_result_file(path, device="cpu")
    W, B, _ = read(path)
    assert rep["k"] == 0 and W.shape == (20, 0) and B.shape == (0, 30, 3) and rep["reached"]
    path = write(tmp_path / "c.npz", speechlike(T=100))
    with pytest.raises(Cancelled):
        compact_result_file(path, device="cpu", cancel=lambda: True)
    with open_result(path) as r:
        assert not r.has("compact_weights")


# ---- through the worker and the CLI ------------------------------------------------------------------
import os  # noqa: E402
import subprocess  # noqa: E402
import sys  # noqa: E402

from backend.errors import BadRequest  # noqa: E402
from backend.options import compact_options  # noqa: E402
from tests.conftest import ROOT  # noqa: E402
from tests.meshes import icosphere  # noqa: E402

DEMO_VOICE = ROOT / "backend" / "assets" / "demo_voice.wav"


@pytest.mark.parametrize("value, msg", [
    ({"max_error_mm": 0}, "greater than 0"), ({"max_error_mm": "nan"}, "finite"), ({"k_max": 0}, "at least 1"),
    ({"k_max": 2.5}, "whole number"), ({"strength": -1}, "at least 0"), ({"smoothing": 1e9}, "at most 100"),
    ({"colour": 1}, "unknown field"), ("0.1", "must be an object")])
def test_compact_options_refuse_bad_values(value, msg):
    with pytest.raises(BadRequest, match=msg):
        compact_options(value)


def test_compact_options_defaults():
    assert compact_options({}) == {"max_error_mm": 0.1, "k_max": 64, "strength": 1.0, "smoothing": 0.0,
                                   "metres_per_unit": None}
    assert compact_options(None) is None


def test_worker_appends_a_basis_within_max_error(tmp_path):
    """A real worker subprocess, the bundled model, a real clip: the result event carries the
    report and the file the basis, within max error of the offsets on every vertex and frame."""
    if not (ROOT / "backend" / "assets" / "default_model.pt").is_file():
        pytest.skip("no bundled default model")
    v, f = icosphere(3, radius=0.09)
    np.savez(tmp_path / "m.npz", vertices=v, faces=f)
    env = dict(os.environ, SCANTALK_CACHE_DIR=str(tmp_path / "cache"), PYTHONPATH=str(ROOT), OMP_NUM_THREADS="1")
    p = subprocess.Popen([sys.executable, "-m", "backend", "serve"], env=env, text=True, stdin=subprocess.PIPE,
                         stdout=subprocess.PIPE, stderr=subprocess.DEVNULL)
    try:
        assert json.loads(p.stdout.readline())["event"] == "ready"

        def call(rid, **req):
            p.stdin.write(json.dumps({"id": rid, "cmd": "animate", "mesh": str(tmp_path / "m.npz"),
                                      "audio": str(DEMO_VOICE), "device": "cpu", **req}) + "\n")
            p.stdin.flush()
            stages = []
            while True:
                ev = json.loads(p.stdout.readline())
                if ev.get("id") == rid and ev["event"] == "progress":
                    stages.append(ev["stage"])
                if ev.get("id") == rid and ev["event"] in ("result", "error", "cancelled"):
                    return ev, stages

        ev, _ = call("bad", out=str(tmp_path / "b.npz"), compact={"max_error_mm": -1})
        assert ev["event"] == "error" and ev["code"] == "bad_request" and "compact.max_error_mm" in ev["message"]
        ev, stages = call("a", out=str(tmp_path / "a.npz"), duration=3.0, fps=24,
                          compact={"max_error_mm": 0.05, "strength": 0.8})
        assert ev["event"] == "result", ev
        rep = ev["compact"]
        assert "compact" in stages and rep["reached"] and rep["metres_per_unit"] == 1.0 and rep["k"] >= 1
        W, B, stored = read(ev["out"])
        assert stored == rep
        with np.load(ev["out"]) as z:
            off = z["offsets"]
        assert W.shape == (len(off), rep["k"]) and B.shape == (rep["k"], len(v), 3)
        assert vertex_error(0.8 * off, W, B) <= 0.05e-3 + 1e-9
        p.stdin.write(json.dumps({"id": "s", "cmd": "shutdown"}) + "\n")
        p.stdin.flush()
        assert p.wait(timeout=60) == 0
    finally:
        if p.poll() is None:
            p.kill()


@pytest.mark.parametrize("args, msg", [(["--compact-k-max", "5"], "need --compact"),
                                       (["--compact", "0"], "compact.max_error_mm must be greater than 0"),
                                       (["--compact", "0.1", "--compact-k-max", "9999"], "at most 512")])
def test_cli_refuses_bad_compact_options_with_exit_code_2(tmp_path, args, msg):
    p = subprocess.run([sys.executable, "-m", "backend", "animate", "--mesh", "m.obj", "--audio", "a.wav",
                        "--out", str(tmp_path / "o.npz"), *args], capture_output=True, text=True, cwd=ROOT,
                       env=dict(os.environ, PYTHONPATH=str(ROOT)))
    assert p.returncode == 2 and msg in p.stderr, p.stderr
