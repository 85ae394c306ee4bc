"""Scene building and measuring helpers for the bpy tests (import after bpy)."""
from __future__ import annotations

import math
from pathlib import Path

import bpy
import numpy as np

ROOT = Path(__file__).resolve().parents[2]
SHARED = ROOT.parent / "shared"
SPEECH = SHARED / "data" / "speech" / "sense_and_sensibility_01_austen_64kb-0870.wav"
TINY = SHARED / "fixtures" / "official_scantalk_tiny"
FLAME = SHARED / "data" / "meshes" / "FLAME_sample.ply"

HAS_AUDIO = bpy.app.version >= (4, 5, 0)  # bpy 4.2's wheel is built without Audaspace


def sound_strips_collection(scene):
    se = scene.sequence_editor_create()
    return se.strips if hasattr(se, "strips") else se.sequences


def link(obj):
    bpy.context.scene.collection.objects.link(obj)
    for o in bpy.context.view_layer.objects:
        o.select_set(False)
    obj.select_set(True)
    bpy.context.view_layer.objects.active = obj
    return obj


def mesh_object(name, verts, faces):
    me = bpy.data.meshes.new(name)
    me.from_pydata([tuple(map(float, v)) for v in verts], [], [tuple(map(int, f)) for f in faces])
    me.update()
    return link(bpy.data.objects.new(name, me))


def sphere_head(name="Head", subdiv=4, radius=0.1):
    """An ico-sphere stretched like a head (taller along Z than deep along Y), Z-up."""
    bpy.ops.mesh.primitive_ico_sphere_add(subdivisions=subdiv, radius=radius)
    obj = bpy.context.active_object
    obj.name = name
    co = coords(obj)
    co[:, 2] *= 1.3
    co[:, 0] *= 0.8
    set_coords(obj, co)
    return obj


def flame_head(z_up=True, name="FLAME"):
    """FLAME_sample.ply (y-up, facing +z in the file); z_up rotates its data into Blender's
    convention (Z up, facing -Y)."""
    import pytest

    if not FLAME.is_file():
        pytest.skip(f"{FLAME} not present (licensed test data in ../shared)")
    kw = dict(filepath=str(FLAME))
    bpy.ops.wm.ply_import(**kw)
    obj = bpy.context.active_object
    obj.name = name
    co = coords(obj)
    if z_up:  # (x, y, z)_yup -> (x, -z, y)_zup
        co = np.stack([co[:, 0], -co[:, 2], co[:, 1]], axis=1)
    set_coords(obj, co)
    return obj


DEMO_HEAD = ROOT / "backend" / "assets" / "demo_head.obj"  # ICT FaceKit (MIT), metres, y up, facing +z
DEMO_VOICE = ROOT / "backend" / "assets" / "demo_voice.wav"  # public domain


def voice() -> Path | None:
    """Speech for end-to-end runs: ../shared's short clip, else the project's demo voice."""
    for p in (TINY / "speech_16k.wav", DEMO_VOICE):
        if p.is_file():
            return p
    return None


def wav_seconds(path) -> float:
    import wave

    try:
        with wave.open(str(path)) as w:
            return w.getnframes() / w.getframerate()
    except (wave.Error, EOFError):
        return 20.0  # not PCM: an upper bound for the short clips used here


def demo_head(name="Demo"):
    """The project's demo head (OBJ, y up), its data rotated into Blender's Z-up facing -Y."""
    import pytest

    if not DEMO_HEAD.is_file():
        pytest.skip(f"{DEMO_HEAD} not present")
    verts, faces = [], []
    for line in DEMO_HEAD.read_text().splitlines():
        if line.startswith("v "):
            x, y, z = map(float, line.split()[1:4])
            verts.append((x, -z, y))
        elif line.startswith("f "):
            faces.append([int(t.split("/")[0]) - 1 for t in line.split()[1:]])
    return mesh_object(name, verts, faces)


def test_head(name="Head"):
    """FLAME_sample (../shared) if present, else the demo head; Z-up in Blender's convention."""
    return flame_head(z_up=True, name=name) if FLAME.is_file() else demo_head(name)


def coords(obj) -> np.ndarray:
    me = obj.data
    a = np.empty(len(me.vertices) * 3, np.float32)
    me.vertices.foreach_get("co", a)
    return a.reshape(-1, 3).astype(np.float64)


def set_coords(obj, co):
    me = obj.data
    me.vertices.foreach_set("co", np.asarray(co, np.float32).ravel())
    me.update()


def evaluated(obj, frame=None, world=False) -> np.ndarray:
    if frame is not None:
        bpy.context.scene.frame_set(frame)
    dg = bpy.context.evaluated_depsgraph_get()
    ev = obj.evaluated_get(dg)
    me = ev.to_mesh()
    try:
        a = np.empty(len(me.vertices) * 3, np.float32)
        me.vertices.foreach_get("co", a)
        a = a.reshape(-1, 3).astype(np.float64)
        if world:
            m = np.array(ev.matrix_world)
            a = a @ m[:3, :3].T + m[:3, 3]
        return a
    finally:
        ev.to_mesh_clear()


def add_user_keys(obj):
    """The user's own shape keys: 'smile' animated, 'brow' driven, 'jaw' at a static value."""
    obj.shape_key_add(name="Basis", from_mix=False)
    co = coords(obj)
    for name, shift in (("smile", (0.002, 0, 0)), ("brow", (0, 0, 0.003)), ("jaw", (0, -0.001, -0.002))):
        kb = obj.shape_key_add(name=name, from_mix=False)
        kb.data.foreach_set("co", (co + np.array(shift)).astype(np.float32).ravel())
    keys = obj.data.shape_keys.key_blocks
    keys["jaw"].value = 0.4
    keys["smile"].value = 0.2
    keys["smile"].keyframe_insert("value", frame=1)
    keys["smile"].value = 0.9
    keys["smile"].keyframe_insert("value", frame=60)
    keys["smile"].value = 0.2
    drv = keys["brow"].driver_add("value")
    drv.driver.type = "SCRIPTED"
    drv.driver.expression = "0.5"
    obj.active_shape_key_index = keys.find("jaw")
    return snapshot(obj)


def _fcurves_of(id_data):
    ad = id_data.animation_data
    if ad is None or ad.action is None:
        return []
    act = ad.action
    if hasattr(act, "layers") and getattr(ad, "action_slot", None) is not None:
        from bpy_extras import anim_utils

        get = getattr(anim_utils, "action_get_channelbag_for_slot", None)
        if get is not None:
            cb = get(act, ad.action_slot)
            return list(cb.fcurves) if cb is not None else []
    return list(act.fcurves)


def snapshot(obj) -> dict:
    """Everything of the user's that we promise not to touch (ST_ keys excluded)."""
    key = obj.data.shape_keys
    out = {"coords": coords(obj), "keys": {}, "fcurves": {}, "drivers": {}, "active": None}
    if key is None:
        return out
    out["active"] = obj.active_shape_key.name if obj.active_shape_key else None
    animated = {fc.data_path for fc in _fcurves_of(key)}
    if key.animation_data is not None:
        animated |= {d.data_path for d in key.animation_data.drivers}
    for kb in key.key_blocks:
        if kb.name.startswith("ST_"):
            continue
        a = np.empty(len(kb.data) * 3, np.float32)
        kb.data.foreach_get("co", a)
        # an animated or driven value depends on the frame: its curve / driver is compared instead
        value = None if 'key_blocks["%s"].value' % kb.name in animated else kb.value
        out["keys"][kb.name] = (a.copy(), value, kb.slider_min, kb.slider_max, kb.mute,
                                kb.relative_key.name, kb.vertex_group)
    for fc in _fcurves_of(key):
        if "ST_" in fc.data_path:
            continue
        pts = np.empty(len(fc.keyframe_points) * 2, np.float32)
        fc.keyframe_points.foreach_get("co", pts)
        out["fcurves"][fc.data_path] = pts
    ad = key.animation_data
    if ad is not None:
        for d in ad.drivers:
            out["drivers"][d.data_path] = d.driver.expression
    return out


def assert_same_user_data(before: dict, after: dict):
    assert np.array_equal(before["coords"], after["coords"])
    assert before["keys"].keys() == after["keys"].keys()
    for name, b in before["keys"].items():
        a = after["keys"][name]
        assert np.array_equal(a[0], b[0]), name
        assert a[1:] == b[1:], (name, a[1:], b[1:])
    assert before["fcurves"].keys() == after["fcurves"].keys()
    for p, pts in before["fcurves"].items():
        assert np.array_equal(pts, after["fcurves"][p]), p
    assert before["drivers"] == after["drivers"]
    assert before["active"] == after["active"]


def action_fcurves(act):
    """Every F-curve of an action, whatever the API (legacy or layered)."""
    if act is None:
        return []
    if hasattr(act, "layers") and len(act.layers):
        out = []
        for layer in act.layers:
            for strip in layer.strips:
                for cb in getattr(strip, "channelbags", []):
                    out.extend(cb.fcurves)
        return out
    return list(act.fcurves) if hasattr(act, "fcurves") else []


def our_action(obj):
    import json

    key = obj.data.shape_keys
    raw = key.get("scantalk") if key is not None else None
    return bpy.data.actions.get(json.loads(raw).get("action", "")) if raw else None


def our_fcurves(obj):
    """Our F-curves: in our own action (the NLA strip's), never in the user's."""
    key = obj.data.shape_keys
    if key is None:
        return {}
    assert not [fc for fc in _fcurves_of(key) if "ST_" in fc.data_path], "our curves in the user's action"
    return {fc.data_path: fc for fc in action_fcurves(our_action(obj))}


def keyframes(fc) -> np.ndarray:
    pts = np.empty(len(fc.keyframe_points) * 2, np.float32)
    fc.keyframe_points.foreach_get("co", pts)
    return pts.reshape(-1, 2)


def synthetic_offsets(n_verts, frames, rank=6, amp=0.004, seed=0) -> np.ndarray:
    """Speech-like smooth offsets [T,V,3]: a few smooth modes with smooth weights."""
    rng = np.random.default_rng(seed)
    modes = rng.standard_normal((rank, n_verts, 3)).astype(np.float32)
    t = np.arange(frames)[:, None]
    w = np.sin(t * (0.11 + 0.07 * np.arange(rank)) + rng.uniform(0, math.tau, rank)).astype(np.float32)
    off = np.einsum("tk,kvc->tvc", w, modes) * (amp / rank)
    return (off + 0.002 * amp * rng.standard_normal(off.shape).astype(np.float32)).astype(np.float32)
