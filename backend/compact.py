"""Compact: a basis of K shape keys and per-frame weights for a result file, computed from the
file chunk by chunk (torch, on the GPU when there is one); the [T, V, 3] offsets are never held.

    report = compact_result_file("out.npz", max_error_mm=0.1, k_max=64)

appends `compact_basis` float32 [K, V, 3], `compact_weights` float32 [T, K] and `compact_report`
(JSON) to the result (docs/protocol.md), such that for every frame t and vertex v

    | strength * offsets[t, v] - (weights[t] @ basis)[v] |  <=  max_error      (Euclidean)

when K <= k_max can reach it (checked on the data, every frame and vertex; otherwise K = k_max
and the report gives the real error). The guarantee of the Blender add-on's in-memory Compact
(blender_addon/basis.py) for clips of any length.

How (D = the offsets as a T x 3V matrix; T can be 100k frames, 3V 600k columns):
- a randomized range finder over the chunks (Halko et al. 2011): sketch the row space with a
  Gaussian test matrix drawn chunk by chunk, one power step, then project: three passes, memory
  3V x (k_max + 16). The basis rows are orthonormal, so the energy a frame keeps outside the
  first k rows is exact, and sqrt(left / V) bounds the worst vertex from below: the search starts
  at the first k that bound allows.
- a verification pass: per chunk, the residual at the current K, grown one rank-1 update at a
  time while some vertex is over; chunks passed at a smaller K than the final one are checked
  again at the final K (per-vertex error need not fall monotonically with K).
- smoothing (a Gaussian along time, as in the add-on) is applied to the weights: it is linear,
  so it equals smoothing the offsets, and a convex combination of frames within the tolerance is
  within it too.
"""
from __future__ import annotations

import json
import math
import time
import zipfile

import numpy as np
import torch

from .errors import Cancelled, ScanTalkError
from .framing import metres_per_unit
from .result_file import open_result

OVERSAMPLE = 16
CHUNK_BYTES = 64 * 2**20  # offsets read per chunk
MEMBERS = ("compact_basis", "compact_weights", "compact_report")


class CompactError(ScanTalkError, ValueError):
    """A result the basis cannot be computed for (NaN offsets, a basis already there)."""


def smooth_time(x: np.ndarray, sigma: float) -> np.ndarray:
    """Gaussian smoothing along axis 0 (frames), edges held: blender_addon.basis.smooth_time."""
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


def _vertex_error(R: torch.Tensor, limit: float | None) -> float:
    """Max per-vertex Euclidean norm of R [t, 3V], or a bound of it that is exact wherever it
    is close to `limit`: the largest coordinate c gives c <= err <= sqrt(3) c, which decides
    most chunks without the norms."""
    if R.numel() == 0:
        return 0.0
    c = float(R.abs().max())
    r3 = math.sqrt(3.0)
    if limit is not None and (c > limit or c * r3 <= limit):
        return c if c > limit else c * r3
    return float(R.view(R.shape[0], -1, 3).square().sum(-1).max().sqrt())


def compact_result_file(path, max_error_mm: float = 0.1, k_max: int = 64, strength: float = 1.0,
                        smoothing: float = 0.0, metres_per_unit_override: float | None = None,
                        device: str | torch.device = "auto", cancel=None, progress=None,
                        chunk_bytes: int = CHUNK_BYTES, seed: int = 0, append: bool = True) -> dict:
    """Compute the Compact basis of the result file `path` and append it (see the module doc).
    `max_error_mm` is in millimetres at the head's real size (the result's unit snap, or
    `metres_per_unit_override`); `smoothing` in frames. `progress(fraction)`; `cancel()` -> True
    stops at the next chunk (nothing is appended). Returns the report."""
    t0 = time.perf_counter()
    if isinstance(device, str):
        device = torch.device("cuda" if device == "auto" and torch.cuda.is_available() else
                              ("cpu" if device == "auto" else device))
    with open_result(path) as r:
        if any(r.has(m) for m in MEMBERS):
            raise CompactError(f"{path} already holds a Compact basis")
        T, V = r.n_frames, r.n_vertices
        N = 3 * V
        mpu = float(metres_per_unit_override or metres_per_unit((r.meta or {}).get("frame")))
        tol = float(max_error_mm) / 1000.0 / mpu
        step = max(1, int(chunk_bytes // max(1, N * 4)))
        bounds = [(a, min(T, a + step)) for a in range(0, T, step)]
        n_passes = [0]

        def chunk(a, b) -> torch.Tensor:
            if cancel is not None and cancel():
                raise Cancelled("cancelled")
            x = torch.from_numpy(r.frames(a, b).reshape(b - a, N)).to(device)
            if not bool(torch.isfinite(x).all()):
                raise CompactError("the offsets hold NaN or infinite values")
            return x * strength if strength != 1.0 else x

        def report_progress(frac):
            if progress is not None:
                progress(min(1.0, frac))

        p = int(min(max(1, k_max) + OVERSAMPLE, T, N))
        gen = torch.Generator(device="cpu").manual_seed(seed)
        energy = torch.zeros(T, dtype=torch.float64)
        Y = torch.zeros(N, p, device=device, dtype=torch.float32)
        # pass 1: sketch of the row space, Y = D^T Omega (Omega [T, p] drawn chunk by chunk)
        for i, (a, b) in enumerate(bounds):
            x = chunk(a, b)
            energy[a:b] = x.double().square().sum(1).cpu()
            omega = torch.randn(b - a, p, generator=gen).to(device)
            Y += x.T @ omega
            report_progress(0.25 * (i + 1) / len(bounds))
        Q = torch.linalg.qr(Y.double())[0].float()
        # pass 2: one power step, Y = D^T D Q: the spectrum of speech motion decays fast, one
        # step makes the leading directions accurate enough that K is rarely above the optimum
        Y.zero_()
        for i, (a, b) in enumerate(bounds):
            x = chunk(a, b)
            Y += x.T @ (x @ Q)
            report_progress(0.25 + 0.25 * (i + 1) / len(bounds))
        Q = torch.linalg.qr(Y.double())[0].float()
        del Y
        # pass 3: project, P = D Q [T, p]; then P = W Vt with W = P V (the eigenvectors of P^T P)
        P = torch.empty(T, p, dtype=torch.float32)
        for i, (a, b) in enumerate(bounds):
            P[a:b] = (chunk(a, b) @ Q).cpu()
            report_progress(0.5 + 0.2 * (i + 1) / len(bounds))
        lam, Vp = torch.linalg.eigh((P.double().T @ P.double()))
        order = torch.argsort(lam, descending=True)
        lam, Vp = lam[order], Vp[:, order]
        keep = int((lam > max(float(lam[0]) if len(lam) else 0.0, 1e-30) * 1e-12).sum()) if len(lam) else 0
        kmax = int(min(k_max, keep))
        W = (P.double() @ Vp[:, :kmax]).float()  # [T, kmax]: <D_t, b_k>
        B = (Vp[:, :kmax].T.float().to(device) @ Q.T)  # [kmax, N], orthonormal rows
        del P, Q
        n_passes[0] = 3

        # the smallest K the energy allows: below it some frame's leftover alone is over
        cum = torch.cumsum(W.double().square(), 1)
        slack = 1e-4 * energy

        def left(k):
            return energy - (cum[:, k - 1] if k else 0.0)

        K = 0
        while K < kmax and math.sqrt(max(0.0, float((left(K) - slack).max())) / V) > tol:
            K += 1
        Wd = W.to(device)

        # pass 4 (and rechecks): every chunk at the final K
        verified = [-1] * len(bounds)  # the K each chunk passed at
        errors = [0.0] * len(bounds)
        reached = True
        todo = list(range(len(bounds)))
        while todo:
            n_passes[0] += 1
            for n, ci in enumerate(todo):
                a, b = bounds[ci]
                R = Wd[a:b, :K] @ B[:K] - chunk(a, b) if K else -chunk(a, b)
                e = _vertex_error(R, tol)
                while e > tol and K < kmax:  # grow K for this chunk, one component at a time
                    R.addr_(Wd[a:b, K], B[K])
                    K += 1
                    e = _vertex_error(R, tol)
                if e > tol:  # k_max is not enough: the real error is what to report
                    reached = False
                    e = _vertex_error(R, None)
                verified[ci], errors[ci] = K, e
                if n_passes[0] == 4:
                    report_progress(0.7 + 0.3 * (n + 1) / len(todo))
            todo = [ci for ci, k in enumerate(verified) if k != K]
        err = max(errors) if errors else 0.0
    W = W[:, :K].numpy()
    if smoothing > 0:
        W = smooth_time(W, smoothing)
    basis = B[:K].cpu().numpy().reshape(K, V, 3).astype(np.float32)
    report = {"k": K, "k_max": int(k_max), "reached": bool(reached), "max_error": err,
              "max_error_mm": err * mpu * 1000.0, "tolerance": tol, "tolerance_mm": float(max_error_mm),
              "metres_per_unit": mpu, "strength": float(strength), "smoothing": float(smoothing),
              "frames": T, "vertices": V, "passes": n_passes[0], "device": device.type,
              "seconds": round(time.perf_counter() - t0, 3)}
    if append:
        append_to_result(path, basis, W.astype(np.float32), report)
    return report


def append_to_result(path, basis: np.ndarray, weights: np.ndarray, report: dict) -> None:
    """Add the Compact members to a result .npz in place (after `offsets`, `fps`, `meta`)."""
    members = {"compact_basis": basis, "compact_weights": weights, "compact_report": np.array(json.dumps(report))}
    with zipfile.ZipFile(path, "a", allowZip64=True) as zf:
        for k, v in members.items():
            with zf.open(k + ".npy", "w", force_zip64=True) as fh:
                np.lib.format.write_array(fh, np.asanyarray(v), allow_pickle=False)
