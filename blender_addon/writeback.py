"""Write per-frame offsets onto a mesh as shape-key animation, remove our previous result, and
nothing else.

Modes
- EXACT: one shape key per frame (`ST_f<frame>`), each with its own F-curve keyed 0/1/0 on
  frames f-1/f/f+1 (linear), so frame f shows exactly neutral + offsets[f]. Scrubbing costs
  O(keys^2) per frame in Blender (about 180 ms at 1,800 keys), so long clips get slow.
- COMPACT: a basis of K shape keys (`ST_pc00`...): the leading singular vectors of the offsets
  (uncentred, so the mean is folded into the basis), each scaled so its weights fit -1..1 (the
  slider range), with one F-curve of per-frame weights each. K is the smallest that keeps every
  vertex of every frame within `max_error` (checked on the data, not estimated).

Ours and only ours: the Key datablock carries an ID property `scantalk` (JSON) listing our key
names and what we created (basis, action, animation data). A re-run or `clear_result` removes only
those keys and the F-curves that animate them; the user's keys, values, drivers, NLA and F-curves
are never touched. A failure while writing removes what this run wrote before re-raising.

4.2-4.5 keep F-curves in `Action.fcurves`; 5.0 in a channelbag of the slot the Key uses
(`bpy_extras.anim_utils.action_ensure_channelbag_for_slot`). Both are handled here.
"""
from __future__ import annotations

import json
import math
import time

import numpy as np

PREFIX = "ST_"
TAG = "scantalk"
GROUP = "ScanTalk"
MODE_ITEMS = [
    ("COMPACT", "Compact", "A few basis shape keys with keyed weights: fast to scrub, small files, "
                           "within the max error of the exact result"),
    ("EXACT", "Exact", "One shape key per frame: exactly the model's output, but scrubbing slows down "
                       "with many frames (quadratic in the number of keys)"),
]
LINEAR = 1  # Keyframe.interpolation enum value


class WritebackError(RuntimeError):
    pass


# ------------------------------------------------------------------------------------------------
# numerics (no bpy)
# ------------------------------------------------------------------------------------------------
def smooth_time(x: np.ndarray, sigma: float) -> np.ndarray:
    """Gaussian smoothing along axis 0 (frames); edges hold their value. sigma in frames."""
    x = np.asarray(x, dtype=np.float32)
    if sigma <= 0 or x.shape[0] < 2:
        return x
    r = max(1, int(math.ceil(3 * sigma)))
    k = np.exp(-0.5 * (np.arange(-r, r + 1) / sigma) ** 2)
    k = (k / k.sum()).astype(np.float32)
    T = x.shape[0]
    idx = np.clip(np.arange(-r, T + r), 0, T - 1)
    out = np.zeros_like(x)
    for j, w in enumerate(k):
        out += w * x[idx[j:j + T]]
    return out


def _top_svd(D: np.ndarray, k: int, seed: int = 0):
    """Leading k singular triplets of D [T,N] (float32): returns U*S [T,k], the rows of Vt
    (computed on demand) and the squared row norms of D.

    Short clips use the T x T Gram matrix; longer ones a randomized range finder with one power
    step (Halko et al.): three thin products with D instead of a T x T x N one. The error is checked on
    the data afterwards either way, so a less accurate basis only costs a few more keys."""
    T, N = D.shape
    k = min(k, T, N)
    p = min(T, k + 16)
    energy = np.einsum("tn,tn->t", D, D).astype(np.float64)
    if T <= 2 * p:
        G = (D @ D.T).astype(np.float64)
        lam, U = np.linalg.eigh(G)
        lam, U = lam[::-1], U[:, ::-1]
        source, coef = D, U  # Vt rows = U^T D / s
    else:
        # range of (D D^T) applied to a small Gaussian sketch: a power step with no N x p
        # random matrix to draw; three passes over D in all
        rng = np.random.default_rng(seed)
        Y = D @ (D.T @ rng.standard_normal((T, p), dtype=np.float32))
        Q, _ = np.linalg.qr(Y.astype(np.float64))
        Bs = Q.T.astype(np.float32) @ D  # p x N: D projected on the range found
        lam, Ub = np.linalg.eigh((Bs @ Bs.T).astype(np.float64))
        lam, Ub = lam[::-1], Ub[:, ::-1]
        U = Q @ Ub
        source, coef = Bs, Ub  # Vt rows = Ub^T Bs / s
    pos = lam > max(lam[0], 1e-30) * 1e-12
    k = int(min(k, pos.sum()))
    s = np.sqrt(np.maximum(lam[:k], 0)).astype(np.float32)
    W = np.ascontiguousarray(U[:, :k], dtype=np.float32) * s
    return W, _LazyRows(source, np.ascontiguousarray(coef[:, :k], dtype=np.float32), s), energy


class _LazyRows:
    """Rows of Vt = diag(1/s) C^T M, computed in blocks only as far as they are asked for
    (the search rarely needs all of them)."""

    def __init__(self, M, C, s, block: int = 16):
        self.M, self.C, self.s, self.block = M, C, s, block
        self.rows = np.zeros((0, M.shape[1]), np.float32)

    def __len__(self):
        return len(self.s)

    def upto(self, k: int) -> np.ndarray:
        k = min(k, len(self.s))
        if k > len(self.rows):
            n = min(len(self.s), -(-k // self.block) * self.block)
            a = len(self.rows)
            new = (self.C[:, a:n].T @ self.M) / self.s[a:n, None]
            self.rows = np.concatenate([self.rows, new]) if a else new
        return self.rows[:k]

    def __getitem__(self, sl):
        assert isinstance(sl, slice) and sl.start in (None, 0)
        return self.upto(len(self.s) if sl.stop is None else sl.stop)


CHUNK = 16  # frames per block when measuring the error (a few MB: stays in cache)


def _max_vertex_error(D, W, B, k, chunk_order, limit=None, chunk=CHUNK) -> float:
    """An upper bound of max over frames and vertices of |D - W[:, :k] @ B[:k]| (per vertex,
    Euclidean), exact wherever it is close to `limit`; returns as soon as it exceeds `limit`.

    Per block: the largest coordinate error c gives c <= err <= sqrt(3) c, so a block is decided
    without the per-vertex norm unless c falls between limit/sqrt(3) and limit."""
    T = D.shape[0]
    worst = 0.0
    r3 = math.sqrt(3.0)
    for c in chunk_order:
        sl = slice(c * chunk, min(T, (c + 1) * chunk))
        if k:
            R = W[sl, :k] @ B[:k]
            R -= D[sl]
        else:
            R = -D[sl]
        hi = max(float(R.max()), -float(R.min()))
        if limit is not None:
            if hi > limit:
                return hi  # a coordinate alone is over: so is its vertex
            if hi * r3 <= limit:
                worst = max(worst, hi * r3)
                continue
        np.square(R, out=R)
        s = R[:, 0::3] + R[:, 1::3]  # strided adds: ~15x faster than reshape(...).sum(axis=2)
        s += R[:, 2::3]
        e = math.sqrt(float(s.max()))
        worst = max(worst, e)
        if limit is not None and worst > limit:
            return worst
    return worst


def compact_basis(D: np.ndarray, max_error: float, k_max: int = 64, k_first: int = 32):
    """Choose K and return (W [T,K], B [K,N], err, K) with D ~= W @ B.

    K is the smallest (up to k_max) whose reconstruction keeps every vertex of every frame within
    max_error, checked on the data; err is a bound of the real max error (exact near the limit).
    If even k_max does not reach max_error, k_max is used and its real error returned.
    The basis is first computed for k_first keys (enough for most speech) and only widened when
    that is not enough."""
    D = np.ascontiguousarray(D, dtype=np.float32)
    k_try = max(1, min(k_max, k_first))
    while True:
        W, B, e, k, reached = _search_k(D, float(max_error), k_try)
        if reached or k_try >= k_max or W.shape[1] < k_try:  # met, or no wider basis possible
            return W, B, e, k
        k_try = min(k_max, 2 * k_try)


def _search_k(D, tol, k_try):
    T, N = D.shape
    W, B, energy = _top_svd(D, k_try)
    kmax = W.shape[1]
    if kmax == 0:
        return W, B[:0], 0.0, 0, True
    V = N // 3
    cum = np.cumsum(W.astype(np.float64) ** 2, axis=1)
    slack = 1e-4 * energy  # float32 round-off in the energy difference: keep the bound a lower bound
    n_chunks = (T + CHUNK - 1) // CHUNK

    def left(k):  # energy of frame t the first k components leave (exact for orthonormal B)
        return energy - (cum[:, k - 1] if k else 0.0)

    def order(k):
        # blocks with the most energy left are where the error is: a failing K stops early there
        per_chunk = np.maximum.reduceat(left(k), np.arange(0, T, CHUNK))
        return np.argsort(-per_chunk)[:n_chunks]

    def err(k, limit, blocks=None):
        return _max_vertex_error(D, W, B, k, order(k)[:blocks], limit)

    def smallest(lo, hi, ok):
        """Smallest k in [lo, hi] with ok(k), assuming ok is monotone; hi if none."""
        fail, k, step = lo - 1, lo, 1
        while not ok(k) and k < hi:  # gallop up: failures are cheap
            fail, k, step = k, min(hi, k + step), step * 2
        while k - fail > 1:
            mid = (fail + k) // 2
            if ok(mid):
                k = mid
            else:
                fail = mid
        return k

    lo = 1  # below it, some frame's leftover energy alone exceeds the tolerance
    while lo < kmax and math.sqrt(max(0.0, float((left(lo) - slack).max())) / V) > tol:
        lo += 1
    # 1) a cheap lower bound of the error: the few blocks with the most energy left
    k0 = smallest(lo, kmax, lambda k: err(k, tol, blocks=3) <= tol)
    # 2) the full check from there up (usually passes at once)
    found = {}

    def full_ok(k):
        found[k] = err(k, tol)
        return found[k] <= tol

    k = smallest(k0, kmax, full_ok)
    e = found.get(k)
    if e is None or e > tol:  # not reachable with this basis: report the real error of all of it
        return W, B[:kmax], err(kmax, None), kmax, False
    return W[:, :k], B[:k], e, k, True


# ------------------------------------------------------------------------------------------------
# Blender side
# ------------------------------------------------------------------------------------------------
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


def _ensure_fcurves(key, created: dict):
    """The F-curve collection for the Key's shape-key values (creating animation data, action
    and slot when missing, and noting what was created)."""
    import bpy

    ad = key.animation_data
    if ad is None:
        ad = key.animation_data_create()
        created["animdata"] = True
    act = ad.action
    if act is None:
        owner = getattr(key, "user", None)
        act = bpy.data.actions.new(name=f"{PREFIX}{owner.name if owner is not None else key.name}")
        created["action"] = act.name
        ad.action = act
    if hasattr(act, "slots") and hasattr(ad, "action_slot"):  # slotted actions (4.4+)
        slot = ad.action_slot
        if slot is None:
            slot = act.slots.new(id_type="KEY", name=key.name)
            ad.action_slot = slot
        from bpy_extras import anim_utils

        ensure = getattr(anim_utils, "action_ensure_channelbag_for_slot", None)
        if ensure is not None:  # 5.0
            return ensure(act, slot).fcurves
        try:  # 4.4/4.5: the slot's channelbag on the first keyframe strip
            layer = act.layers[0] if len(act.layers) else act.layers.new("Layer")
            strip = layer.strips[0] if len(layer.strips) else layer.strips.new(type="KEYFRAME")
            return strip.channelbag(slot, ensure=True).fcurves
        except (AttributeError, TypeError, RuntimeError):
            pass
    return act.fcurves  # legacy API (4.2; 4.4/4.5 map it to the first slot)


def _new_fcurve(fcurves, path):
    try:
        return fcurves.new(path, index=0, group_name=GROUP)  # 5.0 channelbag
    except TypeError:
        try:
            return fcurves.new(path, index=0, action_group=GROUP)  # legacy Action.fcurves
        except TypeError:
            return fcurves.new(path, index=0)


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


def clear_result(obj) -> bool:
    """Remove our previous result from `obj` (True if there was one)."""
    if obj is None or obj.type != "MESH" or obj.data.shape_keys is None:
        return False
    key = obj.data.shape_keys
    tag = read_tag(key)
    if tag is None:
        return False
    active = obj.active_shape_key.name if obj.active_shape_key else None
    _remove_names(obj, key, set(tag.get("keys", [])))
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


def write_result(obj, offsets, frame_start: int, mode: str = "COMPACT", strength: float = 1.0,
                 smoothing: float = 0.0, max_error: float | None = None, k_max: int = 64,
                 extra: dict | None = None, timings: dict | None = None) -> dict:
    """Replace our previous result on `obj` with `offsets` [T,V,3] (object local space), the first
    frame on scene frame `frame_start`. `max_error` (local units) is for COMPACT. Returns the tag."""
    t0 = time.perf_counter()
    tm = {} if timings is None else timings
    if obj is None or obj.type != "MESH":
        raise WritebackError("ScanTalk writes onto a mesh object.")
    if obj.data.library is not None or getattr(obj.data, "override_library", None) is not None:
        raise WritebackError(f"Mesh '{obj.data.name}' is linked from a library; make it local first.")
    off = np.asarray(offsets, dtype=np.float32)
    V = len(obj.data.vertices)
    if off.ndim != 3 or off.shape[2] != 3 or off.shape[1] != V:
        raise WritebackError(f"The result has shape {list(off.shape)} but '{obj.name}' has {V} vertices; "
                             "the mesh changed while it was being animated. Run Animate again.")
    if not np.isfinite(off.sum()):  # one read pass: any NaN or inf makes the sum non-finite
        raise WritebackError("The backend returned NaN or infinite offsets; nothing was written.")
    T = off.shape[0]
    if T == 0:
        raise WritebackError("The backend returned no frames (the audio is too short?).")
    frame_start = int(frame_start)
    D = off.reshape(T, V * 3)
    if strength != 1.0:
        D = D * np.float32(strength)

    # 1. all numerics first: a failure here touches nothing
    if mode == "EXACT":
        if smoothing > 0:
            D = smooth_time(D, smoothing)
        K, err = T, 0.0
    elif mode == "COMPACT":
        tol = float(max_error) if max_error and max_error > 0 else 0.0
        W, B, err, K = compact_basis(D, tol, k_max=max(1, int(k_max)))
        if smoothing > 0:
            W = smooth_time(W, smoothing)
        scale = np.abs(W).max(axis=0) if K else np.zeros(0, np.float32)
        scale[scale == 0] = 1.0
        W = np.clip(W / scale, -1.0, 1.0)
        B = B * scale[:, None]
    else:
        raise WritebackError(f"unknown mode '{mode}': use COMPACT or EXACT")
    tm["numerics"] = time.perf_counter() - t0

    # 2. Blender data: remove our previous result, write the new one, undo ours on failure
    t1 = time.perf_counter()
    mesh = obj.data
    prev_active = obj.active_shape_key.name if obj.active_shape_key else None
    clear_result(obj)
    created = {"keys": [], "basis": False, "animdata": False, "action": None}
    key = mesh.shape_keys
    try:
        if key is None:
            obj.shape_key_add(name="Basis", from_mix=False)
            created["basis"] = True
            key = mesh.shape_keys
        basis = _basis_co(obj)
        fcurves = _ensure_fcurves(key, created)
        frames = np.arange(frame_start, frame_start + T, dtype=np.float32)
        if mode == "EXACT":
            for i in range(T):
                kb = obj.shape_key_add(name=f"{PREFIX}f{frame_start + i:04d}", from_mix=False)
                created["keys"].append(kb.name)
                _points(kb).foreach_set("co", basis + D[i])
            tm["keys"] = time.perf_counter() - t1
            t2 = time.perf_counter()
            tri = np.array([0.0, 1.0, 0.0], dtype=np.float32)
            for i, name in enumerate(created["keys"]):
                f = frames[i]
                _key_curve(_new_fcurve(fcurves, _key_path(name)), np.array([f - 1, f, f + 1], np.float32), tri)
        else:
            edge = np.concatenate([[frame_start - 1], frames, [frame_start + T]]).astype(np.float32)
            for j in range(K):
                kb = obj.shape_key_add(name=f"{PREFIX}pc{j:02d}", from_mix=False)
                created["keys"].append(kb.name)
                kb.slider_min, kb.slider_max = -1.0, 1.0
                _points(kb).foreach_set("co", basis + B[j])
            tm["keys"] = time.perf_counter() - t1
            t2 = time.perf_counter()
            for j, name in enumerate(created["keys"]):
                vals = np.concatenate([[0.0], W[:, j], [0.0]]).astype(np.float32)
                _key_curve(_new_fcurve(fcurves, _key_path(name)), edge, vals)
        tm["fcurves"] = time.perf_counter() - t2
        tag = {
            "version": 1, "mode": mode, "keys": created["keys"], "frames": T,
            "frame_start": frame_start, "frame_end": frame_start + T - 1, "basis_size": K,
            "max_error": float(err), "strength": float(strength), "smoothing": float(smoothing),
            "created_basis": created["basis"], "created_action": created["action"],
            "created_animdata": created["animdata"], **(extra or {}),
        }
        key[TAG] = json.dumps(tag)
    except Exception:
        if key is not None:
            _remove_names(obj, key, set(created["keys"]))
            _drop_created(obj, key, {"created_basis": created["basis"], "created_action": created["action"],
                                     "created_animdata": created["animdata"]})
        raise
    finally:
        sk = obj.data.shape_keys
        if sk is not None and prev_active is not None and prev_active in sk.key_blocks:
            obj.active_shape_key_index = sk.key_blocks.find(prev_active)
        elif sk is not None:
            obj.active_shape_key_index = 0
    mesh.update()
    tm["total"] = time.perf_counter() - t0
    return tag
