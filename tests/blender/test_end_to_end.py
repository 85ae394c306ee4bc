"""End to end through the real backend subprocess (python -m backend serve), the add-on installed
from its zip: a head (FLAME_sample from ../shared, else the project's demo head) rotated into
Blender's Z-up and placed anywhere, with the user's own shape keys; a sound strip starting at a
non-1 frame, trimmed, in a 24 fps scene (5.0; bpy 4.2's wheel has no audio, so there an audio
file starts the clip at the scene's start frame).

The reference is the backend asked directly for the same part of the audio at the same fps, on
the same mesh mapped to y-up/+z by hand here (not by the add-on's code): frame f must show the
user's mix + those offsets (Exact) or be within the max error (Compact), on the right frames.
"""
import importlib
import os
import tempfile

import numpy as np
import pytest

bpy = pytest.importorskip("bpy", reason="bpy is not importable: run these tests with a bpy venv's python")

from tests.blender import helpers as H  # noqa: E402
from tests.blender.conftest import PKG  # noqa: E402
from tests.blender.test_fbx import fbx_roundtrip  # noqa: E402

pytestmark = pytest.mark.slow
WAV = H.voice()  # ../shared's 3 s clip, else the project's demo voice


@pytest.fixture
def e2e(scene, addon, backend):
    py, ckpt = backend
    if WAV is None:
        pytest.skip("no speech file (../shared or backend/assets/demo_voice.wav)")
    prefs = bpy.context.preferences.addons[PKG].preferences
    prefs.python_path = py  # the preferences' interpreter: first in the discovery order
    prefs.device = "cpu"
    yield ckpt
    prefs.python_path, prefs.device = "", "auto"


def reference_offsets(obj, audio_start, duration, fps, ckpt):
    """The backend's offsets for this object's base mesh, asked directly, mapped to local space."""
    wc = importlib.import_module(PKG + ".worker_client")
    rt = importlib.import_module(PKG + ".runtime")
    be = rt.discover()
    me = obj.data
    co = np.empty(len(me.vertices) * 3, np.float32)
    me.shape_keys.reference_key.data.foreach_get("co", co) if me.shape_keys else me.vertices.foreach_get("co", co)
    co = co.reshape(-1, 3).astype(np.float64)
    model = np.stack([co[:, 0], co[:, 2], -co[:, 1]], axis=1)  # Blender Z-up/-Y front -> y-up/+z front
    me.calc_loop_triangles()
    faces = np.array([tuple(t.vertices) for t in me.loop_triangles], dtype=np.int64)
    tmp = tempfile.mkdtemp(prefix="scantalk_ref_")
    np.savez(os.path.join(tmp, "m.npz"), vertices=model, faces=faces)
    client = be.start_worker("--cache-dir", rt.cache_dir())
    try:
        res = client.call("animate", timeout=600, mesh=os.path.join(tmp, "m.npz"), audio=str(WAV),
                          out=os.path.join(tmp, "r.npz"), checkpoint=ckpt or None, fps=fps, start=audio_start,
                          duration=duration, device="cpu", normalize="auto")
    finally:
        client.close()
    off = np.load(res["out"])["offsets"].astype(np.float64)
    return np.stack([off[..., 0], -off[..., 2], off[..., 1]], axis=-1)  # back to Z-up local


def placed_head():
    obj = H.test_head("Head")
    obj.location, obj.rotation_euler, obj.scale = (0.3, -2.0, 1.2), (0.0, 0.0, 0.45), (3.0, 3.0, 3.0)
    before = H.add_user_keys(obj)
    return obj, before


def check_motion(obj, before_eval, ref, first, tol):
    T = ref.shape[0]
    worst = 0.0
    for i in range(T):
        d = H.evaluated(obj, first + i) - before_eval[first + i]
        worst = max(worst, float(np.linalg.norm(d - ref[i], axis=1).max()))
    for f in (first - 1, first + T):  # neutral (the user's own animation only) either side
        assert np.abs(H.evaluated(obj, f) - before_eval[f]).max() < 1e-6, f
    assert worst <= tol, (worst, tol)
    return worst


def strip_scene(scene):
    strips = H.sound_strips_collection(scene)
    decoy = strips.new_sound("decoy", str(WAV), channel=1, frame_start=1)
    decoy.mute = True  # muted: must not be chosen
    s = strips.new_sound("voice", str(WAV), channel=2, frame_start=17)
    s.frame_offset_start = 5
    s.frame_offset_end = 6
    first, last = s.frame_final_start, s.frame_final_end
    return first, (first - 17) / 24.0, (last - first) / 24.0


@pytest.mark.skipif(not H.HAS_AUDIO, reason="bpy 4.2's wheel has no audio: covered by the audio-file test")
@pytest.mark.parametrize("mode", ["EXACT", "COMPACT"])
def test_strip_end_to_end(e2e, scene, mode, tmp_path):
    obj, before = placed_head()
    first, audio_start, duration = strip_scene(scene)
    assert first == 22
    frames = range(first - 1, first + int(duration * 24) + 2)
    before_eval = {f: H.evaluated(obj, f) for f in frames}

    assert bpy.ops.scantalk.animate(mode=mode, checkpoint=e2e, max_error_mm=0.1) == {"FINISHED"}

    wb = importlib.import_module(PKG + ".writeback")
    tag = wb.result_info(obj)
    ref = reference_offsets(obj, audio_start, duration, 24.0, e2e)
    T = ref.shape[0]
    assert tag["frames"] == T and tag["frame_start"] == first and tag["frame_end"] == first + T - 1
    assert abs(T - duration * 24) <= 1.5
    H.assert_same_user_data(before, H.snapshot(obj))
    if mode == "EXACT":
        check_motion(obj, before_eval, ref, first, tol=1e-5)
        fc = H.our_fcurves(obj)['key_blocks["ST_f%04d"].value' % first]
        assert H.keyframes(fc)[:, 0].tolist() == [first - 1, first, first + 1]
    else:
        mpu = tag["metres_per_unit"]
        assert mpu == 1.0  # the head is in metres; the object's scale of 3 does not change that
        tol = max(1e-4, tag["max_error"]) / mpu + 1e-6
        worst = check_motion(obj, before_eval, ref, first, tol=tol)
        print(f"compact: K={tag['basis_size']} max_error={tag['max_error']:.2e} measured={worst:.2e}")
        # the FBX keeps it
        fbx_roundtrip(obj, tmp_path / "head.fbx", [first - 1, first, first + T // 2, first + T - 1, first + T],
                      tol=5e-5)


def test_audio_file_end_to_end(e2e, scene):
    """Both bpy versions: an audio file, the clip starting at the scene's start frame (7)."""
    obj, before = placed_head()
    scene.frame_start = 7
    T_est = int(H.wav_seconds(WAV) * 24) + 2
    before_eval = {f: H.evaluated(obj, f) for f in range(6, 7 + T_est + 2)}
    assert bpy.ops.scantalk.animate(audio_path=str(WAV), mode="EXACT", checkpoint=e2e) == {"FINISHED"}
    ref = reference_offsets(obj, 0.0, None, 24.0, e2e)
    tag = importlib.import_module(PKG + ".writeback").result_info(obj)
    assert tag["frame_start"] == 7 and tag["frames"] == ref.shape[0]
    check_motion(obj, before_eval, ref, 7, tol=1e-5)
    H.assert_same_user_data(before, H.snapshot(obj))
    # re-run in Compact replaces ours only; clear leaves the user's data exactly as it was. The
    # head said to be twice life size reaches the backend: its metre is half a life-size one
    obj.scantalk.head_scale = 2.0
    assert bpy.ops.scantalk.animate(audio_path=str(WAV), mode="COMPACT", checkpoint=e2e) == {"FINISHED"}
    tag = importlib.import_module(PKG + ".writeback").result_info(obj)
    assert tag["mode"] == "COMPACT" and tag["metres_per_unit"] == 0.5
    assert bpy.ops.scantalk.clear() == {"FINISHED"}
    H.assert_same_user_data(before, H.snapshot(obj))
    assert not [k for k in obj.data.shape_keys.key_blocks if k.name.startswith("ST_")]


@pytest.mark.parametrize("mode", ["COMPACT", "EXACT"])
def test_a_silent_clip_animates_a_face_at_rest(e2e, scene, mode, tmp_path):
    """Digital silence through the real worker: the backend leaves the face at rest (all-zero
    offsets, no basis at all in Compact) and the add-on writes that as a finished result that
    shows the user's own mesh and animation unchanged on every frame."""
    import wave

    silent = tmp_path / "silence.wav"
    with wave.open(str(silent), "wb") as w:
        w.setnchannels(1), w.setsampwidth(2), w.setframerate(16000)
        w.writeframes(bytes(2 * 16000 * 2))
    obj, before = placed_head()
    scene.frame_start = 7
    before_eval = {f: H.evaluated(obj, f) for f in range(6, 7 + 2 * 24 + 3)}
    assert bpy.ops.scantalk.animate(audio_path=str(silent), mode=mode, checkpoint=e2e) == {"FINISHED"}
    tag = importlib.import_module(PKG + ".writeback").result_info(obj)
    assert tag["frame_start"] == 7 and abs(tag["frames"] - 2 * 24) <= 1
    if mode == "COMPACT":
        assert tag["basis_size"] == 0
    for f, co in before_eval.items():
        assert np.abs(H.evaluated(obj, f) - co).max() < 1e-6, f
    H.assert_same_user_data(before, H.snapshot(obj))


def test_bad_checkpoint_is_readable_and_changes_nothing(e2e, scene, tmp_path):
    """No fakes: a file that is not a checkpoint goes to the real backend, which refuses it."""
    obj, before = placed_head()
    n_actions = len(bpy.data.actions)
    bad = tmp_path / "model.pth.tar"
    bad.write_bytes(b"this is not a torch checkpoint" * 10)
    with pytest.raises(RuntimeError) as ei:
        bpy.ops.scantalk.animate(audio_path=str(WAV), checkpoint=str(bad))
    msg = str(ei.value)
    assert "model.pth.tar" in msg or "checkpoint" in msg.lower(), msg
    assert "Traceback" not in msg.splitlines()[0]
    H.assert_same_user_data(before, H.snapshot(obj))
    assert not [k for k in obj.data.shape_keys.key_blocks if k.name.startswith("ST_")]
    assert len(bpy.data.actions) == n_actions
    # the worker survives a bad request: the next run works
    rt = importlib.import_module(PKG + ".runtime")
    assert rt._worker is not None and rt._worker.alive


def test_check_backend_runs_doctor(e2e, addon):
    rt = importlib.import_module(PKG + ".runtime")
    assert bpy.ops.scantalk.check_backend() == {"FINISHED"}
    text = "\n".join(rt.doctor_lines)
    assert rt.doctor_lines[0].startswith("Backend OK") and "torch" in text and "cuda_available" in text
