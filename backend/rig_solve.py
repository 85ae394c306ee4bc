"""Drive an existing shape-key rig: per-frame weights of chosen keys that best reproduce per-vertex
offsets. numpy only (no scipy, torch or bpy): the CLI and the worker use it; the Blender add-on
asks the worker (docs/protocol.md, `animate` with a `rig` field).

    keys = RigKeys(names, deltas [K,V,3], ranges [K,2])          # or load_keys("keys.npz")
    fit = solve(offsets [T,V,3], keys, smooth=0.05)               # RigFit: weights [T,K], report

The solve, for the whole clip at once:

    min_X  sum_t |x_t D - y_t|^2 + lam * sum_t |x_t - x_{t-1}|^2     lo <= x_t <= hi

(D the keys' deltas [K, 3V], y_t the frame's offsets). Only the K x K Gram matrix G = D D^T and
B = Y D^T [T, K] touch the vertices (one pass over the offsets); the rest is ADMM on K-dim
variables: the x-step (I_T (x) G + lam L (x) I_K + rho I) X = R is solved exactly in the basis that
diagonalises both G (eigenvectors) and the path Laplacian L (DCT-II), the z-step clips to the
slider ranges. Each key is scaled to unit data weight (x~ = sqrt(G_kk) x) and lam = smooth: a
weight step costs `smooth` times what the same weight error costs in the data term, for every key.

The fit report measures the per-vertex Euclidean error of the rig's motion against the offsets,
mean and max, on the lips and the moving face (a second pass over the offsets). A rig that cannot
express the mouth motion (it explains < MIN_EXPLAINED of the lip motion's energy) raises RigError.

keys.npz layout (`save_keys` / `load_keys`):
    names   str [K]          shape-key names
    deltas  float32 [K,V,3]  each key's offset from the neutral at weight 1, same frame/units as
                             the offsets
    ranges  float32 [K,2]    slider min, max of each key (optional: [0, 1])
    lips    int [L]          optional lip vertex indices (default: found from the motion)
    metres_per_unit float    optional (default: the result's unit snap, else 1)
"""
from __future__ import annotations

import csv
import io
import json
import math
import re
import time
import zipfile
from dataclasses import dataclass, field

import numpy as np

from . import framing
from .errors import ScanTalkError

MIN_EXPLAINED = 0.5  # of the lip motion's energy; below it the rig cannot express the speech
DEFAULT_SMOOTH = 0.001

# Apple's ARKit blend shapes in the order Live Link Face writes them (Unreal's EARFaceBlendShape),
# then its head and eye rotation columns.
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


class RigError(ScanTalkError, ValueError):
    code = "rig"


# ---- names ---------------------------------------------------------------------------------------
_SIDE = [(re.compile(r"(_|\.|-| )l$"), "left"), (re.compile(r"(_|\.|-| )r$"), "right"),
         (re.compile(r"^l(_|\.|-| )"), "left"), (re.compile(r"^r(_|\.|-| )"), "right")]


def normalize_name(name: str) -> str:
    """'eyeBlink_L', 'EyeBlinkLeft', 'ARKit.eyeBlinkLeft', 'eye_blink_left' -> 'eyeblinkleft'."""
    n = str(name).strip().lower()
    for prefix in ("arkit_", "arkit.", "arkit-", "arkit "):
        if n.startswith(prefix):
            n = n[len(prefix):]
    for rx, side in _SIDE:
        if rx.search(n):
            n = rx.sub("", n) + side
            break
    return re.sub(r"[^a-z0-9]", "", n)


_ARKIT_NORM = {n.lower(): n for n in ARKIT_52}


def arkit_columns(names) -> dict[str, list[int]]:
    """ARKit name -> indices of `names` that play it: the key of that name (any spelling), or, for
    a rig that splits one ARKit shape into a left and a right key (browInnerUp_L/_R, cheekPuff_L/_R
    in ICT FaceKit), both halves."""
    norm = [normalize_name(n) for n in names]
    out: dict[str, list[int]] = {}
    for a in ARKIT_52:
        al = a.lower()
        hit = [i for i, n in enumerate(norm) if n == al]
        if not hit:
            hit = [i for i, n in enumerate(norm) if n in (al + "left", al + "right")]
        if hit:
            out[a] = hit
    return out


def arkit_keys(names) -> list[int]:
    """Indices of `names` that belong to the ARKit-52 preset, in the order of `names`."""
    return sorted({i for idx in arkit_columns(names).values() for i in idx})


# ---- keys file -----------------------------------------------------------------------------------
@dataclass
class RigKeys:
    names: list
    deltas: np.ndarray  # float32 [K, V, 3]
    ranges: np.ndarray  # float32 [K, 2]
    lips: np.ndarray | None = None  # vertex indices
    metres_per_unit: float | None = None

    def __post_init__(self):
        self.names = [str(n) for n in self.names]
        self.deltas = np.asarray(self.deltas, dtype=np.float32)
        K = len(self.names)
        if self.deltas.ndim != 3 or self.deltas.shape[0] != K or self.deltas.shape[2] != 3:
            raise RigError(f"rig deltas have shape {list(self.deltas.shape)}; expected [{K}, V, 3] for {K} names")
        if self.ranges is None:
            self.ranges = np.tile(np.array([0.0, 1.0], np.float32), (K, 1))
        self.ranges = np.asarray(self.ranges, dtype=np.float32).reshape(K, 2)
        if np.any(self.ranges[:, 0] > self.ranges[:, 1]) or not np.all(np.isfinite(self.ranges)):
            raise RigError("every rig key needs a range min <= max")
        if K == 0:
            raise RigError("the rig has no shape keys to drive")


def save_keys(path, keys: RigKeys) -> None:
    extra = {}
    if keys.lips is not None:
        extra["lips"] = np.asarray(keys.lips, np.int64)
    if keys.metres_per_unit:
        extra["metres_per_unit"] = np.float64(keys.metres_per_unit)
    np.savez(path, names=np.array(keys.names, dtype=str), deltas=keys.deltas, ranges=keys.ranges, **extra)


def load_keys(path) -> RigKeys:
    try:
        with np.load(path, allow_pickle=False) as d:
            lips = np.asarray(d["lips"], np.int64) if "lips" in d else None
            mpu = float(d["metres_per_unit"]) if "metres_per_unit" in d else None
            return RigKeys([str(n) for n in d["names"]], d["deltas"], d["ranges"] if "ranges" in d else None,
                           lips, mpu)
    except (OSError, KeyError, ValueError) as exc:
        if isinstance(exc, RigError):
            raise
        raise RigError(f"cannot read the rig keys file {path}: {exc} (expected an npz with names, deltas "
                       "[K,V,3] and ranges [K,2])") from exc


# ---- the solve -----------------------------------------------------------------------------------
def _frames(offsets, chunk):
    """Yield (a, b, float32 [b-a, V*3]) blocks of frames from an array or a ResultFile-like."""
    T = offsets.shape[0]
    for a in range(0, T, chunk):
        b = min(T, a + chunk)
        blk = offsets.frames(a, b) if hasattr(offsets, "frames") else offsets[a:b]
        # a copy the caller may change in place (never a view of the caller's offsets)
        yield a, b, np.array(blk, dtype=np.float32, order="C").reshape(b - a, -1)


def _support(deltas: np.ndarray) -> np.ndarray:
    """Coordinates (of V*3) some key moves: the rest cannot change the weights."""
    return np.flatnonzero(np.any(deltas.reshape(deltas.shape[0], -1) != 0, axis=0))


def _dct(x: np.ndarray) -> np.ndarray:
    """Orthonormal DCT-II along axis 0 (= scipy.fft.dct(x, 2, axis=0, norm="ortho")), numpy only."""
    N = x.shape[0]
    v = np.concatenate([x[0::2], x[1::2][::-1]], axis=0)
    k = np.arange(N).reshape((N,) + (1,) * (x.ndim - 1))
    X = (np.exp(-1j * np.pi * k / (2 * N)) * np.fft.fft(v, axis=0)).real * np.sqrt(2.0 / N)
    X[0] /= np.sqrt(2.0)
    return X


def _idct(X: np.ndarray) -> np.ndarray:
    """Inverse of _dct (orthonormal DCT-III along axis 0)."""
    N = X.shape[0]
    k = np.arange(N).reshape((N,) + (1,) * (X.ndim - 1))
    Z = X * np.sqrt(2.0 / N)
    Z[0] = Z[0] / np.sqrt(2.0)
    U = np.zeros((2 * N,) + X.shape[1:], np.complex128)
    U[:N] = Z * np.exp(1j * np.pi * k / (2 * N))
    return np.fft.ifft(U, axis=0)[:N].real * (2 * N)


def solve_weights(B: np.ndarray, G: np.ndarray, ranges: np.ndarray, smooth: float = DEFAULT_SMOOTH,
                  tol: float = 1e-5, max_iter: int = 2000, cancel=None) -> tuple[np.ndarray, dict]:
    """Box-constrained, temporally smoothed least squares from the normal equations:
    min sum_t (x_t G x_t - 2 b_t x_t) + lam |x_t - x_{t-1}|^2, ranges[:,0] <= x <= ranges[:,1].
    B [T,K], G [K,K]. Returns (X [T,K] float32 within the ranges, info)."""
    t0 = time.perf_counter()
    B = np.asarray(B, np.float64)
    T, K = B.shape
    lo, hi = ranges[:, 0].astype(np.float64), ranges[:, 1].astype(np.float64)
    G = np.asarray(G, np.float64)
    d = np.diag(G).copy()
    if not np.any(d > 0):
        return np.clip(np.zeros((T, K)), lo, hi).astype(np.float32), {"iterations": 0, "seconds": 0.0}
    # per-key scaling x~ = s x, s = sqrt(G_kk): unit diagonal, so every key gets the same relative
    # smoothing (a small key is not flattened by a term sized for a big one); a key that moves
    # nothing keeps its lowest allowed magnitude
    d[d <= 0] = max(float(d.max()) * 1e-12, 1e-30)
    sc = np.sqrt(d)
    G = G / np.outer(sc, sc) + 1e-9 * np.eye(K)
    B = B / sc
    lo, hi = lo * sc, hi * sc
    g, Q = np.linalg.eigh(G)
    g = np.maximum(g, 0.0)
    lam = float(smooth)
    m = 4.0 * np.sin(np.pi * np.arange(T) / (2.0 * T)) ** 2  # path Laplacian eigenvalues (DCT-II basis)
    MG = lam * m[:, None] + g[None, :]

    def x_step(R, rho):
        return _idct(_dct(R @ Q) / (MG + rho)) @ Q.T

    rho = float(np.sqrt(max(g.max(), 1e-12) * max(np.median(g), 1e-6)))
    X = x_step(B, 0.0 + 1e-9) if g.min() > 1e-6 else x_step(B, 1e-3)
    Z = np.clip(X, lo, hi)
    U = np.zeros_like(Z)
    it, r_norm, s_norm = 0, 0.0, 0.0
    bn = max(np.linalg.norm(B), 1e-30)
    for it in range(1, max_iter + 1):
        X = x_step(B + rho * (Z - U), rho)
        Z_old = Z
        Z = np.clip(X + U, lo, hi)
        U += X - Z
        r_norm = np.linalg.norm(X - Z)
        s_norm = rho * np.linalg.norm(Z - Z_old)
        eps_p = tol * max(np.linalg.norm(Z), 1.0)
        eps_d = tol * max(rho * np.linalg.norm(U), bn)
        if r_norm <= eps_p and s_norm <= eps_d:
            break
        if it % 10 == 0:
            if cancel is not None and cancel():
                from .errors import Cancelled

                raise Cancelled("cancelled")
            if r_norm > 10 * s_norm:
                rho *= 2.0
                U /= 2.0
            elif s_norm > 10 * r_norm:
                rho /= 2.0
                U *= 2.0
    info = {"iterations": it, "primal_residual": float(r_norm), "dual_residual": float(s_norm),
            "seconds": time.perf_counter() - t0, "lambda": lam}
    X = np.clip(Z / sc, ranges[:, 0], ranges[:, 1])
    return X.astype(np.float32), info


def motion_masks(rms: np.ndarray, lips: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray, str]:
    """(lip mask, moving-face mask, how the lips were chosen) from each vertex's RMS motion [V].
    Without given lips: the vertices moving at least half as much as the most moving ones (lips,
    and with them the chin) - speech moves the mouth most. The face: vertices moving >= 5% of that."""
    V = rms.shape[0]
    ref = float(np.quantile(rms, 0.998)) if V else 0.0
    face = rms >= 0.05 * ref if ref > 0 else np.zeros(V, bool)
    if lips is not None and len(lips):
        m = np.zeros(V, bool)
        m[np.asarray(lips, np.int64)] = True
        return m, face | m, "given"
    return (rms >= 0.5 * ref) if ref > 0 else np.zeros(V, bool), face, "motion"


@dataclass
class RigFit:
    names: list
    ranges: np.ndarray
    weights: np.ndarray  # float32 [T, K]
    report: dict = field(default_factory=dict)


def solve(offsets, keys: RigKeys, smooth: float = DEFAULT_SMOOTH, scale: float = 1.0, lips=None,
          metres_per_unit: float | None = None, min_explained: float | None = MIN_EXPLAINED,
          chunk: int = 128, progress=None, cancel=None) -> RigFit:
    """Weights of `keys` reproducing `offsets` ([T,V,3] array, or anything with .shape and
    .frames(a, b)) times `scale`. Raises RigError when the keys explain less than `min_explained`
    of the lip motion (None: never)."""
    t0 = time.perf_counter()
    T, V = int(offsets.shape[0]), int(offsets.shape[1])
    K = len(keys.names)
    if keys.deltas.shape[1] != V:
        raise RigError(f"the rig keys are for {keys.deltas.shape[1]} vertices, the offsets for {V}")
    if T == 0:
        raise RigError("no frames to solve")
    D = keys.deltas.reshape(K, V * 3)
    sup = _support(keys.deltas)
    whole = len(sup) == V * 3  # every coordinate moves with some key: no gather needed
    Ds = D if whole else np.ascontiguousarray(D[:, sup])
    G = (Ds.astype(np.float64) @ Ds.T.astype(np.float64))
    DsT = np.ascontiguousarray(Ds.T)
    B = np.empty((T, K), np.float64)
    s = np.float32(scale)
    for a, b, Y in _frames(offsets, chunk):
        if scale != 1.0:
            Y *= s
        B[a:b] = (Y if whole else Y[:, sup]) @ DsT
        if progress is not None:
            progress(0.4 * b / T)
        if cancel is not None and cancel():
            from .errors import Cancelled

            raise Cancelled("cancelled")
    if not np.isfinite(B.sum()):
        raise RigError("the offsets contain NaN or infinite values")
    t_gram = time.perf_counter() - t0
    W, info = solve_weights(B, G, keys.ranges, smooth=smooth, cancel=cancel)
    if progress is not None:
        progress(0.6)
    # error pass: per-vertex Euclidean residual, and each vertex's own motion (for the masks)
    err_sum = np.zeros(V, np.float64)
    err_max = np.zeros(V, np.float32)
    sse_v = np.zeros(V, np.float64)
    ss_v = np.zeros(V, np.float64)  # per-vertex sum over frames of |y|^2
    for a, b, Y in _frames(offsets, chunk):
        if scale != 1.0:
            Y *= s
        R = W[a:b] @ D
        np.subtract(Y, R, out=R)
        np.square(R, out=R)
        e2 = R[:, 0::3] + R[:, 1::3]  # strided adds: much faster than reshape(...).sum(axis=2)
        e2 += R[:, 2::3]
        sse_v += e2.sum(axis=0)
        np.sqrt(e2, out=e2)
        err_sum += e2.sum(axis=0)
        np.maximum(err_max, e2.max(axis=0), out=err_max)
        np.square(Y, out=Y)
        y2 = Y[:, 0::3] + Y[:, 1::3]
        y2 += Y[:, 2::3]
        ss_v += y2.sum(axis=0)
        if progress is not None:
            progress(0.6 + 0.4 * b / T)
    rms = np.sqrt(ss_v / T)
    lip_idx = lips if lips is not None else keys.lips
    lip_m, face_m, how = motion_masks(rms, lip_idx)
    mpu = float(metres_per_unit or keys.metres_per_unit or 1.0)
    mm = 1000.0 * mpu

    def stats(mask):
        if not mask.any():
            return 0.0, 0.0
        return float(err_sum[mask].sum() / (T * mask.sum()) * mm), float(err_max[mask].max() * mm)

    lips_mean, lips_max = stats(lip_m)
    face_mean, face_max = stats(face_m)
    ss_l = float(ss_v[lip_m].sum())
    explained = 1.0 - float(sse_v[lip_m].sum()) / ss_l if ss_l > 0 else 1.0
    ss_f = float(ss_v[face_m].sum())
    explained_face = 1.0 - float(sse_v[face_m].sum()) / ss_f if ss_f > 0 else 1.0
    lip_motion_mm = float(np.sqrt(ss_l / (T * max(1, lip_m.sum()))) * mm)
    at_bounds = float(np.mean((W <= keys.ranges[:, 0] + 1e-6) | (W >= keys.ranges[:, 1] - 1e-6))) if W.size else 0.0
    report = {
        "frames": T, "keys": K, "vertices": V, "smooth": float(smooth), "scale": float(scale),
        "lips_mean_mm": lips_mean, "lips_max_mm": lips_max, "face_mean_mm": face_mean, "face_max_mm": face_max,
        "lips_explained": explained, "face_explained": explained_face, "lip_motion_rms_mm": lip_motion_mm,
        "lip_vertices": int(lip_m.sum()), "face_vertices": int(face_m.sum()), "lips_from": how,
        "metres_per_unit": mpu, "weights_at_bounds": at_bounds, "iterations": info["iterations"],
        "seconds": {"gram": t_gram, "solve": info["seconds"], "total": time.perf_counter() - t0},
        "most_used": [keys.names[i] for i in np.argsort(-np.abs(W).mean(axis=0))[:8]] if K else [],
    }
    if min_explained is not None and lip_motion_mm > 0.05 and explained < min_explained:
        raise RigError(
            f"The chosen shape keys cannot express the mouth motion: they reproduce only "
            f"{max(explained, 0.0) * 100:.0f}% of the lip motion (mean lip error {lips_mean:.2f} mm for "
            f"{lip_motion_mm:.2f} mm of motion; at least {min_explained * 100:.0f}% is needed). Include jaw "
            f"and mouth keys (jawOpen, mouthClose, mouthFunnel, mouthPucker, mouthLowerDown, mouthUpperUp...), "
            f"or use the Compact or Exact mode.")
    return RigFit(names=list(keys.names), ranges=keys.ranges.copy(), weights=W, report=report)


# ---- output --------------------------------------------------------------------------------------
def timecode(frame: int, fps: float) -> str:
    """Live Link Face's timecode, HH:MM:SS:FF.mmm (frame and sub-frame milliseconds)."""
    fps_i = max(1, int(round(fps)))
    secs, ff = divmod(int(frame), fps_i)
    h, rem = divmod(secs, 3600)
    mi, se = divmod(rem, 60)
    return f"{h:02d}:{mi:02d}:{se:02d}:{ff:02d}.000"


def arkit_table(names, weights: np.ndarray) -> np.ndarray:
    """[T, 52] ARKit weights in Apple's order: a rig key per column (the mean of a left/right pair
    standing for one ARKit shape); 0 for shapes the rig lacks."""
    W = np.asarray(weights, np.float32)
    out = np.zeros((W.shape[0], len(ARKIT_52)), np.float32)
    for a, idx in arkit_columns(names).items():
        out[:, ARKIT_52.index(a)] = W[:, idx].mean(axis=1)
    return out


def live_link_csv(names, weights: np.ndarray, fps: float, start_frame: int = 0) -> str:
    """The CSV Live Link Face writes: Timecode, BlendShapeCount (61), the 52 ARKit shapes in
    Apple's order, then head and eye rotations (0 here)."""
    A = arkit_table(names, weights)
    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    w.writerow(LIVE_LINK_HEADER)
    extra = ["0"] * len(LIVE_LINK_EXTRA)
    for t in range(A.shape[0]):
        w.writerow([timecode(start_frame + t, fps), len(ARKIT_52) + len(LIVE_LINK_EXTRA),
                    *(f"{v:.6g}" for v in A[t]), *extra])
    return buf.getvalue()


def read_live_link_csv(text: str) -> tuple[list[str], np.ndarray]:
    """(ARKit names, [T, 52] weights) from a Live Link Face CSV."""
    rows = list(csv.reader(io.StringIO(text)))
    header = rows[0]
    cols = [header.index(n[0].upper() + n[1:]) for n in ARKIT_52]
    return list(ARKIT_52), np.array([[float(r[c]) for c in cols] for r in rows[1:] if r], np.float32)


def weights_json(names, weights: np.ndarray, fps: float, start_frame: int = 0, report: dict | None = None,
                 ranges=None) -> str:
    W = np.asarray(weights, np.float32)
    doc = {"fps": float(fps), "start_frame": int(start_frame), "frames": int(W.shape[0]),
           "names": list(names), "weights": [[round(float(v), 6) for v in row] for row in W]}
    if ranges is not None:
        doc["ranges"] = np.asarray(ranges, np.float32).tolist()
    if report is not None:
        doc["fit"] = report
    return json.dumps(doc)


def append_to_result(path, fit: RigFit) -> None:
    """Add the rig members to a result .npz in place (after `offsets`, `fps`, `meta`):
    rig_names str [K], rig_weights float32 [T,K], rig_ranges float32 [K,2], rig_report (JSON)."""
    members = {"rig_names": np.array(fit.names, dtype=str), "rig_weights": fit.weights.astype(np.float32),
               "rig_ranges": fit.ranges.astype(np.float32), "rig_report": np.array(json.dumps(fit.report))}
    with zipfile.ZipFile(path, "a", allowZip64=True) as zf:
        existing = set(zf.namelist())
        if any(k + ".npy" in existing for k in members):
            raise RigError(f"{path} already holds rig weights")
        for k, v in members.items():
            with zf.open(k + ".npy", "w", force_zip64=True) as fh:
                np.lib.format.write_array(fh, np.asanyarray(v), allow_pickle=False)


def read_from_result(path) -> RigFit | None:
    with np.load(path, allow_pickle=False) as d:
        if "rig_weights" not in d:
            return None
        return RigFit(names=[str(n) for n in d["rig_names"]], ranges=np.asarray(d["rig_ranges"], np.float32),
                      weights=np.asarray(d["rig_weights"], np.float32), report=json.loads(str(d["rig_report"])))


def _open_offsets(path):
    """The result's offsets, read by frame ranges when the streaming reader is available."""
    try:
        from .result_file import open_result

        return open_result(path)
    except ImportError:
        d = np.load(path, allow_pickle=False)
        return _Loaded(np.asarray(d["offsets"], np.float32), d)


class _Loaded:
    def __init__(self, arr, npz):
        self.arr, self.npz = arr, npz
        self.shape = arr.shape

    def frames(self, a, b):
        return self.arr[a:b]

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.npz.close()


def _result_meta(path) -> tuple[float, dict]:
    with np.load(path, allow_pickle=False) as d:
        fps = float(d["fps"]) if "fps" in d else 30.0
        meta = json.loads(str(d["meta"])) if "meta" in d else {}
    return fps, meta


def solve_result_file(result_path, keys_path, smooth: float = DEFAULT_SMOOTH, scale: float = 1.0,
                      csv_path=None, json_path=None, min_explained: float | None = MIN_EXPLAINED,
                      progress=None, cancel=None) -> RigFit:
    """Solve the rig for a backend result .npz and append the weights to it (see append_to_result);
    optionally also write a Live Link Face CSV and a JSON. The metres per unit come from the keys
    file, else the result's unit snap (meta.frame), else 1."""
    keys = load_keys(keys_path)
    fps, meta = _result_meta(result_path)
    mpu = keys.metres_per_unit or framing.metres_per_unit(meta.get("frame"))
    with _open_offsets(result_path) as r:
        shape = r.shape if hasattr(r, "shape") else (r.n_frames, r.n_vertices, 3)
        fit = solve(_Shaped(r, shape), keys, smooth=smooth, scale=scale, metres_per_unit=mpu,
                    min_explained=min_explained, progress=progress, cancel=cancel)
    fit.report["fps"] = fps
    append_to_result(result_path, fit)
    if csv_path:
        with open(csv_path, "w", encoding="utf-8", newline="") as fh:
            fh.write(live_link_csv(fit.names, fit.weights, fps))
    if json_path:
        with open(json_path, "w", encoding="utf-8") as fh:
            fh.write(weights_json(fit.names, fit.weights, fps, report=fit.report, ranges=fit.ranges))
    return fit


class _Shaped:
    def __init__(self, r, shape):
        self.r, self.shape = r, tuple(shape)

    def frames(self, a, b):
        return self.r.frames(a, b)


def format_report(rep: dict) -> str:
    return (f"rig fit over {rep['frames']} frames, {rep['keys']} keys: lips mean {rep['lips_mean_mm']:.2f} mm, "
            f"max {rep['lips_max_mm']:.2f} mm; face mean {rep['face_mean_mm']:.2f} mm, max {rep['face_max_mm']:.2f} mm; "
            f"{rep['lips_explained'] * 100:.0f}% of the lip motion")


def rig_options(rig) -> dict | None:
    """The validated `rig` field of an animate request (None when absent); BadRequest otherwise."""
    from .errors import BadRequest
    from .options import number, path_field

    if rig is None:
        return None
    if not isinstance(rig, dict):
        raise BadRequest(f"'rig' must be an object with 'keys' (a path), got {rig!r}")
    unknown = set(rig) - {"keys", "smooth", "csv", "json", "min_explained", "scale"}
    if unknown:
        raise BadRequest(f"unknown 'rig' fields: {', '.join(sorted(unknown))}")
    out = {"keys_path": path_field("rig.keys", rig.get("keys")),
           "csv_path": path_field("rig.csv", rig.get("csv"), required=False),
           "json_path": path_field("rig.json", rig.get("json"), required=False)}
    out["smooth"] = DEFAULT_SMOOTH if rig.get("smooth") is None else number("rig.smooth", rig["smooth"], lo=0, hi=100)
    out["scale"] = 1.0 if rig.get("scale") is None else number("rig.scale", rig["scale"], lo=0, hi=10)
    me = rig.get("min_explained", MIN_EXPLAINED)
    out["min_explained"] = None if me is None else number("rig.min_explained", me, lo=0, hi=1)
    return out
