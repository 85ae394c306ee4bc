"""Write a result onto a mesh as shape keys animated by an action of its own, placed as a strip on
a "ScanTalk" NLA track of the mesh's shape keys; remove our previous result, and nothing else.

    plan = basis.plan_result(offsets, frame_start, mode, ...)   # numerics (no bpy)
    tag = write_plan(obj, plan, extra)                           # Blender data

Ours and only ours: the Key datablock carries an ID property `scantalk` (JSON) naming our shape
keys, action, track and strip. The user's shape keys, values, drivers, their active action and its
F-curves are never touched: our F-curves live in our action (a slot of its own in 4.4+), which
only the NLA strip uses, so moving the strip re-times the lip sync.

Safe replace: the new keys are written under temporary names and the new action is built aside;
only when all of it is written is the previous result removed and the new one renamed into place
and put on the track. A failure before that removes what this run wrote and leaves the previous
result exactly as it was.

Results of older versions (tag version 1: F-curves in the Key's active action) are still removed.
"""
from __future__ import annotations

import json
import time

import numpy as np

from .basis import Plan, PlanError, plan_result

PREFIX = "ST_"
TAG = "scantalk"
GROUP = "ScanTalk"
TRACK = "ScanTalk"
TEMP = PREFIX + "new_"
MODE_ITEMS = [
    ("COMPACT", "Compact", "A few basis shape keys with keyed weights: fast to scrub, small files, "
                           "within the max error of the exact result"),
    ("EXACT", "Exact", "One shape key per frame: exactly the model's output, but scrubbing slows down "
                       "with many frames (quadratic in the number of keys)"),
    ("RIG", "Rig", "Key the weights of the shape keys the mesh already has (ARKit 52 or any set) that best "
                   "reproduce the motion; no new keys"),
]
LINEAR = 1  # Keyframe.interpolation enum value


class WritebackError(RuntimeError):
    pass


def _points(kb):
    return getattr(kb, "points", None) or kb.data


def read_tag(key) -> dict | None:
    if key is None:
        return None
    raw = key.get(TAG)
    if not raw:
        return None
    try:
        tag = json.loads(raw) if isinstance(raw, str) else dict(raw)
    except (ValueError, TypeError):
        return None
    return tag if isinstance(tag, dict) else None


def result_info(obj) -> dict | None:
    """What our last run wrote on this object (None if nothing)."""
    if obj is None or obj.type != "MESH":
        return None
    return read_tag(obj.data.shape_keys)


def _key_path(name: str) -> str:
    return 'key_blocks["%s"].value' % name.replace("\\", "\\\\").replace('"', '\\"')


def _fcurve_containers(key):
    """Every F-curve collection of the Key's active action we may have written to."""
    ad = key.animation_data
    if ad is None or ad.action is None:
        return []
    act = ad.action
    out = []
    slot = getattr(ad, "action_slot", None)
    if hasattr(act, "layers") and slot is not None:
        from bpy_extras import anim_utils

        get = getattr(anim_utils, "action_get_channelbag_for_slot", None)
        if get is not None:
            cb = get(act, slot)
            if cb is not None:
                out.append(cb.fcurves)
        else:
            for layer in act.layers:
                for strip in layer.strips:
                    cb = strip.channelbag(slot) if hasattr(strip, "channelbag") else None
                    if cb is not None:
                        out.append(cb.fcurves)
    if not out and hasattr(act, "fcurves"):
        out.append(act.fcurves)
    return out




def _action_fcurves(act, key, id_type: str = "KEY"):
    """The F-curve collection of our new action: a slot of its own for the Key in 4.4+ (layered
    actions), the legacy `Action.fcurves` on 4.2."""
    if hasattr(act, "slots"):
        slot = act.slots.new(id_type=id_type, name=key.name)
        from bpy_extras import anim_utils

        ensure = getattr(anim_utils, "action_ensure_channelbag_for_slot", None)
        if ensure is not None:  # 5.0
            return ensure(act, slot).fcurves
        try:  # 4.4/4.5: the slot's channelbag on a keyframe strip
            layer = act.layers[0] if len(act.layers) else act.layers.new("Layer")
            strip = layer.strips[0] if len(layer.strips) else layer.strips.new(type="KEYFRAME")
            return strip.channelbag(slot, ensure=True).fcurves
        except (AttributeError, TypeError, RuntimeError):
            pass
    return act.fcurves


def _new_fcurve(fcurves, path, index: int = 0):
    try:
        return fcurves.new(path, index=index, group_name=GROUP)  # 5.0 channelbag
    except TypeError:
        try:
            return fcurves.new(path, index=index, action_group=GROUP)  # legacy Action.fcurves
        except TypeError:
            return fcurves.new(path, index=index)


def _key_curve(fc, frames: np.ndarray, values: np.ndarray) -> None:
    n = len(frames)
    kp = fc.keyframe_points
    kp.add(n)
    co = np.empty(2 * n, dtype=np.float32)
    co[0::2] = frames
    co[1::2] = values
    kp.foreach_set("co", co)
    kp.foreach_set("interpolation", np.full(n, LINEAR, dtype=np.int32))
    fc.update()


def _remove_names(obj, key, names: set[str]) -> None:
    """Remove our F-curves and shape keys named in `names` (only those)."""
    if not names:
        return
    paths = {_key_path(n) for n in names}
    for fcs in _fcurve_containers(key):
        for fc in [fc for fc in fcs if fc.data_path in paths]:
            fcs.remove(fc)
    for name in names:
        kb = key.key_blocks.get(name)
        if kb is not None and kb != key.reference_key:
            obj.shape_key_remove(kb)


def _drop_created(obj, key, tag: dict) -> None:
    """Remove the action / animation data / basis our run created, if nothing else uses them."""
    import bpy

    ad = key.animation_data
    act_name = tag.get("created_action")
    if ad is not None and act_name and ad.action is not None and ad.action.name == act_name:
        act = ad.action
        if not any(len(f) for f in _fcurve_containers(key)):
            ad.action = None
            if act.users == 0:
                bpy.data.actions.remove(act)
    if tag.get("created_animdata") and ad is not None:
        if ad.action is None and not len(ad.drivers) and not len(ad.nla_tracks):
            key.animation_data_clear()
    if tag.get("created_basis") and len(key.key_blocks) == 1:
        obj.shape_key_clear()




def _our_action(tag: dict):
    import bpy

    name = tag.get("action")
    return bpy.data.actions.get(name) if name else None


def _remove_result(obj, key, tag: dict) -> None:
    """Remove the strips, action and shape keys a tag names (v1: the F-curves in the active action)."""
    import bpy

    ad = key.animation_data
    act = _our_action(tag)
    if act is not None:
        if ad is not None:
            for track in list(ad.nla_tracks):
                for strip in [s for s in track.strips if s.action == act]:
                    track.strips.remove(strip)
                if track.name == tag.get("track") and not len(track.strips):
                    ad.nla_tracks.remove(track)
        if act.users == 0:
            bpy.data.actions.remove(act)
    _remove_names(obj, key, set(tag.get("keys", [])))  # v1 curves live in the user's action
    for c in tag.get("companions", []):  # Rig mode: the objects that follow the jaw
        ob = bpy.data.objects.get(c.get("object", ""))
        _remove_strips(ob, bpy.data.actions.get(c.get("action", "")), tag.get("track"))
        for (path, index), v in zip(c.get("paths", []), c.get("rest", [])):  # back where it was
            if ob is not None:
                getattr(ob, path)[index] = v
    for name, v in tag.get("rest_values", {}).items():  # Rig mode: the driven keys' own values
        kb = key.key_blocks.get(name)
        if kb is not None:
            kb.value = v


def _remove_strips(id_data, act, track_name) -> None:
    """Our strips of `act` on `id_data`'s NLA, our track when it is empty, and `act` if unused."""
    import bpy

    if act is None:
        return
    ad = getattr(id_data, "animation_data", None) if id_data is not None else None
    if ad is not None:
        for track in list(ad.nla_tracks):
            for strip in [s for s in track.strips if s.action == act]:
                track.strips.remove(strip)
            if track.name == track_name and not len(track.strips):
                ad.nla_tracks.remove(track)
    if act.users == 0:
        bpy.data.actions.remove(act)


def clear_result(obj) -> bool:
    """Remove our result from `obj`: strip, action, shape keys (True if there was one)."""
    if obj is None or obj.type != "MESH" or obj.data.shape_keys is None:
        return False
    key = obj.data.shape_keys
    tag = read_tag(key)
    if tag is None:
        return False
    _check_not_tweaking(key)
    active = obj.active_shape_key.name if obj.active_shape_key else None
    _remove_result(obj, key, tag)
    if TAG in key:
        del key[TAG]
    _drop_created(obj, key, tag)
    if obj.data.shape_keys is not None and active is not None and active in obj.data.shape_keys.key_blocks:
        obj.active_shape_key_index = obj.data.shape_keys.key_blocks.find(active)
    return True


def _basis_co(obj) -> np.ndarray:
    me = obj.data
    n = len(me.vertices)
    co = np.empty(n * 3, dtype=np.float32)
    if me.shape_keys is not None and me.shape_keys.reference_key is not None:
        _points(me.shape_keys.reference_key).foreach_get("co", co)
    else:
        me.vertices.foreach_get("co", co)
    return co




def _check_not_tweaking(key) -> None:
    ad = key.animation_data if key is not None else None
    if ad is not None and getattr(ad, "use_tweak_mode", False):
        raise WritebackError("The shape keys' NLA is in tweak mode: leave it (Tab in the NLA editor) and try again.")


def _unique(names: list[str], taken: set[str]) -> list[str]:
    out = []
    for base in names:
        name, i = base, 0
        while name in taken:
            i += 1
            name = f"{base}.{i:03d}"
        taken.add(name)
        out.append(name)
    return out


def _place_strip(key, act, start: int):
    """Our strip on the ScanTalk track (a new track if the user filled that one)."""
    ad = key.animation_data
    track = ad.nla_tracks.get(TRACK)
    strip = None
    if track is not None:
        try:
            strip = track.strips.new(TRACK, start, act)
        except RuntimeError:  # no room: the user put strips of their own there
            track = None
    if track is None:
        track = ad.nla_tracks.new()
        track.name = TRACK
        strip = track.strips.new(TRACK, start, act)
    if getattr(strip, "action_slot", False) is None and len(act.slots):
        strip.action_slot = act.slots[0]
    strip.blend_type = "REPLACE"
    strip.extrapolation = "HOLD"  # our keys are 0 on the frames either side: neutral outside the clip
    return track, strip


def write_result(obj, offsets, frame_start: int, mode: str = "COMPACT", strength: float = 1.0,
                 smoothing: float = 0.0, max_error: float | None = None, k_max: int = 64,
                 extra: dict | None = None, timings: dict | None = None) -> dict:
    """Replace our previous result on `obj` with `offsets` [T,V,3] (object local space), the first
    frame on scene frame `frame_start`. `max_error` (local units) is for COMPACT. Returns the tag."""
    t0 = time.perf_counter()
    _check_target(obj)
    V = len(obj.data.vertices)
    off = np.asarray(offsets, dtype=np.float32)
    if off.ndim == 3 and off.shape[1] != V:
        raise WritebackError(f"The result has shape {list(off.shape)} but '{obj.name}' has {V} vertices; "
                             "the mesh changed while it was being animated. Run Animate again.")
    try:
        plan = plan_result(off, frame_start, mode, strength, smoothing, max_error, k_max)
    except PlanError as exc:
        raise WritebackError(str(exc)) from exc
    if timings is not None:
        timings["numerics"] = time.perf_counter() - t0
    return write_plan(obj, plan, extra, timings)


def _check_target(obj) -> None:
    if obj is None or obj.type != "MESH":
        raise WritebackError("ScanTalk writes onto a mesh object.")
    if obj.data.library is not None or getattr(obj.data, "override_library", None) is not None:
        raise WritebackError(f"Mesh '{obj.data.name}' is linked from a library; make it local first.")
    _check_not_tweaking(obj.data.shape_keys)


def write_plan(obj, plan: Plan, extra: dict | None = None, timings: dict | None = None, progress=None) -> dict:
    """Write `plan` onto `obj`, replacing our previous result only once the new one is complete.
    `progress(fraction)` is called while writing. Returns the tag."""
    import bpy

    t1 = time.perf_counter()
    tm = {} if timings is None else timings
    _check_target(obj)
    V = len(obj.data.vertices)
    if plan.vertex_count != V:
        raise WritebackError(f"The result is for {plan.vertex_count} vertices but '{obj.name}' has {V}; "
                             "the mesh changed while it was being animated. Run Animate again.")
    mesh = obj.data
    key = mesh.shape_keys
    prev = read_tag(key)
    prev_active = obj.active_shape_key.name if obj.active_shape_key else None
    made_basis, temp_keys, act = False, [], None
    n = len(plan.names)
    step = max(1, n // 20)
    try:
        if key is None:
            obj.shape_key_add(name="Basis", from_mix=False)
            made_basis = True
            key = mesh.shape_keys
        basis = _basis_co(obj)
        old = set(prev.get("keys", [])) if prev else set()
        finals = _unique([PREFIX + s for s in plan.names], {kb.name for kb in key.key_blocks if kb.name not in old})
        act = bpy.data.actions.new(name=f"{TEMP}{obj.name}")
        fcurves = _action_fcurves(act, key)
        for a, block in plan.shape_chunks():  # Exact from a file: read a chunk of frames at a time
            for j, shape in enumerate(block):
                i = a + j
                kb = obj.shape_key_add(name=TEMP + plan.names[i], from_mix=False)
                temp_keys.append(kb.name)
                _points(kb).foreach_set("co", basis + shape)
                if progress is not None and i % step == 0:
                    progress(0.8 * i / n)
        if len(temp_keys) != n:
            raise WritebackError(f"The result holds {len(temp_keys)} shapes for {n} keys; run Animate again.")
        tm["keys"] = time.perf_counter() - t1
        t2 = time.perf_counter()
        for i, final in enumerate(finals):  # paths name the final keys: nothing evaluates them yet
            _key_curve(_new_fcurve(fcurves, _key_path(final)), *plan.curve(i))
        tm["fcurves"] = time.perf_counter() - t2
    except BaseException:
        for name in temp_keys:
            kb = key.key_blocks.get(name)
            if kb is not None:
                obj.shape_key_remove(kb)
        if act is not None:
            bpy.data.actions.remove(act)
        if made_basis and obj.data.shape_keys is not None and len(obj.data.shape_keys.key_blocks) == 1:
            obj.shape_key_clear()
        _restore_active(obj, prev_active)
        raise
    if progress is not None:
        progress(0.9)
    # swap: the previous result out, the new one renamed into place and put on the track
    t3 = time.perf_counter()
    created_basis = made_basis or bool(prev and prev.get("created_basis"))
    created_animdata = bool(prev and prev.get("created_animdata"))
    if prev:
        _remove_result(obj, key, prev)
        if prev.get("version", 1) < 2:
            _drop_created(obj, key, {"created_action": prev.get("created_action")})
    for tmp, final in zip(temp_keys, finals):
        key.key_blocks[tmp].name = final
    act.name = f"{PREFIX}{obj.name}"
    if key.animation_data is None:
        key.animation_data_create()
        created_animdata = True
    frames = plan.curve(0)[0] if n else np.array([plan.frame_start], np.float32)
    track, strip = _place_strip(key, act, int(frames[0]))
    tag = {
        "version": 2, "mode": plan.mode, "keys": finals, "frames": plan.frames,
        "frame_start": plan.frame_start, "frame_end": plan.frame_start + plan.frames - 1,
        "basis_size": plan.basis_size, "max_error": plan.max_error, "strength": plan.strength,
        "smoothing": plan.smoothing, "action": act.name, "track": track.name, "strip": strip.name,
        "created_basis": created_basis, "created_animdata": created_animdata, **(extra or {}),
    }
    key[TAG] = json.dumps(tag)
    _restore_active(obj, prev_active)
    mesh.update()
    tm["swap"] = time.perf_counter() - t3
    tm["total"] = tm.get("numerics", 0.0) + time.perf_counter() - t1
    return tag


def _restore_active(obj, name) -> None:
    sk = obj.data.shape_keys
    if sk is not None and name is not None and name in sk.key_blocks:
        obj.active_shape_key_index = sk.key_blocks.find(name)
    elif sk is not None:
        obj.active_shape_key_index = 0


def write_rig(obj, names, weights, ranges, frame_start: int, extra: dict | None = None,
              companions=(), timings: dict | None = None) -> dict:
    """Rig mode: key the values of the existing shape keys `names` with `weights` [T,K] (each
    within its range [K,2]) in an action of our own on the ScanTalk NLA strip; no shape key is
    added or changed. `companions`: (object, curves, rest) with curves [(data_path, index, values
    [T])] keyed on that object the same way (its own action and strip). The previous result is
    replaced only once everything is built. Returns the tag."""
    import bpy

    t0 = time.perf_counter()
    tm = {} if timings is None else timings
    _check_target(obj)
    key = obj.data.shape_keys
    missing = [n for n in names if key is None or n not in key.key_blocks]
    if missing:
        raise WritebackError(f"'{obj.name}' has no shape key {', '.join(missing[:5])} any more; run Animate again.")
    W = np.asarray(weights, np.float32)
    T, K = W.shape
    frame_start = int(frame_start)
    frames = np.arange(frame_start - 1, frame_start + T + 1, dtype=np.float32)
    rest = np.clip(0.0, ranges[:, 0], ranges[:, 1]).astype(np.float32)  # outside the clip: neutral
    prev = read_tag(key)
    prev_active = obj.active_shape_key.name if obj.active_shape_key else None
    # the driven keys' own values, restored by Remove Animation (a re-run keeps the first ones)
    rest_values = {n: float(key.key_blocks[n].value) for n in names}
    rest_values.update({n: v for n, v in ((prev or {}).get("rest_values") or {}).items() if n in rest_values})
    built = []  # (id, action)
    try:
        act = bpy.data.actions.new(name=f"{TEMP}{obj.name}")
        built.append((key, act))
        fcurves = _action_fcurves(act, key)
        for i, name in enumerate(names):
            vals = np.empty(T + 2, np.float32)
            vals[1:-1] = W[:, i]
            vals[0] = vals[-1] = rest[i]
            _key_curve(_new_fcurve(fcurves, _key_path(name)), frames, vals)
        for ob, curves, rest_vals in companions:
            cact = bpy.data.actions.new(name=f"{TEMP}{ob.name}")
            built.append((ob, cact))
            cf = _action_fcurves(cact, ob, id_type="OBJECT")
            for (path, index, values), r in zip(curves, rest_vals):
                vals = np.empty(T + 2, np.float32)
                vals[1:-1] = values
                vals[0] = vals[-1] = r
                _key_curve(_new_fcurve(cf, path, index), frames, vals)
    except BaseException:
        for _, a in built:
            bpy.data.actions.remove(a)
        raise
    tm["fcurves"] = time.perf_counter() - t0
    created_animdata = bool(prev and prev.get("created_animdata"))
    created_basis = bool(prev and prev.get("created_basis"))
    if prev:
        _remove_result(obj, key, prev)
        if prev.get("version", 1) < 2:
            _drop_created(obj, key, {"created_action": prev.get("created_action")})
    act.name = f"{PREFIX}{obj.name}"
    if key.animation_data is None:
        key.animation_data_create()
        created_animdata = True
    track, strip = _place_strip(key, act, int(frames[0]))
    comp = []
    for (ob, cact), (_, curves, rest_vals) in zip(built[1:], companions):
        cact.name = f"{PREFIX}{ob.name}"
        if ob.animation_data is None:
            ob.animation_data_create()
        _place_strip(ob, cact, int(frames[0]))
        comp.append({"object": ob.name, "action": cact.name, "paths": [[p, i] for p, i, _ in curves],
                     "rest": list(rest_vals)})
    tag = {
        "version": 2, "mode": "RIG", "keys": [], "driven": list(names), "frames": T,
        "frame_start": frame_start, "frame_end": frame_start + T - 1, "basis_size": K, "max_error": None,
        "action": act.name, "track": track.name, "strip": strip.name, "companions": comp,
        "rest_values": rest_values,
        "created_basis": created_basis, "created_animdata": created_animdata, **(extra or {}),
    }
    key[TAG] = json.dumps(tag)
    _restore_active(obj, prev_active)
    obj.data.update()
    tm["total"] = time.perf_counter() - t0
    return tag


def _all_fcurves(act) -> list:
    """Every F-curve of an action (layered 4.4+ or legacy)."""
    if act is None:
        return []
    if hasattr(act, "layers") and len(act.layers):
        return [fc for layer in act.layers for strip in layer.strips
                for cb in getattr(strip, "channelbags", []) for fc in cb.fcurves]
    return list(act.fcurves) if hasattr(act, "fcurves") else []


def keyed_weights(obj) -> tuple[list, np.ndarray, int, float]:
    """A Rig-mode result as keyed: (shape-key names, weights [T,K], first frame, fps)."""
    import bpy

    tag = result_info(obj)
    if not tag or tag.get("mode") != "RIG":
        raise WritebackError(f"'{getattr(obj, 'name', obj)}' has no ScanTalk Rig result: animate it in Rig mode first.")
    act = bpy.data.actions.get(tag.get("action", ""))
    curves = {fc.data_path: fc for fc in _all_fcurves(act)}
    names = list(tag["driven"])
    T = int(tag["frames"])
    W = np.zeros((T, len(names)), np.float32)
    for i, n in enumerate(names):
        fc = curves.get(_key_path(n))
        if fc is None:
            raise WritebackError(f"The ScanTalk action has no curve for '{n}' any more.")
        co = np.empty(len(fc.keyframe_points) * 2, np.float32)
        fc.keyframe_points.foreach_get("co", co)
        co = co.reshape(-1, 2)
        W[:, i] = np.interp(np.arange(T) + tag["frame_start"], co[:, 0], co[:, 1])
    return names, W, int(tag["frame_start"]), float(tag.get("fps") or 24.0)
