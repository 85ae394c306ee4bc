"""scantalk.export_fbx / export_gltf keep the shape-key animation, which lives in an NLA strip of
our own: export, re-import (FBX with anim_offset=0), and the re-imported mesh moves the same on
every frame (synthetic result; the end-to-end test does the same with the backend's). The glTF
round trip goes through Blender's importer, which clamps weights to 0..1: Compact keys fit."""
import importlib

import numpy as np
import pytest

bpy = pytest.importorskip("bpy", reason="bpy is not importable: run these tests with a bpy venv's python")

from tests.blender import helpers as H  # noqa: E402
from tests.blender.conftest import PKG  # noqa: E402


def fbx_roundtrip(obj, path, frames, tol=2e-5):
    """Export obj with the add-on's operator, import it back, compare world-space motion."""
    for o in bpy.context.view_layer.objects:
        o.select_set(o == obj)
    bpy.context.view_layer.objects.active = obj
    assert bpy.ops.scantalk.export_fbx(filepath=str(path)) == {"FINISHED"}
    ref = {f: H.evaluated(obj, f, world=True) for f in frames}
    old = set(bpy.data.objects)
    bpy.ops.import_scene.fbx(filepath=str(path), anim_offset=0)
    new = [o for o in bpy.data.objects if o not in old and o.type == "MESH"]
    assert len(new) == 1, new
    imp = new[0]
    assert imp.data.shape_keys is not None
    worst = 0.0
    for f in frames:
        got = H.evaluated(imp, f, world=True)
        assert got.shape == ref[f].shape
        worst = max(worst, float(np.abs(got - ref[f]).max()))
    assert worst < tol, worst
    return imp


@pytest.mark.parametrize("mode", ["COMPACT", "EXACT"])
def test_fbx_roundtrip_keeps_motion(scene, addon, tmp_path, mode):
    wb = importlib.import_module(PKG + ".writeback")
    obj = H.sphere_head(subdiv=3)
    obj.location, obj.rotation_euler, obj.scale = (0.5, -1.0, 2.0), (0.0, 0.0, 0.6), (1.5, 1.5, 1.5)
    H.add_user_keys(obj)
    start, T = 11, 40
    tag = wb.write_result(obj, H.synthetic_offsets(len(obj.data.vertices), T), start, mode=mode, max_error=1e-4)
    if mode == "COMPACT":  # every weight fits [0, 1]: importers that clamp keep the motion
        assert all(0 <= H.keyframes(fc)[:, 1].min() and H.keyframes(fc)[:, 1].max() <= 1
                   for fc in H.our_fcurves(obj).values())
    scene.frame_end = 30  # shorter than the clip: the exporter must still cover it
    frames = [start - 1, start, start + 7, start + T // 2, start + T - 1, start + T]
    fbx_roundtrip(obj, tmp_path / f"head_{mode}.fbx", frames)
    assert scene.frame_end == 30 or scene.frame_end >= tag["frame_end"]


def test_fbx_settings_keep_shape_key_animation(addon):
    ops = importlib.import_module(PKG + ".operators")
    s = ops.fbx_settings()
    assert s["bake_anim"] and not s["bake_anim_use_nla_strips"] and not s["bake_anim_use_all_actions"]
    assert not s["use_mesh_modifiers"] and s["object_types"] == {"MESH"} and not s["add_leaf_bones"]


def test_gltf_export_keeps_morph_targets_and_restores_scene(scene, addon, tmp_path):
    wb = importlib.import_module(PKG + ".writeback")
    obj = H.sphere_head(subdiv=2)
    other = H.sphere_head(subdiv=1)
    other.select_set(True)
    wb.write_result(obj, H.synthetic_offsets(len(obj.data.vertices), 20), 5, mode="EXACT")
    scene.frame_start, scene.frame_end = 1, 10
    bpy.context.view_layer.objects.active = obj
    path = tmp_path / "head.glb"
    assert bpy.ops.scantalk.export_gltf(filepath=str(path)) == {"FINISHED"}
    assert path.stat().st_size > 0 and b"weights" in path.read_bytes()  # morph-target animation
    assert (scene.frame_start, scene.frame_end) == (1, 10)  # range put back
    assert other.select_get()  # selection put back


def gltf_roundtrip(obj, path, frames, tol):
    for o in bpy.context.view_layer.objects:
        o.select_set(o == obj)
    bpy.context.view_layer.objects.active = obj
    assert bpy.ops.scantalk.export_gltf(filepath=str(path)) == {"FINISHED"}
    ref = {f: H.evaluated(obj, f, world=True) for f in frames}
    old = set(bpy.data.objects)
    bpy.ops.import_scene.gltf(filepath=str(path))
    new = [o for o in bpy.data.objects if o not in old and o.type == "MESH"]
    assert len(new) == 1, new
    imp = new[0]
    worst = 0.0
    for f in frames:
        got = H.evaluated(imp, f, world=True)
        assert got.shape == ref[f].shape
        worst = max(worst, float(np.abs(got - ref[f]).max()))
    assert worst < tol, worst
    return imp


@pytest.mark.parametrize("mode", ["COMPACT", "EXACT"])
def test_gltf_roundtrip_keeps_motion_within_max_error(scene, addon, tmp_path, mode):
    wb = importlib.import_module(PKG + ".writeback")
    obj = H.sphere_head(subdiv=3)
    obj.location = (0.2, 0.1, -0.3)
    obj.data.polygons.foreach_set("use_smooth", [True] * len(obj.data.polygons))  # glTF keeps vertices whole:
    while len(obj.data.uv_layers):  # no normal or UV seams to split them at
        obj.data.uv_layers.remove(obj.data.uv_layers[0])
    obj.shape_key_add(name="Basis")  # the user's own key, animated by the user's active action
    smile = obj.shape_key_add(name="smile")
    smile.data.foreach_set("co", (H.coords(obj) + [0.01, 0, 0]).astype(np.float32).ravel())
    smile.value = 0.2
    smile.keyframe_insert("value", frame=1)
    smile.value = 0.9
    smile.keyframe_insert("value", frame=40)
    start, T, max_error = 11, 30, 1e-4
    off = H.synthetic_offsets(len(obj.data.vertices), T)
    tag = wb.write_result(obj, off, start, mode=mode, max_error=max_error)
    frames = [start - 1, start, start + 7, start + T // 2, start + T - 1, start + T]
    # the re-imported head moves like ours, and so like the exact offsets within Max Error
    gltf_roundtrip(obj, tmp_path / f"head_{mode}.glb", frames, tol=max(tag["max_error"], 1e-6) + 2e-6)
