"""The numerics of a result, no bpy: what to store for offsets [T,V,3] (object local space).

    plan = plan_result(offsets, frame_start, mode, strength, smoothing, max_error, k_max)

gives the shape keys to write (`shapes`, each relative to the basis) and, per key, the frames and
values of its F-curve. Every keyed value lies in [0, 1], so exporters and game engines that clamp
morph-target weights (glTF importers, most engines) reproduce the motion.

- EXACT: one shape key per frame, keyed 0/1/0 on frames f-1/f/f+1. From a result file
  (`exact_plan`) the per-frame shapes are read in chunks while the keys are written
  (`Plan.shape_chunks`): the [T, V, 3] offsets are never in memory at once.
- COMPACT: a basis of K keys (leading singular vectors of the offsets, K the smallest that keeps
  every vertex of every frame within `max_error`, checked on the data). A component's weight w in
  [lo, hi] (lo <= 0 <= hi) is stored as u = (w - lo) / (hi - lo) in [0, 1] on the key
  (hi - lo) * B; the constant part sum(lo * B) goes into one `bias` key keyed 1 over the clip.
  All keys are 0 on the frame before and after the clip, so the face is neutral outside it.
  The backend computes the basis of a result file (backend/compact.py, streamed, on the GPU when
  present); `plan_from_weights` turns its weights [T, K] and basis [K, V*3] into keys.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np


class PlanError(ValueError):
    pass


def smooth_time(x: np.ndarray, sigma: float) -> np.ndarray:
    """Gaussian smoothing along axis 0 (frames); edges hold their value. sigma in frames."""
    x = np.asarray(x, dtype=np.float32)
    if sigma <= 0 or x.shape[0] < 2:
        return x
    r, k = _gauss(sigma)
    T = x.shape[0]
    idx = np.clip(np.arange(-r, T + r), 0, T - 1)
    out = np.zeros_like(x)
    for j, w in enumerate(k):
        out += w * x[idx[j:j + T]]
    return out


def _gauss(sigma: float):
    r = max(1, int(math.ceil(3 * sigma)))
    k = np.exp(-0.5 * (np.arange(-r, r + 1) / sigma) ** 2)
    return r, (k / k.sum()).astype(np.float32)


def smooth_frames(read, n_frames: int, a: int, b: int, sigma: float) -> np.ndarray:
    """Frames a..b-1 of smooth_time(all frames, sigma), reading only frames a-r..b+r-1 through
    `read(a, b) -> float32 [b - a, ...]`: the same numbers as smoothing the whole clip."""
    if sigma <= 0 or n_frames < 2:
        return np.asarray(read(a, b), np.float32)
    r, k = _gauss(sigma)
    lo, hi = max(0, a - r), min(n_frames, b + r)
    x = np.asarray(read(lo, hi), np.float32)
    idx = np.clip(np.arange(a - r, b + r), 0, n_frames - 1) - lo
    n = b - a
    out = np.zeros((n,) + x.shape[1:], np.float32)
    for j, w in enumerate(k):
        out += w * x[idx[j:j + n]]
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


@dataclass
class FrameSource:
    """Exact mode's per-frame shapes, read from a result file chunk by chunk when written.

    `open()` returns a context manager with `frames(a, b)` -> float32 [b - a, V, 3] (the reader
    of result_file); `to_local` maps a block of model-frame offsets into object space."""

    open: object
    n_frames: int
    n_vertices: int
    to_local: object
    strength: float = 1.0
    smoothing: float = 0.0

    def chunks(self, size: int):
        """(first frame, float32 [n, V*3]) blocks covering the clip, strength and smoothing applied."""
        T, N = self.n_frames, self.n_vertices * 3
        with self.open() as r:
            def read(a, b):
                return self.to_local(r.frames(a, b)).reshape(b - a, N)

            for a in range(0, T, size):
                b = min(T, a + size)
                block = smooth_frames(read, T, a, b, self.smoothing)
                if self.strength != 1.0:
                    block *= np.float32(self.strength)
                yield a, block


@dataclass
class Plan:
    mode: str
    frames: int  # T
    frame_start: int
    names: list  # key name suffixes, e.g. "pc00" / "bias" / "f0017"
    shapes: np.ndarray | None  # [n_keys, V*3] offsets of each key from the basis (None: `source`)
    basis_size: int  # K (COMPACT) or T (EXACT)
    max_error: float
    strength: float
    smoothing: float
    weights: np.ndarray | None = None  # COMPACT: [T, n_keys] in [0, 1]
    source: FrameSource | None = None  # EXACT from a file: the shapes, read while writing

    @property
    def vertex_count(self) -> int:
        return self.source.n_vertices if self.source is not None else self.shapes.shape[1] // 3

    def shape_chunks(self, size: int = 64):
        """(first key, float32 [n, V*3]) blocks of the keys' shapes, in key order."""
        if self.source is not None:
            yield from self.source.chunks(size)
            return
        for a in range(0, len(self.shapes), size):
            yield a, self.shapes[a:a + size]

    def curve(self, i: int) -> tuple[np.ndarray, np.ndarray]:
        """(frames, values) of key i's F-curve, float32."""
        s, T = self.frame_start, self.frames
        if self.mode == "EXACT":
            f = float(s + i)
            return np.array([f - 1, f, f + 1], np.float32), np.array([0.0, 1.0, 0.0], np.float32)
        frames = np.arange(s - 1, s + T + 1, dtype=np.float32)
        vals = np.zeros(T + 2, np.float32)
        vals[1:-1] = self.weights[:, i]
        return frames, vals


def plan_result(offsets, frame_start: int, mode: str = "COMPACT", strength: float = 1.0,
                smoothing: float = 0.0, max_error: float | None = None, k_max: int = 64) -> Plan:
    """What to write for `offsets` [T,V,3], its first frame on scene frame `frame_start`.
    `max_error` (local units) is for COMPACT. Raises PlanError for unusable results."""
    off = np.asarray(offsets, dtype=np.float32)
    if off.ndim != 3 or off.shape[2] != 3:
        raise PlanError(f"The result has shape {list(off.shape)}, not [frames, vertices, 3].")
    if not np.isfinite(off.sum()):  # one read pass: any NaN or inf makes the sum non-finite
        raise PlanError("The backend returned NaN or infinite offsets; nothing was written.")
    T, V = off.shape[:2]
    if T == 0:
        raise PlanError("The backend returned no frames (the audio is too short?).")
    frame_start = int(frame_start)
    D = off.reshape(T, V * 3)
    if strength != 1.0:
        D = D * np.float32(strength)
    common = dict(frames=T, frame_start=frame_start, strength=float(strength), smoothing=float(smoothing))
    if mode == "EXACT":
        if smoothing > 0:
            D = smooth_time(D, smoothing)
        return Plan(mode=mode, names=[f"f{frame_start + i:04d}" for i in range(T)], shapes=D, basis_size=T,
                    max_error=0.0, **common)
    if mode != "COMPACT":
        raise PlanError(f"unknown mode '{mode}': use COMPACT or EXACT")
    tol = float(max_error) if max_error and max_error > 0 else 0.0
    W, B, err, K = compact_basis(D, tol, k_max=max(1, int(k_max)))
    if smoothing > 0:
        W = smooth_time(W, smoothing)
    return plan_from_weights(W, B, frame_start, err, strength, smoothing)


def exact_plan(source: FrameSource, frame_start: int) -> Plan:
    """EXACT from a result file: one key per frame, shapes read in chunks while writing."""
    T = int(source.n_frames)
    if T == 0:
        raise PlanError("The backend returned no frames (the audio is too short?).")
    frame_start = int(frame_start)
    return Plan(mode="EXACT", frames=T, frame_start=frame_start, names=[f"f{frame_start + i:04d}" for i in range(T)],
                shapes=None, basis_size=T, max_error=0.0, strength=float(source.strength),
                smoothing=float(source.smoothing), source=source)


def plan_from_weights(W, B, frame_start: int, max_error: float, strength: float = 1.0,
                      smoothing: float = 0.0) -> Plan:
    """COMPACT keys for offsets ~= W @ B (weights [T, K], basis [K, V*3], strength and smoothing
    already in W): each weight shifted into [0, 1] on a scaled key, plus a bias key."""
    W = np.asarray(W, np.float32)
    B = np.asarray(B, np.float32)
    T, K = W.shape
    if T == 0:
        raise PlanError("The backend returned no frames (the audio is too short?).")
    if B.shape[0] != K:
        raise PlanError(f"The result has {K} weights per frame but {B.shape[0]} basis shapes.")
    if not (np.isfinite(W.sum()) and np.isfinite(B.sum())):
        raise PlanError("The backend returned NaN or infinite offsets; nothing was written.")
    frame_start = int(frame_start)
    common = dict(frames=T, frame_start=frame_start, strength=float(strength), smoothing=float(smoothing))
    lo = np.minimum(W.min(axis=0), 0.0) if K else np.zeros(0, np.float32)
    hi = np.maximum(W.max(axis=0), 0.0) if K else np.zeros(0, np.float32)
    span = hi - lo
    span[span == 0] = 1.0
    U = np.clip((W - lo) / span, 0.0, 1.0).astype(np.float32)
    shapes = (B * span[:, None]).astype(np.float32)
    names = [f"pc{j:02d}" for j in range(K)]
    if np.any(lo < 0):
        bias = (lo.astype(np.float32) @ B).astype(np.float32)  # the constant part, on for the whole clip
        shapes = np.concatenate([shapes, bias[None]])
        U = np.concatenate([U, np.ones((T, 1), np.float32)], axis=1)
        names.append("bias")
    return Plan(mode="COMPACT", names=names, shapes=shapes, weights=U, basis_size=K, max_error=float(max_error),
                **common)
