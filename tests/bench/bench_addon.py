"""Benchmark of the add-on's write-back and playback, under bpy (no backend needed):

    /work/venv-bpy50/bin/python tests/bench/bench_addon.py [--vertices 50000] [--frames 300]

- write-back of `--frames` frames on a `--vertices`-vertex mesh, Exact and Compact
  (numerics / shape keys / F-curves / total);
- scrubbing (scene.frame_set at random frames, evaluated mesh) of a `--long-seconds` clip at
  `--fps` in Compact mode, and of the short clip in both modes;
- .blend sizes (uncompressed) of each.

The offsets are synthetic but speech-like: smooth weights on a few dozen smooth modes plus a
little noise (rank and smoothness decide Compact's K, so the table prints K too).
"""
from __future__ import annotations

import argparse
import importlib
import math
import os
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
os.environ.setdefault("BLENDER_USER_RESOURCES", tempfile.mkdtemp(prefix="scantalk_bench_user_"))

import bpy  # noqa: E402
import numpy as np  # noqa: E402

PKG = "bl_ext.user_default.scantalk"


def install():
    sys.path.insert(0, str(ROOT))
    import build_addon

    z = build_addon.build(tempfile.mkdtemp(prefix="scantalk_bench_dist_"))
    bpy.ops.extensions.package_install_files(filepath=str(z), repo="user_default", enable_on_install=True)
    return importlib.import_module(PKG + ".writeback")


def head_mesh(n_vertices: int):
    """A UV sphere shaped like a head (0.16 x 0.2 x 0.26 m) with about n_vertices vertices."""
    rings = max(8, int(round(math.sqrt(n_vertices / 1.25))))
    segments = max(8, int(round((n_vertices - 2) / (rings - 1))))
    bpy.ops.mesh.primitive_uv_sphere_add(segments=segments, ring_count=rings, radius=0.1)
    obj = bpy.context.active_object
    me = obj.data
    co = np.empty(len(me.vertices) * 3, np.float32)
    me.vertices.foreach_get("co", co)
    co = co.reshape(-1, 3) * np.array([0.8, 1.0, 1.3], np.float32)
    me.vertices.foreach_set("co", co.ravel())
    me.update()
    return obj


def speech_like(co: np.ndarray, frames: int, fps: float, modes: int = 24, seed: int = 0) -> np.ndarray:
    """[T,V,3] float32: smooth spatial modes (around a 'mouth') with smooth random weights."""
    rng = np.random.default_rng(seed)
    V = len(co)
    mouth = np.array([0.0, -0.1, -0.04])
    fall = np.exp(-np.sum((co - mouth) ** 2, axis=1) / (2 * 0.04 ** 2)).astype(np.float32)  # [V]
    spatial = []
    for k in range(modes):
        freq = rng.uniform(5, 40, 3)
        phase = rng.uniform(0, math.tau, 3)
        direction = rng.standard_normal(3)
        field = np.sin(co @ np.diag(freq) + phase).sum(axis=1, keepdims=True) * direction
        spatial.append((field * fall[:, None]).astype(np.float32))
    spatial = np.stack(spatial)  # [K,V,3]
    spatial *= 0.004 / np.abs(spatial).max()
    t = np.arange(frames) / fps
    w = np.zeros((frames, modes), np.float32)
    for k in range(modes):  # syllable-rate (3-8 Hz) smooth weights, decaying importance
        f = rng.uniform(0.5, 8.0)
        w[:, k] = np.sin(math.tau * f * t + rng.uniform(0, math.tau)) * (0.85 ** k)
    out = np.empty((frames, V, 3), np.float32)
    for i in range(0, frames, 64):  # chunked: the long clip is over a GB
        out[i:i + 64] = np.einsum("tk,kvc->tvc", w[i:i + 64], spatial)
        out[i:i + 64] += 5e-6 * rng.standard_normal(out[i:i + 64].shape, dtype=np.float32)
    return out


def scrub(obj, first: int, frames: int, samples: int, seed: int = 1) -> tuple[float, float]:
    """ms per frame_set (mean, p95) at random frames of the clip, evaluated mesh included."""
    rng = np.random.default_rng(seed)
    scene = bpy.context.scene
    picks = rng.integers(first, first + frames, size=samples)
    scene.frame_set(int(picks[0]))
    dg = bpy.context.evaluated_depsgraph_get()
    times = []
    for f in picks[1:]:
        t = time.perf_counter()
        scene.frame_set(int(f))
        ev = obj.evaluated_get(dg)
        _ = ev.data.vertices[0].co  # the evaluated mesh exists
        times.append((time.perf_counter() - t) * 1000)
    return float(np.mean(times)), float(np.percentile(times, 95))


def blend_size(path: Path) -> float:
    bpy.ops.wm.save_as_mainfile(filepath=str(path), compress=False, copy=True)
    return path.stat().st_size / 2**20


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--vertices", type=int, default=50_000)
    ap.add_argument("--frames", type=int, default=300)
    ap.add_argument("--long-seconds", type=float, default=60.0)
    ap.add_argument("--fps", type=float, default=30.0)
    ap.add_argument("--max-error-mm", type=float, default=0.1)
    ap.add_argument("--samples", type=int, default=120, help="frames sampled when scrubbing")
    ap.add_argument("--exact-long", action="store_true", help="also write and scrub the long clip in Exact mode")
    args = ap.parse_args(argv)

    wb = install()
    bpy.ops.wm.read_homefile(use_empty=True)
    scene = bpy.context.scene
    scene.render.fps, scene.render.fps_base = int(round(args.fps)), 1.0
    obj = head_mesh(args.vertices)
    V = len(obj.data.vertices)
    co = np.empty(V * 3, np.float32)
    obj.data.vertices.foreach_get("co", co)
    co = co.reshape(-1, 3).astype(np.float64)
    tmp = Path(tempfile.mkdtemp(prefix="scantalk_bench_"))
    tol = args.max_error_mm / 1000.0
    rows = []

    def run(label, off, mode):
        tm = {}
        tag = wb.write_result(obj, off, 1, mode=mode, max_error=tol, timings=tm)
        T = off.shape[0]
        scene.frame_end = T
        mean, p95 = scrub(obj, 1, T, args.samples)
        size = blend_size(tmp / f"{label}_{mode}.blend")
        rows.append((label, mode, T, tag["basis_size"], tag["max_error"] * 1000, tm["numerics"] * 1000,
                     tm["keys"] * 1000, tm["fcurves"] * 1000, tm["total"] * 1000, mean, p95, size))
        wb.clear_result(obj)

    short = speech_like(co, args.frames, args.fps)
    for mode in ("EXACT", "COMPACT"):
        run(f"{args.frames}f", short, mode)
    del short
    T_long = int(round(args.long_seconds * args.fps))
    long = speech_like(co, T_long, args.fps, seed=2)
    run(f"{args.long_seconds:g}s", long, "COMPACT")
    if args.exact_long:
        run(f"{args.long_seconds:g}s", long, "EXACT")
    del long

    print(f"\nScanTalk add-on benchmark: Blender {bpy.app.version_string}, {V:,} vertices, {args.fps:g} fps, "
          f"max error {args.max_error_mm:g} mm, {os.cpu_count()} CPUs")
    head = ("clip", "mode", "frames", "keys", "err mm", "numerics ms", "keys ms", "fcurves ms", "write ms",
            "scrub ms", "p95 ms", ".blend MB")
    fmt = "{:>6} {:>8} {:>6} {:>5} {:>7} {:>11} {:>8} {:>10} {:>9} {:>9} {:>7} {:>9}"
    print(fmt.format(*head))
    for r in rows:
        print(fmt.format(r[0], r[1], r[2], r[3], f"{r[4]:.3f}", f"{r[5]:.0f}", f"{r[6]:.0f}", f"{r[7]:.0f}",
                         f"{r[8]:.0f}", f"{r[9]:.1f}", f"{r[10]:.1f}", f"{r[11]:.1f}"))
    return rows


if __name__ == "__main__":
    main()
