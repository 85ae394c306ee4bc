"""The rig solver (backend/rig_solve.py): numpy/scipy only, no torch, no bpy."""
from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from backend import rig_solve as rs
from backend.errors import BadRequest

ROOT = Path(__file__).resolve().parents[1]
ICT = ROOT.parent / "shared" / "data" / "ict_facekit" / "ict_facekit_face_head_neck.npz"
MOUTH = ["jawOpen", "mouthClose", "mouthFunnel", "mouthPucker", "mouthSmile_L", "mouthSmile_R",
         "mouthLowerDown_L", "mouthLowerDown_R", "mouthUpperUp_L", "mouthUpperUp_R", "mouthStretch_L",
         "mouthRollLower", "mouthPress_L", "jawLeft", "eyeBlink_L", "browInnerUp_L"]


@pytest.fixture(scope="module")
def ict():
    if not ICT.exists():
        pytest.skip("ICT FaceKit data not available")
    with np.load(ICT) as d:
        names = [str(n) for n in d["expression_names"]]
        deltas = (d["expression_deltas"] / 100.0).astype(np.float32)  # cm -> m
    return names, deltas


def speech_like_weights(names, T, seed=0, keys=MOUTH):
    """Smooth random weights in [0, 1] on a few keys (2-4 Hz content, rests at 0), the rest 0."""
    rng = np.random.default_rng(seed)
    W = np.zeros((T, len(names)), np.float32)
    t = np.arange(T) / 30.0
    for k in [names.index(n) for n in keys]:
        w = sum(rng.uniform(0.2, 0.5) * np.sin(2 * np.pi * rng.uniform(0.3, 3.0) * t + rng.uniform(0, 6.3))
                for _ in range(3))
        W[:, k] = np.clip(w, 0, 1)
    return W


def test_recovers_weights_within_005(ict):
    names, deltas = ict
    W = speech_like_weights(names, 150)
    off = np.einsum("tk,kvc->tvc", W, deltas)
    fit = rs.solve(off, rs.RigKeys(names, deltas, None), metres_per_unit=1.0)
    err = np.abs(fit.weights - W)
    assert err.max() < 0.05, (names[int(err.max(0).argmax())], err.max())
    assert fit.report["lips_mean_mm"] < 0.05 and fit.report["lips_explained"] > 0.999
    assert fit.weights.min() >= 0 and fit.weights.max() <= 1


def test_weights_stay_in_slider_ranges(ict):
    names, deltas = ict
    W = speech_like_weights(names, 60, seed=1) * 2.0  # asks for up to 2, beyond the sliders
    off = np.einsum("tk,kvc->tvc", W, deltas)
    ranges = np.tile(np.array([0.0, 1.0], np.float32), (len(names), 1))
    ranges[names.index("jawOpen")] = [0.1, 0.6]
    ranges[names.index("mouthFunnel")] = [-0.5, 1.5]
    fit = rs.solve(off, rs.RigKeys(names, deltas, ranges))
    assert np.all(fit.weights >= ranges[:, 0] - 1e-7) and np.all(fit.weights <= ranges[:, 1] + 1e-7)
    j = names.index("jawOpen")
    assert fit.weights[:, j].max() == pytest.approx(0.6, abs=1e-6)  # clipped, not wrapped


def test_rig_without_mouth_keys_gets_the_message(ict):
    names, deltas = ict
    W = speech_like_weights(names, 60, seed=2)
    off = np.einsum("tk,kvc->tvc", W, deltas)
    upper = [i for i, n in enumerate(names) if n.startswith(("eye", "brow"))]
    keys = rs.RigKeys([names[i] for i in upper], deltas[upper], None)
    with pytest.raises(rs.RigError, match="cannot express the mouth motion"):
        rs.solve(off, keys)
    fit = rs.solve(off, keys, min_explained=None)  # asked not to check: the (bad) fit is reported
    assert fit.report["lips_explained"] < 0.5


def test_silence_gives_zero_weights(ict):
    names, deltas = ict
    fit = rs.solve(np.zeros((20,) + deltas.shape[1:], np.float32), rs.RigKeys(names, deltas, None))
    assert np.abs(fit.weights).max() < 1e-6


def test_given_lip_mask_and_units(ict):
    names, deltas = ict
    W = speech_like_weights(names, 30, seed=3)
    off = np.einsum("tk,kvc->tvc", W, deltas) + 0.0005  # 0.87 mm of error everywhere
    lips = np.arange(100)
    fit = rs.solve(off, rs.RigKeys(names, deltas, None, lips=lips), metres_per_unit=1.0)
    assert fit.report["lips_from"] == "given" and fit.report["lip_vertices"] == 100
    # the keys absorb part of the constant shift: the error is at most the shift itself
    assert 0.1 < fit.report["face_mean_mm"] <= np.sqrt(3) * 0.5 + 1e-3


def test_arkit_names():
    assert rs.normalize_name("eyeBlink_L") == rs.normalize_name("EyeBlinkLeft") == "eyeblinkleft"
    assert rs.normalize_name("ARKit.jawOpen") == "jawopen"
    cols = rs.arkit_columns(["jawOpen", "browInnerUp_L", "browInnerUp_R", "mouthSmile_R", "Basis", "smile"])
    assert cols["jawOpen"] == [0] and cols["browInnerUp"] == [1, 2] and cols["mouthSmileRight"] == [3]
    assert rs.arkit_keys(["smile", "JawOpen", "x"]) == [1]
    assert len(rs.ARKIT_52) == 52 and len(rs.LIVE_LINK_HEADER) == 63


def test_live_link_csv_round_trip():
    names = ["jawOpen", "browInnerUp_L", "browInnerUp_R", "eyeBlinkLeft", "custom"]
    W = np.random.default_rng(0).random((40, 5)).astype(np.float32)
    text = rs.live_link_csv(names, W, fps=30.0)
    lines = text.splitlines()
    assert lines[0].startswith("Timecode,BlendShapeCount,EyeBlinkLeft,EyeLookDownLeft,")
    assert lines[0].endswith("TongueOut,HeadYaw,HeadPitch,HeadRoll,LeftEyeYaw,LeftEyePitch,LeftEyeRoll,"
                             "RightEyeYaw,RightEyePitch,RightEyeRoll")
    assert lines[1].startswith("00:00:00:00.000,61,") and lines[31].startswith("00:00:01:00.000,61,")
    arkit, A = rs.read_live_link_csv(text)
    assert A.shape == (40, 52)
    np.testing.assert_allclose(A[:, arkit.index("jawOpen")], W[:, 0], atol=1e-5)
    np.testing.assert_allclose(A[:, arkit.index("browInnerUp")], W[:, 1:3].mean(1), atol=1e-5)
    np.testing.assert_allclose(A[:, arkit.index("eyeBlinkLeft")], W[:, 3], atol=1e-5)
    doc = json.loads(rs.weights_json(names, W, 30.0, start_frame=5))
    assert doc["names"] == names and doc["start_frame"] == 5
    np.testing.assert_allclose(np.array(doc["weights"]), W, atol=1e-6)


def test_result_file_round_trip(ict, tmp_path):
    names, deltas = ict
    W = speech_like_weights(names, 50, seed=4)
    off = np.einsum("tk,kvc->tvc", W, deltas).astype(np.float32)
    res = tmp_path / "result.npz"
    np.savez(res, offsets=off, fps=np.float64(25.0), meta=np.array(json.dumps({"frame": {"units": "m", "scale": 1.0}})))
    keys = tmp_path / "keys.npz"
    rs.save_keys(keys, rs.RigKeys(names, deltas, None))
    fit = rs.solve_result_file(res, keys, csv_path=tmp_path / "w.csv", json_path=tmp_path / "w.json")
    back = rs.read_from_result(res)
    np.testing.assert_array_equal(back.weights, fit.weights)
    assert back.names == names and back.report["fps"] == 25.0
    with np.load(res) as d:  # the offsets are untouched and still first
        np.testing.assert_array_equal(d["offsets"], off)
    assert (tmp_path / "w.csv").read_text().count("\n") == 51
    assert json.loads((tmp_path / "w.json").read_text())["fit"]["frames"] == 50
    with pytest.raises(rs.RigError, match="already holds"):
        rs.append_to_result(res, fit)


def test_result_of_a_head_given_as_is_at_twice_life_size(ict, tmp_path):
    """normalize=none, head_scale 2: the fit's millimetres are the head's units over 2."""
    names, deltas = ict
    off = np.einsum("tk,kvc->tvc", speech_like_weights(names, 20, seed=5), deltas).astype(np.float32)
    res = tmp_path / "result.npz"
    np.savez(res, offsets=off, fps=np.float64(25.0),
             meta=np.array(json.dumps({"frame": {"units": "as-is", "scale": 0.5, "head_scale": 2.0}})))
    keys = tmp_path / "keys.npz"
    rs.save_keys(keys, rs.RigKeys(names, deltas, None))
    assert rs.solve_result_file(res, keys).report["metres_per_unit"] == 0.5


def test_rig_options_validation(tmp_path):
    assert rs.rig_options(None) is None
    o = rs.rig_options({"keys": "/k.npz"})
    assert o["smooth"] == rs.DEFAULT_SMOOTH and o["min_explained"] == rs.MIN_EXPLAINED
    for bad in ({"keys": "/k.npz", "smooth": -1}, {"smooth": 1}, {"keys": "/k.npz", "colour": 1}, "k.npz"):
        with pytest.raises(BadRequest):
            rs.rig_options(bad)
    np.savez(tmp_path / "bad.npz", names=np.array(["a", "b"]), deltas=np.zeros((3, 4, 3), np.float32))
    with pytest.raises(rs.RigError, match="shape"):
        rs.load_keys(tmp_path / "bad.npz")


def test_no_torch_import():
    code = "import sys, backend.rig_solve; assert 'torch' not in sys.modules and 'bpy' not in sys.modules"
    subprocess.run([sys.executable, "-c", code], check=True, cwd=ROOT)


def test_dct_matches_scipy():
    fft = pytest.importorskip("scipy.fft")
    for n in (1, 2, 7, 64, 301):
        x = np.random.default_rng(n).standard_normal((n, 5))
        np.testing.assert_allclose(rs._dct(x), fft.dct(x, type=2, axis=0, norm="ortho"), atol=1e-12)
        np.testing.assert_allclose(rs._idct(rs._dct(x)), x, atol=1e-12)


def test_addon_copy_of_the_arkit_table_agrees():
    import importlib.util

    spec = importlib.util.spec_from_file_location("st_rig_copy", ROOT / "blender_addon" / "rig.py")
    m = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = m  # dataclasses look their module up
    spec.loader.exec_module(m)  # no bpy at import
    assert m.ARKIT_52 == rs.ARKIT_52 and m.LIVE_LINK_HEADER == rs.LIVE_LINK_HEADER
    names = ["jawOpen", "browInnerUp_L", "browInnerUp_R", "EyeBlinkLeft", "mouth_smile_l", "other"]
    assert m.arkit_columns(names) == rs.arkit_columns(names)
    W = np.random.default_rng(1).random((7, len(names))).astype(np.float32)
    assert m.live_link_csv(names, W, 24.0, 3) == rs.live_link_csv(names, W, 24.0, 3)


def test_offsets_are_not_modified(ict):
    names, deltas = ict
    off = np.einsum("tk,kvc->tvc", speech_like_weights(names, 10, seed=5), deltas).astype(np.float32)
    before = off.copy()
    rs.solve(off, rs.RigKeys(names, deltas, None), scale=0.5, min_explained=None)
    np.testing.assert_array_equal(off, before)
