"""What goes to the backend: sound strips and files (timing, trims, muted, packed, relative paths,
missing), the exported mesh (base mesh, quads/n-gons, loose parts, axes) and the operator's
messages for bad input. No backend needed: all of this fails or finishes before it is called."""
import importlib
import os
import shutil
import warnings

import numpy as np
import pytest

bpy = pytest.importorskip("bpy", reason="bpy is not importable: run these tests with a bpy venv's python")

from tests.blender import helpers as H  # noqa: E402
from tests.blender.conftest import PKG  # noqa: E402

needs_audio = pytest.mark.skipif(not H.HAS_AUDIO, reason="this bpy wheel has no audio (Audaspace): "
                                                         "sound strips cannot be made; 4.2 is tested with files")


@pytest.fixture
def audio(addon):
    return importlib.import_module(PKG + ".audio_source")


@pytest.fixture
def mx(addon):
    return importlib.import_module(PKG + ".mesh_export")


@pytest.fixture
def wav(tmp_path):
    if not H.SPEECH.is_file():
        pytest.skip(f"{H.SPEECH} not present")
    p = tmp_path / "voice.wav"
    shutil.copy(H.SPEECH, p)
    return p


# ---- audio ---------------------------------------------------------------------------------------
@needs_audio
def test_strip_timing_at_24fps_trimmed_and_offset(scene, audio, wav):
    strips = H.sound_strips_collection(scene)
    s = strips.new_sound("voice", str(wav), channel=2, frame_start=17)
    s.frame_offset_start = 5
    s.frame_offset_end = 10
    spec = audio.resolve(scene)
    assert spec.frame_start == 22 and spec.fps == 24.0
    assert spec.start == pytest.approx(5 / 24)
    assert spec.duration == pytest.approx((s.frame_final_end - 22) / 24)
    assert spec.path == os.path.normpath(str(wav)) and not spec.temp


@needs_audio
def test_strip_timing_uses_no_deprecated_strip_api(scene, audio, wav):
    # Blender 5.2 deprecates frame_final_start/_end and frame_start (gone in 6.0): reading a strip
    # must not touch them where the new names exist.
    s = H.sound_strips_collection(scene).new_sound("voice", str(wav), channel=2, frame_start=17)
    s.frame_offset_start = 3
    with warnings.catch_warnings():
        warnings.simplefilter("error", DeprecationWarning)
        spec = audio.resolve(scene)
    assert spec.frame_start == 20 and spec.start == pytest.approx(3 / 24)


@needs_audio
@pytest.mark.skipif(bpy.app.version < (5, 0, 0), reason="the workspace's sequencer scene is new in Blender 5.0")
def test_strips_of_the_workspaces_sequencer_scene(scene, audio, wav):
    edit = bpy.data.scenes.new("Edit")
    edit.render.fps, edit.render.fps_base = 24, 1.0
    s = H.sound_strips_collection(edit).new_sound("take", str(wav), channel=1, frame_start=9)
    ws = bpy.context.workspace
    ws.sequencer_scene = edit
    assert audio.sequencer_scene(bpy.context) == edit
    spec = audio.resolve(scene, seq_scene=audio.sequencer_scene(bpy.context))  # this scene has none
    assert spec.label == "strip 'take'" and spec.frame_start == 9 and spec.fps == 24.0
    assert audio.resolve(scene, "take", seq_scene=edit).frame_start == 9  # by name too
    mine = H.sound_strips_collection(scene).new_sound("own", str(wav), channel=1, frame_start=3)
    assert audio.resolve(scene, seq_scene=edit).label == f"strip '{mine.name}'"  # the scene's own first
    scene.render.fps = 48  # another frame rate: the start frame is converted, with a warning
    spec = audio.resolve(scene, "take", seq_scene=edit)
    assert spec.frame_start == 18 and spec.fps == 48.0 and spec.warnings
    assert s.name == "take"


@needs_audio
def test_fps_base_and_sound_offset(scene, audio, wav):
    scene.render.fps, scene.render.fps_base = 30, 1.001
    s = H.sound_strips_collection(scene).new_sound("voice", str(wav), channel=1, frame_start=1)
    s.sound_offset = 0.25
    spec = audio.resolve(scene)
    assert spec.fps == pytest.approx(30 / 1.001)
    assert spec.start == pytest.approx(0.25)


@needs_audio
def test_strip_longer_than_its_sound_is_clamped(scene, audio, wav):
    import types

    real = H.sound_strips_collection(scene).new_sound("voice", str(wav), channel=1, frame_start=1)
    length = audio._sound_seconds(str(wav))
    # a strip whose frames outlast its sound (what an fps change can leave behind)
    long = types.SimpleNamespace(name="voice", sound=real.sound, frame_start=1.0, frame_final_start=11,
                                 frame_final_end=11 + int(length * 24) + 50, sound_offset=0.0)
    spec = audio.resolve_strip(scene, long)
    assert spec.start == pytest.approx(10 / 24)
    assert spec.duration == pytest.approx(length - 10 / 24, abs=1e-6)


@needs_audio
def test_muted_strips_skipped_and_named_strip_used(scene, audio, wav):
    strips = H.sound_strips_collection(scene)
    m = strips.new_sound("muted", str(wav), channel=1, frame_start=1)
    m.mute = True
    strips.new_sound("late", str(wav), channel=2, frame_start=90)
    strips.new_sound("early", str(wav), channel=3, frame_start=40)
    spec = audio.resolve(scene)
    assert spec.label == "strip 'early'" and any("first of 2" in w for w in spec.warnings)
    assert audio.resolve(scene, strip_name="muted").frame_start == 1
    with pytest.raises(audio.AudioSourceError, match="No sound strip named"):
        audio.resolve(scene, strip_name="nope")


@needs_audio
def test_relative_and_packed_sounds(scene, audio, wav, tmp_path):
    blend = tmp_path / "proj" / "scene.blend"
    blend.parent.mkdir()
    bpy.ops.wm.save_as_mainfile(filepath=str(blend))
    s = H.sound_strips_collection(bpy.context.scene).new_sound("voice", str(wav), channel=1, frame_start=3)
    s.sound.filepath = bpy.path.relpath(str(wav))
    assert s.sound.filepath.startswith("//")
    spec = audio.resolve(bpy.context.scene)
    assert os.path.samefile(spec.path, wav)
    s.sound.pack()
    spec = audio.resolve(bpy.context.scene, temp_dir=str(tmp_path))
    try:
        assert spec.temp and open(spec.path, "rb").read() == wav.read_bytes()
    finally:
        os.unlink(spec.path)


@needs_audio
def test_missing_sound_file_is_a_clear_error(scene, audio, wav, tmp_path):
    p = tmp_path / "gone.wav"
    shutil.copy(wav, p)
    H.sound_strips_collection(scene).new_sound("voice", str(p), channel=1, frame_start=1)
    p.unlink()
    with pytest.raises(audio.AudioSourceError, match="missing"):
        audio.resolve(scene)


def test_no_strip_and_missing_file_messages(scene, audio, tmp_path):
    with pytest.raises(audio.AudioSourceError, match="has no sound strip"):
        audio.resolve(scene)
    with pytest.raises(audio.AudioSourceError, match="not found"):
        audio.resolve(scene, audio_path=str(tmp_path / "nope.wav"))


def test_audio_file_starts_at_scene_start(scene, audio, tmp_path):
    p = tmp_path / "a.wav"
    p.write_bytes(b"RIFF")
    scene.frame_start = 9
    spec = audio.resolve(scene, audio_path=str(p))
    assert (spec.frame_start, spec.start, spec.duration) == (9, 0.0, None)


# ---- mesh export -----------------------------------------------------------------------------------
def test_export_base_mesh_quads_ngons_loose_parts(scene, mx, tmp_path):
    verts = [(0, 0, 0), (1, 0, 0), (1, 0, 1), (0, 0, 1),  # quad
             (2, 0, 0), (3, 0, 0), (3.5, 0, 0.5), (3, 0, 1), (2, 0, 1),  # pentagon
             (5, 0, 0), (6, 0, 0), (5.5, 0, 1)]  # a separate triangle (loose part)
    faces = [(0, 1, 2, 3), (4, 5, 6, 7, 8), (9, 10, 11)]
    obj = H.mesh_object("parts", verts, faces)
    obj.modifiers.new("Subsurf", "SUBSURF")
    info = mx.export_mesh(obj, str(tmp_path / "m.npz"), axes="Z_UP")
    with np.load(tmp_path / "m.npz") as d:
        v, f = d["vertices"], d["faces"]
    assert v.shape == (12, 3)  # the base mesh, not the subdivided one
    assert f.shape == (2 + 3 + 1, 3) and set(np.unique(f)) == set(range(12))
    assert np.allclose(v, np.asarray(verts) @ info.rotation.T)
    assert info.stats["quads"] == 1 and info.stats["ngons"] == 1
    # each triangle lies inside its own polygon: indices stay the original vertex indices
    groups = [set(range(0, 4)), set(range(4, 9)), set(range(9, 12))]
    assert all(any(set(t) <= g for g in groups) for t in f.tolist())


def test_export_uses_basis_not_the_shape_key_mix(scene, mx, tmp_path):
    obj = H.sphere_head(subdiv=2)
    base = H.coords(obj)
    H.add_user_keys(obj)
    info = mx.export_mesh(obj, str(tmp_path / "m.npz"), axes="Z_UP")
    assert np.allclose(info.neutral_local, base, atol=1e-7)


def test_axes_auto(scene, mx, tmp_path):
    obj = H.sphere_head(subdiv=2)  # Z-up
    assert mx.export_mesh(obj, str(tmp_path / "a.npz")).axes == "Z_UP"
    co = H.coords(obj)
    H.set_coords(obj, co[:, [0, 2, 1]] * [1, 1, -1])  # same head modelled Y-up
    info = mx.export_mesh(obj, str(tmp_path / "b.npz"))
    assert info.axes == "Y_UP" and info.warnings  # lying on its side in the scene: say so
    obj.rotation_euler = (np.pi / 2, 0, 0)  # stood up in the scene
    bpy.context.view_layer.update()
    info = mx.export_mesh(obj, str(tmp_path / "c.npz"))
    assert info.axes == "Y_UP" and not info.warnings
    # both give the same model-frame mesh
    a = np.load(tmp_path / "a.npz")["vertices"]
    c = np.load(tmp_path / "c.npz")["vertices"]
    assert np.allclose(a, c, atol=1e-6)


def test_offsets_come_back_into_local_space(scene, mx, tmp_path):
    obj = H.sphere_head(subdiv=1)
    info = mx.export_mesh(obj, str(tmp_path / "m.npz"), axes="Z_UP")
    up_model = np.zeros((1, len(obj.data.vertices), 3), np.float32)
    up_model[..., 1] = 1  # model +y (up)
    front_model = np.zeros_like(up_model)
    front_model[..., 2] = 1  # model +z (front)
    assert np.allclose(info.offsets_to_local(up_model)[0, 0], [0, 0, 1])
    assert np.allclose(info.offsets_to_local(front_model)[0, 0], [0, -1, 0])


# ---- operator messages (no backend is started for these) ----------------------------------------------
def test_operator_errors_are_readable(scene, addon, tmp_path):
    bpy.ops.object.camera_add()
    with pytest.raises(RuntimeError, match="is a camera, not a mesh"):
        bpy.ops.scantalk.animate()
    H.sphere_head(subdiv=1)
    with pytest.raises(RuntimeError, match="no sound strip"):
        bpy.ops.scantalk.animate()
    with pytest.raises(RuntimeError, match="Audio file not found"):
        bpy.ops.scantalk.animate(audio_path=str(tmp_path / "missing.wav"))
    p = tmp_path / "a.wav"
    p.write_bytes(b"RIFF")
    with pytest.raises(RuntimeError, match="Checkpoint file not found"):
        bpy.ops.scantalk.animate(audio_path=str(p), checkpoint=str(tmp_path / "nope.pt"))
    obj = bpy.context.active_object
    assert obj.data.shape_keys is None and len(bpy.data.actions) == 0


def test_operator_without_backend_says_where_to_set_it_up(scene, addon, tmp_path, monkeypatch):
    monkeypatch.delenv("SCANTALK_BACKEND_PYTHON", raising=False)
    rt = importlib.import_module(PKG + ".runtime")
    rt.stop_worker()
    benv = importlib.import_module(PKG + ".backend_env")
    monkeypatch.setattr(rt.sys, "executable", str(tmp_path / "no-python"))  # Blender's Python: unusable
    benv.clear_cache()
    H.sphere_head(subdiv=1)
    p = tmp_path / "a.wav"
    p.write_bytes(b"RIFF")
    with pytest.raises(RuntimeError, match="Set up backend"):
        bpy.ops.scantalk.animate(audio_path=str(p))
    prefs = bpy.context.preferences.addons[PKG].preferences
    prefs.python_path = str(tmp_path / "missing" / "python")
    try:
        with pytest.raises(RuntimeError, match="does not exist"):
            bpy.ops.scantalk.animate(audio_path=str(p))
    finally:
        prefs.python_path = ""
    assert bpy.context.active_object.data.shape_keys is None


def test_clear_operator_and_panel_registration(scene, addon):
    assert hasattr(bpy.types, "VIEW3D_PT_scantalk")
    assert bpy.types.VIEW3D_PT_scantalk.bl_category == "ScanTalk"
    for op in ("animate", "clear", "export_fbx", "export_gltf", "cancel", "setup_backend", "check_backend"):
        assert hasattr(bpy.ops.scantalk, op), op
    H.sphere_head(subdiv=1)
    assert bpy.ops.scantalk.clear() == {"CANCELLED"}  # nothing to clear: a warning
