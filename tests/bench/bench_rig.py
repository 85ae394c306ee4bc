"""Rig solver speed (run on demand, not by CI): a 60 s clip at 30 fps on a 50k-vertex head with 52
keys, solved as the worker does (backend/rig_solve.py: Gram pass, ADMM on the whole clip, error
pass), plus the same through a result file (the worker's path, offsets read by frame ranges).

    .venv/bin/python tests/bench/bench_rig.py [--seconds 60] [--vertices 50000] [--keys 52] [--json out.json]

The keys are ICT FaceKit's expressions resampled to the vertex count when ../shared has them
(nearest ICT vertex per vertex of a jittered copy), else random smooth localised deltas; the
motion is known weights times the keys plus 0.2 mm of noise, so the recovered weights are checked too.
"""
from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))

from backend import rig_solve as rs  # noqa: E402

ICT = ROOT.parent / "shared" / "data" / "ict_facekit" / "ict_facekit_face_head_neck.npz"


def make_keys(V: int, K: int, seed: int = 0):
    rng = np.random.default_rng(seed)
    if ICT.is_file():
        with np.load(ICT) as d:
            names = [str(n) for n in d["expression_names"]][:K]
            deltas = d["expression_deltas"][:K] / 100.0
        idx = rng.integers(0, deltas.shape[1], V)  # a V-vertex head with ICT's motion (repeated vertices)
        return names, (deltas[:, idx] * rng.uniform(0.95, 1.05, (1, V, 1))).astype(np.float32)
    pos = rng.standard_normal((V, 3))
    centres = rng.standard_normal((K, 3))
    fall = np.exp(-((pos[None] - centres[:, None]) ** 2).sum(-1) / 0.3)
    dirs = rng.standard_normal((K, 1, 3)) * 0.005
    return [f"key{k:02d}" for k in range(K)], (fall[..., None] * dirs).astype(np.float32)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--seconds", type=float, default=60.0)
    ap.add_argument("--fps", type=float, default=30.0)
    ap.add_argument("--vertices", type=int, default=50_000)
    ap.add_argument("--keys", type=int, default=52)
    ap.add_argument("--json")
    a = ap.parse_args(argv)
    T = int(a.seconds * a.fps)
    names, deltas = make_keys(a.vertices, a.keys)
    K = len(names)
    rng = np.random.default_rng(1)
    t = np.arange(T) / a.fps
    W = np.clip(sum(0.3 * np.sin(2 * np.pi * rng.uniform(0.3, 4.0, K) * t[:, None] + rng.uniform(0, 6.3, K))
                    for _ in range(3)), 0, 1).astype(np.float32)
    t0 = time.perf_counter()
    off = np.einsum("tk,kvc->tvc", W, deltas, optimize=True).astype(np.float32)
    off += rng.normal(0, 0.0002 / np.sqrt(3), off.shape).astype(np.float32)
    print(f"{T} frames x {a.vertices} vertices x {K} keys; offsets {off.nbytes / 1e9:.2f} GB "
          f"(made in {time.perf_counter() - t0:.1f} s)")
    keys = rs.RigKeys(names, deltas, None)
    t0 = time.perf_counter()
    fit = rs.solve(off, keys, metres_per_unit=1.0)
    wall = time.perf_counter() - t0
    rep = fit.report
    err = np.abs(fit.weights - W)
    print(f"in memory: {wall:.2f} s (Gram pass {rep['seconds']['gram']:.2f} s, ADMM {rep['seconds']['solve']:.2f} s "
          f"in {rep['iterations']} iterations, error pass {wall - rep['seconds']['gram'] - rep['seconds']['solve']:.2f} s)")
    print(f"  weights: mean |error| {err.mean():.4f}, max {err.max():.4f}; {rs.format_report(rep)}")
    out = {"frames": T, "vertices": a.vertices, "keys": K, "seconds_in_memory": wall, "report": rep,
           "weight_error_mean": float(err.mean()), "weight_error_max": float(err.max())}
    with tempfile.TemporaryDirectory() as tmp:
        res, kp = Path(tmp, "r.npz"), Path(tmp, "k.npz")
        np.savez(res, offsets=off, fps=np.float64(a.fps), meta=np.array(json.dumps({})))
        rs.save_keys(kp, keys)
        del off
        t0 = time.perf_counter()
        rs.solve_result_file(res, kp)
        out["seconds_from_file"] = time.perf_counter() - t0
        print(f"from a result file (the worker's path, incl. appending the weights): {out['seconds_from_file']:.2f} s")
    if a.json:
        Path(a.json).write_text(json.dumps(out, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
