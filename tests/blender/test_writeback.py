"""Write-back with synthetic offsets (no backend): exactness, Compact tolerance, keys on the right
frames, our own action on a ScanTalk NLA strip (moving it re-times the motion), the user's data and
active action untouched, re-run and clear remove only ours, a failed write keeps the previous
result exactly."""
import importlib

import numpy as np
import pytest

bpy = pytest.importorskip("bpy", reason="bpy is not importable: run these tests with a bpy venv's python")

from tests.blender import helpers as H  # noqa: E402
from tests.blender.conftest import PKG  # noqa: E402


@pytest.fixture
def wb(addon):
    return importlib.import_module(PKG + ".writeback")


def _check_frames(obj, before_eval, off, start, tol):
    T = off.shape[0]
    worst = 0.0
    for i in range(T):
        got = H.evaluated(obj, start + i) - before_eval[start + i]
        worst = max(worst, float(np.linalg.norm(got - off[i], axis=1).max()))
    # outside the clip: the user's own animation only
    for f in (start - 1, start + T):
        assert np.abs(H.evaluated(obj, f) - before_eval[f]).max() < 1e-6, f
    assert worst <= tol, worst
    return worst


@pytest.mark.parametrize("mode", ["EXACT", "COMPACT"])
def test_writeback_frames_and_user_data(scene, wb, mode):
    obj = H.sphere_head()
    before = H.add_user_keys(obj)
    V = len(obj.data.vertices)
    start, T = 17, 60
    off = H.synthetic_offsets(V, T)
    frames = range(start - 1, start + T + 1)
    before_eval = {f: H.evaluated(obj, f) for f in frames}

    tag = wb.write_result(obj, off, start, mode=mode, max_error=1e-4)
    assert tag["frame_start"] == start and tag["frame_end"] == start + T - 1
    H.assert_same_user_data(before, H.snapshot(obj))

    tol = 1e-6 if mode == "EXACT" else 1e-4 + 1e-6
    worst = _check_frames(obj, before_eval, off, start, tol)
    if mode == "COMPACT":
        assert tag["max_error"] <= 1e-4 and worst <= tag["max_error"] + 1e-6
        assert tag["basis_size"] < 30
    # keys sit on the right frames
    curves = H.our_fcurves(obj)
    assert len(curves) == len(tag["keys"])
    if mode == "EXACT":
        assert len(tag["keys"]) == T
        for i, name in enumerate(tag["keys"]):
            k = H.keyframes(curves['key_blocks["%s"].value' % name])
            assert k[:, 0].tolist() == [start + i - 1, start + i, start + i + 1]
            assert k[:, 1].tolist() == [0, 1, 0]
    else:
        for name in tag["keys"]:
            k = H.keyframes(curves['key_blocks["%s"].value' % name])
            assert k[0, 0] == start - 1 and k[-1, 0] == start + T and len(k) == T + 2
            assert k[0, 1] == 0 and k[-1, 1] == 0
            assert k[:, 1].min() >= 0.0 and k[:, 1].max() <= 1.0  # safe for importers that clamp
            kb = obj.data.shape_keys.key_blocks[name]
            assert (kb.slider_min, kb.slider_max) == (0.0, 1.0)


def test_rerun_replaces_only_ours_and_clear_restores(scene, wb):
    obj = H.sphere_head()
    before = H.add_user_keys(obj)
    names_before = [k.name for k in obj.data.shape_keys.key_blocks]
    n_actions = len(bpy.data.actions)
    V = len(obj.data.vertices)
    wb.write_result(obj, H.synthetic_offsets(V, 30), 5, mode="EXACT")
    tag = wb.write_result(obj, H.synthetic_offsets(V, 20, seed=1), 40, mode="COMPACT", max_error=1e-4)
    names = [k.name for k in obj.data.shape_keys.key_blocks]
    assert names[:len(names_before)] == names_before
    assert names[len(names_before):] == tag["keys"]  # the EXACT keys are gone
    assert set(H.our_fcurves(obj)) == {'key_blocks["%s"].value' % n for n in tag["keys"]}
    H.assert_same_user_data(before, H.snapshot(obj))
    assert wb.clear_result(obj)
    assert [k.name for k in obj.data.shape_keys.key_blocks] == names_before
    assert not H.our_fcurves(obj) and len(bpy.data.actions) == n_actions
    H.assert_same_user_data(before, H.snapshot(obj))
    assert not wb.clear_result(obj)  # nothing left of ours
    assert "ScanTalk" not in obj.data.shape_keys.animation_data.nla_tracks


def _track(obj):
    ad = obj.data.shape_keys.animation_data
    return ad.nla_tracks.get("ScanTalk")


def test_result_is_an_nla_strip_and_the_users_action_stays_active(scene, wb):
    obj = H.sphere_head(subdiv=2)
    before = H.add_user_keys(obj)  # keys 'smile': the user's active action on the Key
    key = obj.data.shape_keys
    user_act = key.animation_data.action
    raw = {fc.data_path: H.keyframes(fc).tobytes() for fc in H._fcurves_of(key)}
    for mode in ("EXACT", "COMPACT"):  # a re-run replaces our strip and action only
        tag = wb.write_result(obj, H.synthetic_offsets(len(obj.data.vertices), 15), 9, mode=mode, max_error=1e-4)
        assert key.animation_data.action == user_act
        assert {fc.data_path: H.keyframes(fc).tobytes() for fc in H._fcurves_of(key)} == raw  # byte for byte
        track = _track(obj)
        assert track is not None and len(track.strips) == 1
        strip = track.strips[0]
        assert strip.action.name == tag["action"] and strip.frame_start == 8 and strip.frame_end == 9 + 15
        assert len([a for a in bpy.data.actions if a.name.startswith("ST_")]) == 1
        if hasattr(strip.action, "slots"):  # 4.4+: a slot of its own, the strip uses it
            assert len(strip.action.slots) == 1 and strip.action_slot == strip.action.slots[0]
        H.assert_same_user_data(before, H.snapshot(obj))
    assert wb.clear_result(obj)
    assert _track(obj) is None and not [a for a in bpy.data.actions if a.name.startswith("ST_")]
    assert key.animation_data.action == user_act
    H.assert_same_user_data(before, H.snapshot(obj))


def test_moving_the_strip_retimes_the_lip_sync(scene, wb):
    obj = H.sphere_head(subdiv=2)
    V = len(obj.data.vertices)
    off = H.synthetic_offsets(V, 20)
    base = H.coords(obj)
    wb.write_result(obj, off, 10, mode="COMPACT", max_error=1e-5)
    strip = _track(obj).strips[0]
    N = 7
    strip.frame_start_ui = strip.frame_start + N  # what dragging the strip does
    for i in (0, 5, 19):
        assert np.abs(H.evaluated(obj, 10 + N + i) - base - off[i]).max() < 2e-5, i
    assert np.abs(H.evaluated(obj, 10 + N - 1) - base).max() < 1e-6  # neutral before the moved clip


def test_failed_write_keeps_the_previous_result_exactly(scene, wb, monkeypatch):
    obj = H.sphere_head(subdiv=2)
    before = H.add_user_keys(obj)
    V = len(obj.data.vertices)
    tag = wb.write_result(obj, H.synthetic_offsets(V, 12), 5, mode="COMPACT", max_error=1e-4)
    frames = range(4, 19)
    prev_eval = {f: H.evaluated(obj, f) for f in frames}
    names = [k.name for k in obj.data.shape_keys.key_blocks]
    n_actions = len(bpy.data.actions)
    real = wb._key_curve
    calls = {"n": 0}

    def failing(*a, **kw):  # fails after the new keys exist, with half of the new curves written
        calls["n"] += 1
        if calls["n"] == 3:
            raise MemoryError("simulated")
        return real(*a, **kw)

    monkeypatch.setattr(wb, "_key_curve", failing)
    with pytest.raises(MemoryError):
        wb.write_result(obj, H.synthetic_offsets(V, 30, seed=3), 2, mode="EXACT")
    assert [k.name for k in obj.data.shape_keys.key_blocks] == names
    assert wb.result_info(obj) == tag and len(bpy.data.actions) == n_actions
    for f in frames:
        assert np.array_equal(H.evaluated(obj, f), prev_eval[f]), f
    H.assert_same_user_data(before, H.snapshot(obj))


def test_clear_on_a_mesh_without_keys_leaves_no_trace(scene, wb):
    obj = H.sphere_head(subdiv=2)
    co = H.coords(obj)
    wb.write_result(obj, H.synthetic_offsets(len(co), 12), 1, mode="EXACT")
    assert obj.data.shape_keys is not None
    wb.clear_result(obj)
    assert obj.data.shape_keys is None and len(bpy.data.actions) == 0
    assert np.array_equal(H.coords(obj), co)


def test_user_key_named_like_ours_is_not_touched(scene, wb):
    obj = H.sphere_head(subdiv=2)
    obj.shape_key_add(name="Basis")
    mine = obj.shape_key_add(name="ST_f0001", from_mix=False)  # the user's, despite the prefix
    mine.value = 0.3
    tag = wb.write_result(obj, H.synthetic_offsets(len(obj.data.vertices), 3), 1, mode="EXACT")
    assert "ST_f0001" not in tag["keys"]  # ours got a unique name
    wb.clear_result(obj)
    assert [k.name for k in obj.data.shape_keys.key_blocks] == ["Basis", "ST_f0001"]
    assert obj.data.shape_keys.key_blocks["ST_f0001"].value == pytest.approx(0.3)


def test_failure_while_writing_leaves_nothing_half_written(scene, wb, monkeypatch):
    obj = H.sphere_head(subdiv=2)
    before = H.add_user_keys(obj)
    names = [k.name for k in obj.data.shape_keys.key_blocks]
    calls = {"n": 0}
    real = wb._key_curve

    def failing(fc, frames, values):
        calls["n"] += 1
        if calls["n"] == 5:
            raise MemoryError("simulated")
        return real(fc, frames, values)

    monkeypatch.setattr(wb, "_key_curve", failing)
    with pytest.raises(MemoryError):
        wb.write_result(obj, H.synthetic_offsets(len(obj.data.vertices), 10), 1, mode="EXACT")
    assert [k.name for k in obj.data.shape_keys.key_blocks] == names
    assert not H.our_fcurves(obj) and wb.result_info(obj) is None
    H.assert_same_user_data(before, H.snapshot(obj))


def test_bad_results_are_refused_before_touching_anything(scene, wb):
    obj = H.sphere_head(subdiv=2)
    V = len(obj.data.vertices)
    with pytest.raises(wb.WritebackError, match="mesh changed"):
        wb.write_result(obj, np.zeros((3, V + 1, 3), np.float32), 1)
    bad = np.zeros((3, V, 3), np.float32)
    bad[1, 2, 0] = np.nan
    with pytest.raises(wb.WritebackError, match="NaN"):
        wb.write_result(obj, bad, 1)
    assert obj.data.shape_keys is None


def test_strength_and_smoothing(scene, wb):
    obj = H.sphere_head(subdiv=2)
    V = len(obj.data.vertices)
    off = H.synthetic_offsets(V, 20)
    base = {f: H.evaluated(obj, f) for f in range(1, 21)}
    wb.write_result(obj, off, 1, mode="EXACT", strength=0.5)
    assert np.allclose(H.evaluated(obj, 7) - base[7], 0.5 * off[6], atol=1e-6)
    wb.write_result(obj, off, 1, mode="EXACT", smoothing=1.5)
    sm = importlib.import_module(PKG + ".basis").smooth_time(off.reshape(20, -1), 1.5).reshape(off.shape)
    assert np.allclose(H.evaluated(obj, 7) - base[7], sm[6], atol=1e-6)
    wb.write_result(obj, off, 1, mode="COMPACT", smoothing=1.5, max_error=1e-6, k_max=64)
    assert np.abs(H.evaluated(obj, 7) - base[7] - sm[6]).max() < 2e-5


def test_modifiers_and_object_transform_do_not_matter(scene, wb):
    obj = H.sphere_head(subdiv=2)
    obj.location, obj.rotation_euler, obj.scale = (1, 2, 3), (0.3, 0.2, 1.0), (2, 2, 2)
    obj.modifiers.new("Subsurf", "SUBSURF")  # changes topology of the evaluated mesh
    V = len(obj.data.vertices)
    off = H.synthetic_offsets(V, 5)
    wb.write_result(obj, off, 1, mode="EXACT")
    obj.modifiers.clear()
    base = H.coords(obj)
    assert np.allclose(H.evaluated(obj, 3) - base, off[2], atol=1e-6)


def test_the_backends_warnings_reach_the_user(scene, wb):
    """A note in the result's meta (a head far from life size: set Head Scale) is reported with the
    summary, like the add-on's own warnings."""
    import json

    pipeline = importlib.import_module(PKG + ".pipeline")
    obj = H.test_head("Head")
    note = "the mesh is 2.0x the size of the heads this model was trained on ... Head Scale in the add-on"
    prep = pipeline.prepare(bpy.context, pipeline.Settings(mode="EXACT", audio_path=str(H.DEMO_VOICE)))
    try:
        T, V = 5, len(obj.data.vertices)
        np.savez(prep.fields["out"], offsets=np.zeros((T, V, 3), np.float32), fps=np.float64(prep.audio.fps),
                 meta=np.array(json.dumps({"frame": {"units": "m", "scale": 1.0}, "warnings": [note]})))
        summary = pipeline.write(bpy.context, prep, pipeline.compute(prep, {"out": prep.fields["out"]}))
    finally:
        prep.cleanup()
    assert "Animated 'Head'" in summary and note in prep.warnings
