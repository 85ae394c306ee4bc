"""Rig mode: drive the shape keys a head already has (ARKit-52 or any set) with the predicted motion.

    names, deltas, ranges = collect_keys(obj, keyset, listed, ours)   # bpy objects in, numpy out
    (the worker solves the weights: backend/rig_solve.py, docs/protocol.md `rig`)
    read_fit(result_path) -> RigResult                                 # plain numpy, thread-safe

The solve itself runs in the backend worker (one implementation, numpy/scipy there); this module
keeps only what Blender's side needs: which keys, their deltas, reading the weights back, and the
Live Link Face CSV / JSON export (a small copy of the backend's name table; a plain test checks
that the two agree). No bpy import at module level.
"""
from __future__ import annotations

import csv
import io
import json
import re
from dataclasses import dataclass, field

import numpy as np

KEYSET_ITEMS = [
    ("ALL", "All Keys", "Every shape key of the mesh that is not ScanTalk's own (and not muted)"),
    ("ARKIT", "ARKit 52", "The keys named like Apple's 52 ARKit blend shapes (jawOpen, eyeBlink_L, "
                          "EyeBlinkLeft... any spelling)"),
    ("LIST", "List", "The keys named in Rig Keys (comma-separated)"),
]

ARKIT_52 = [
    "eyeBlinkLeft", "eyeLookDownLeft", "eyeLookInLeft", "eyeLookOutLeft", "eyeLookUpLeft", "eyeSquintLeft",
    "eyeWideLeft", "eyeBlinkRight", "eyeLookDownRight", "eyeLookInRight", "eyeLookOutRight", "eyeLookUpRight",
    "eyeSquintRight", "eyeWideRight", "jawForward", "jawLeft", "jawRight", "jawOpen", "mouthClose",
    "mouthFunnel", "mouthPucker", "mouthLeft", "mouthRight", "mouthSmileLeft", "mouthSmileRight",
    "mouthFrownLeft", "mouthFrownRight", "mouthDimpleLeft", "mouthDimpleRight", "mouthStretchLeft",
    "mouthStretchRight", "mouthRollLower", "mouthRollUpper", "mouthShrugLower", "mouthShrugUpper",
    "mouthPressLeft", "mouthPressRight", "mouthLowerDownLeft", "mouthLowerDownRight", "mouthUpperUpLeft",
    "mouthUpperUpRight", "browDownLeft", "browDownRight", "browInnerUp", "browOuterUpLeft", "browOuterUpRight",
    "cheekPuff", "cheekSquintLeft", "cheekSquintRight", "noseSneerLeft", "noseSneerRight", "tongueOut",
]
LIVE_LINK_EXTRA = ["HeadYaw", "HeadPitch", "HeadRoll", "LeftEyeYaw", "LeftEyePitch", "LeftEyeRoll",
                   "RightEyeYaw", "RightEyePitch", "RightEyeRoll"]
LIVE_LINK_HEADER = ["Timecode", "BlendShapeCount", *[n[0].upper() + n[1:] for n in ARKIT_52], *LIVE_LINK_EXTRA]


class RigSetupError(ValueError):
    pass


_SIDE = [(re.compile(r"(_|\.|-| )l$"), "left"), (re.compile(r"(_|\.|-| )r$"), "right"),
         (re.compile(r"^l(_|\.|-| )"), "left"), (re.compile(r"^r(_|\.|-| )"), "right")]


def normalize_name(name: str) -> str:
    n = str(name).strip().lower()
    for prefix in ("arkit_", "arkit.", "arkit-", "arkit "):
        if n.startswith(prefix):
            n = n[len(prefix):]
    for rx, side in _SIDE:
        if rx.search(n):
            n = rx.sub("", n) + side
            break
    return re.sub(r"[^a-z0-9]", "", n)


def arkit_columns(names) -> dict:
    norm = [normalize_name(n) for n in names]
    out = {}
    for a in ARKIT_52:
        al = a.lower()
        hit = [i for i, n in enumerate(norm) if n == al]
        if not hit:
            hit = [i for i, n in enumerate(norm) if n in (al + "left", al + "right")]
        if hit:
            out[a] = hit
    return out


def arkit_keys(names) -> list:
    return sorted({i for idx in arkit_columns(names).values() for i in idx})


def split_list(text: str) -> list:
    return [p.strip() for p in re.split(r"[,;\n]", text or "") if p.strip()]


# ---- keys of the mesh (bpy objects passed in) ----------------------------------------------------
def _points(kb):
    return getattr(kb, "points", None) or kb.data


def _co(kb, n):
    a = np.empty(n * 3, np.float32)
    _points(kb).foreach_get("co", a)
    return a.reshape(n, 3)


def _group_weights(obj, name: str, n: int) -> np.ndarray:
    vg = obj.vertex_groups.get(name)
    w = np.zeros(n, np.float32)
    if vg is None:
        return np.ones(n, np.float32)
    gi = vg.index
    for v in obj.data.vertices:
        for g in v.groups:
            if g.group == gi:
                w[v.index] = g.weight
    return w


def candidate_keys(obj, ours=()) -> list:
    """Shape keys that can be driven: not the basis, not ScanTalk's, not muted."""
    key = obj.data.shape_keys
    if key is None:
        return []
    ours = set(ours)
    return [kb for kb in key.key_blocks
            if kb != key.reference_key and kb.name not in ours and not kb.name.startswith("ST_") and not kb.mute]


def collect_keys(obj, keyset: str = "ALL", listed: str = "", ours=()) -> tuple:
    """(names, deltas float32 [K,V,3] in local space, ranges float32 [K,2]) of the keys to drive.
    A key's delta is its offset from its relative key, times its vertex group if it has one."""
    key = obj.data.shape_keys
    if key is None or len(key.key_blocks) < 2:
        raise RigSetupError(f"'{obj.name}' has no shape keys to drive: Rig mode keys the shape keys a head "
                            "already has (e.g. ARKit blend shapes); use Compact or Exact for a mesh without them.")
    cands = candidate_keys(obj, ours)
    if keyset == "ARKIT":
        idx = arkit_keys([kb.name for kb in cands])
        if not idx:
            raise RigSetupError(f"'{obj.name}' has no shape keys named like ARKit blend shapes (jawOpen, "
                                "mouthClose, eyeBlink_L...): pick All Keys or a List.")
        chosen = [cands[i] for i in idx]
    elif keyset == "LIST":
        want = split_list(listed)
        if not want:
            raise RigSetupError("Rig Keys is empty: name the shape keys to drive, separated by commas.")
        by_name = {kb.name: kb for kb in cands}
        missing = [n for n in want if n not in by_name]
        if missing:
            raise RigSetupError(f"'{obj.name}' has no (unmuted) shape key named {', '.join(missing)}.")
        chosen = [by_name[n] for n in dict.fromkeys(want)]
    else:
        chosen = cands
    if not chosen:
        raise RigSetupError(f"'{obj.name}' has no shape keys of its own to drive (only ScanTalk's or muted ones).")
    n = len(obj.data.vertices)
    cache = {}

    def co(kb):
        if kb.name not in cache:
            cache[kb.name] = _co(kb, n)
        return cache[kb.name]

    deltas = np.empty((len(chosen), n, 3), np.float32)
    for i, kb in enumerate(chosen):
        rel = kb.relative_key if kb.relative_key is not None else key.reference_key
        d = co(kb) - co(rel)
        if kb.vertex_group:
            d *= _group_weights(obj, kb.vertex_group, n)[:, None]
        deltas[i] = d
    ranges = np.array([[kb.slider_min, kb.slider_max] for kb in chosen], np.float32)
    return [kb.name for kb in chosen], deltas, ranges


def save_keys_npz(path, names, deltas_model, ranges) -> None:
    """The worker's keys file (docs/protocol.md, `rig`)."""
    np.savez(path, names=np.array(names, dtype=str), deltas=np.asarray(deltas_model, np.float32),
             ranges=np.asarray(ranges, np.float32))


# ---- the worker's answer ---------------------------------------------------------------------------
@dataclass
class RigResult:
    names: list
    weights: np.ndarray  # float32 [T, K] within ranges
    ranges: np.ndarray
    report: dict = field(default_factory=dict)


def read_fit(path) -> RigResult:
    with np.load(path, allow_pickle=False) as d:
        if "rig_weights" not in d:
            raise RigSetupError("The backend's result holds no rig weights (is the backend older than the add-on? "
                                "Press 'Set up backend' again).")
        return RigResult(names=[str(n) for n in d["rig_names"]], weights=np.asarray(d["rig_weights"], np.float32),
                         ranges=np.asarray(d["rig_ranges"], np.float32), report=json.loads(str(d["rig_report"])))


def fit_summary(rep: dict) -> str:
    return (f"fit error lips {rep['lips_mean_mm']:.2f} mm mean, {rep['lips_max_mm']:.2f} mm max; face "
            f"{rep['face_mean_mm']:.2f} mm mean, {rep['face_max_mm']:.2f} mm max")


# ---- export ------------------------------------------------------------------------------------
def timecode(frame: int, fps: float) -> str:
    fps_i = max(1, int(round(fps)))
    secs, ff = divmod(int(frame), fps_i)
    h, rem = divmod(secs, 3600)
    mi, se = divmod(rem, 60)
    return f"{h:02d}:{mi:02d}:{se:02d}:{ff:02d}.000"


def arkit_table(names, weights) -> np.ndarray:
    W = np.asarray(weights, np.float32)
    out = np.zeros((W.shape[0], len(ARKIT_52)), np.float32)
    for a, idx in arkit_columns(names).items():
        out[:, ARKIT_52.index(a)] = W[:, idx].mean(axis=1)
    return out


def live_link_csv(names, weights, fps: float, start_frame: int = 0) -> str:
    """Live Link Face's CSV: Timecode, BlendShapeCount (61), the 52 ARKit shapes in Apple's order
    (a left/right pair standing for one shape is averaged; shapes the rig lacks are 0), then head
    and eye rotations (0)."""
    A = arkit_table(names, weights)
    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    w.writerow(LIVE_LINK_HEADER)
    extra = ["0"] * len(LIVE_LINK_EXTRA)
    for t in range(A.shape[0]):
        w.writerow([timecode(start_frame + t, fps), len(ARKIT_52) + len(LIVE_LINK_EXTRA),
                    *(f"{v:.6g}" for v in A[t]), *extra])
    return buf.getvalue()


def weights_json(names, weights, fps: float, start_frame: int, ranges=None, report=None) -> str:
    W = np.asarray(weights, np.float32)
    doc = {"fps": float(fps), "start_frame": int(start_frame), "frames": int(W.shape[0]), "names": list(names),
           "weights": [[round(float(v), 6) for v in row] for row in W]}
    if ranges is not None:
        doc["ranges"] = np.asarray(ranges, np.float32).tolist()
    if report:
        doc["fit"] = report
    return json.dumps(doc, indent=None)
