"""Benchmark: a long result from the backend's file into Blender (run on demand, not by CI).

    nice -n 19 .venv/bin/python tests/bench/bench_long_results.py [--minutes 10] [--vertices 50000]
        [--exact-seconds 60] [--fps 30] [--bpy .venv-bpy50/bin/python] [--json out.json]

1. `make` (under bpy): a head-shaped UV sphere of ~--vertices vertices and a result file of
   --minutes at --fps with speech-like offsets (24 smooth spatial modes around a mouth with
   syllable-rate weights, decaying importance, 2 um noise), written in chunks with the add-on's
   own ResultWriter; the same for --exact-seconds.
2. `compact` (the backend's interpreter, device cpu): backend.compact.compact_result_file on the
   long file, Max Error 0.1 mm, k_max 64: seconds and peak RSS (wait4) of that process.
3. `write` (under bpy): the add-on's pipeline.compute + pipeline.write of the Compact result onto
   the mesh, as the Animate operator does after the worker answers; Blender's RSS before (bpy,
   the add-on and the mesh loaded) and its peak (ru_maxrss) after, and the seconds.
4. `exact` (under bpy): the same for Exact on the --exact-seconds file (one key per frame).

Each stage is its own process, so each peak RSS is that stage's alone. Needs ~V*T*12 bytes of
free disk for the long file (10.8 GB for 10 min at 30 fps on 50k vertices); it is deleted.
"""
from __future__ import annotations

import argparse
import json
import math
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
PKG = "bl_ext.user_default.scantalk"


def rss_now_mb() -> float:
    with open("/proc/self/status") as fh:
        for line in fh:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    return float("nan")


def peak_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


# ---- under bpy ------------------------------------------------------------------------------------
def _addon():
    sys.path.insert(0, str(ROOT / "tests" / "bench"))
    import bench_addon

    bench_addon.install()
    import importlib

    return bench_addon, lambda name: importlib.import_module(f"{PKG}.{name}")


def _modes(co, n_modes=24, seed=0):
    import numpy as np

    rng = np.random.default_rng(seed)
    mouth = np.array([0.0, -0.1, -0.04])
    fall = np.exp(-np.sum((co - mouth) ** 2, axis=1) / (2 * 0.04 ** 2)).astype(np.float32)
    spatial = []
    for _ in range(n_modes):
        freq, phase, direction = rng.uniform(5, 40, 3), rng.uniform(0, math.tau, 3), rng.standard_normal(3)
        field = np.sin(co @ np.diag(freq) + phase).sum(axis=1, keepdims=True) * direction
        spatial.append((field * fall[:, None]).astype(np.float32))
    spatial = np.stack(spatial)
    spatial *= 0.004 / np.abs(spatial).max()
    return spatial, [(rng.uniform(0.5, 8.0), rng.uniform(0, math.tau)) for _ in range(n_modes)]


def child_make(args):
    import bpy  # noqa: F401
    import numpy as np

    bench_addon, mod = _addon()
    obj = bench_addon.head_mesh(args.vertices)
    co = np.empty(len(obj.data.vertices) * 3, np.float32)
    obj.data.vertices.foreach_get("co", co)
    co = co.reshape(-1, 3).astype(np.float64)
    R = mod("mesh_export").rotation_for("Z_UP").astype(np.float32)  # the file holds the model frame
    spatial, waves = _modes(co)
    rng = np.random.default_rng(1)
    for path, frames in ((args.long_file, int(args.minutes * 60 * args.fps)),
                         (args.exact_file, int(args.exact_seconds * args.fps))):
        w = mod("result_file").ResultWriter(path, frames, len(co))
        for a in range(0, frames, 64):
            t = np.arange(a, min(frames, a + 64)) / args.fps
            wt = np.stack([np.sin(math.tau * f * t + p) * 0.85 ** k for k, (f, p) in enumerate(waves)], 1)
            block = np.einsum("tk,kvc->tvc", wt.astype(np.float32), spatial)
            block += 2e-6 * rng.standard_normal(block.shape).astype(np.float32)
            w.write(block @ R.T)
        w.finish(args.fps, {"frame": {"units": "m", "scale": 1.0}})
    print(json.dumps({"vertices": len(co)}))


def child_write(args, mode):
    import bpy
    import numpy as np

    bench_addon, mod = _addon()
    pl, mexp, asrc = mod("pipeline"), mod("mesh_export"), mod("audio_source")
    obj = bench_addon.head_mesh(args.vertices)
    co = np.empty(len(obj.data.vertices) * 3, np.float32)
    obj.data.vertices.foreach_get("co", co)
    bpy.context.scene.render.fps, bpy.context.scene.render.fps_base = int(args.fps), 1.0
    path = args.long_file if mode == "COMPACT" else args.exact_file
    export = mexp.ExportInfo(path="", axes="Z_UP", rotation=mexp.rotation_for("Z_UP"),
                             neutral_local=co.reshape(-1, 3).astype(np.float64), stats={"vertices": len(co) // 3})
    audio = asrc.AudioSpec(path="bench.wav", start=0.0, duration=None, frame_start=1, fps=float(args.fps),
                           label="bench")
    prep = pl.Prepared(object_name=obj.name, scene_name=bpy.context.scene.name,
                       settings=pl.Settings(mode=mode, max_error_mm=0.1, max_basis=64), export=export, audio=audio,
                       fields={"out": str(path)}, temp_dir=tempfile.mkdtemp())
    before_now, before_peak = rss_now_mb(), peak_mb()
    t = time.perf_counter()
    computed = pl.compute(prep, {"out": str(path)})
    t_compute = time.perf_counter() - t
    timings = {}
    summary = pl.write(bpy.context, prep, computed, timings=timings)
    total = time.perf_counter() - t
    print(json.dumps({"mode": mode, "frames": computed.plan.frames, "keys": len(computed.plan.names),
                      "blender_rss_before_mb": round(before_now, 1), "blender_peak_before_mb": round(before_peak, 1),
                      "blender_peak_after_mb": round(peak_mb(), 1), "blender_rss_after_mb": round(rss_now_mb(), 1),
                      "peak_increase_mb": round(peak_mb() - before_now, 1), "read_and_plan_s": round(t_compute, 2),
                      "write_s": round(total - t_compute, 2), "total_s": round(total, 2),
                      "timings": {k: round(v, 2) for k, v in timings.items()}, "summary": summary}))


# ---- driver -----------------------------------------------------------------------------------------
def run(cmd, env=None):
    t = time.perf_counter()
    p = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env, cwd=ROOT)
    _, status, usage = os.wait4(p.pid, 0)
    out, err = p.stdout.read(), p.stderr.read()
    code = os.waitstatus_to_exitcode(status)
    if code not in (0, -11, 139):  # bpy 4.2 may segfault at exit after the work is done
        raise SystemExit(f"{cmd[:3]} failed ({code}):\n{out[-2000:]}\n{err[-3000:]}")
    lines = [ln for ln in out.splitlines() if ln.startswith("{")]
    res = json.loads(lines[-1]) if lines else {}
    return {**res, "process_seconds": round(time.perf_counter() - t, 2),
            "process_peak_rss_mb": round(usage.ru_maxrss / 1024, 1)}


COMPACT = r'''
import json, sys, torch
torch.set_num_threads(int(sys.argv[2]))
from backend.compact import compact_result_file
print(json.dumps(compact_result_file(sys.argv[1], max_error_mm=0.1, k_max=64, device="cpu")))
'''


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--child", choices=["make", "write", "exact"])
    ap.add_argument("--minutes", type=float, default=10.0)
    ap.add_argument("--vertices", type=int, default=50000)
    ap.add_argument("--exact-seconds", type=float, default=60.0)
    ap.add_argument("--fps", type=float, default=30.0)
    ap.add_argument("--threads", type=int, default=2, help="torch threads for the backend's compact")
    ap.add_argument("--bpy", default=str(ROOT / ".venv-bpy50" / "bin" / "python"))
    ap.add_argument("--tmp")
    ap.add_argument("--long-file")
    ap.add_argument("--exact-file")
    ap.add_argument("--json")
    args = ap.parse_args(sys.argv[sys.argv.index("--") + 1:] if "--" in sys.argv else None)
    if args.child:  # Blender reads its user folder when bpy is first imported: a throwaway one
        os.environ.setdefault("BLENDER_USER_RESOURCES", tempfile.mkdtemp(prefix="scantalk_bench_user_"))
    if args.child == "make":
        return child_make(args)
    if args.child in ("write", "exact"):
        return child_write(args, "COMPACT" if args.child == "write" else "EXACT")

    tmp = Path(args.tmp or tempfile.mkdtemp(prefix="scantalk-long-bench-"))
    tmp.mkdir(parents=True, exist_ok=True)
    files = ["--long-file", str(tmp / "long.npz"), "--exact-file", str(tmp / "exact.npz")]
    common = [*files, "--minutes", str(args.minutes), "--vertices", str(args.vertices),
              "--exact-seconds", str(args.exact_seconds), "--fps", str(args.fps)]
    me = str(Path(__file__).resolve())
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    res = {"args": vars(args)}

    def show():
        print(json.dumps(res, indent=1), flush=True)
        if args.json:
            Path(args.json).write_text(json.dumps(res, indent=1))

    try:
        res["make"] = run([args.bpy, me, "--child", "make", *common], env)
        res["file_gb"] = round((tmp / "long.npz").stat().st_size / 1e9, 2)
        show()
        res["backend_compact"] = run([sys.executable, "-c", COMPACT, str(tmp / "long.npz"), str(args.threads)],
                                     dict(env, OMP_NUM_THREADS=str(args.threads)))
        show()
        res["blender_compact"] = run([args.bpy, me, "--child", "write", *common], env)
        show()
        res["blender_exact"] = run([args.bpy, me, "--child", "exact", *common], env)
        show()
    finally:
        for f in ("long.npz", "exact.npz"):
            (tmp / f).unlink(missing_ok=True)


if __name__ == "__main__":
    main()
