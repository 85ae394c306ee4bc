"""Backend speed and memory benchmark (run on demand, not by CI).

    .venv/bin/python tests/bench/bench_backend.py [--quick] [--json out.json]

Measures, in one process against baselines from the same run:
1. FLAME_sample + the official-format fixture checkpoint: operators cold vs cached, per-frame
   decoder time of our sparse frame-batched decoder vs the official dense design (dense V×V
   operators, one frame at a time), end-to-end CLI time cold/warm with peak RSS.
2. ~25k and ~100k-vertex heads (ICT FaceKit subdivided/decimated): operator time, per-frame
   decoder time, peak RSS of a full 10 s `animate`.
3. A warm `serve` request on a cached 5k mesh with 4 s of audio.
Needs ../shared (FLAME, ICT, the fixture) and fast-simplification.
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[2]
SHARED = ROOT.parent / "shared"
sys.path.insert(0, str(ROOT))

from backend.audio_io import load_audio, save_wav  # noqa: E402
from backend.checkpoint import load_model  # noqa: E402
from backend.diffusionnet import TorchOperators, compute_operators  # noqa: E402
from backend.mesh_io import load_mesh  # noqa: E402
from backend.operator_cache import get_operators  # noqa: E402

FIX = SHARED / "fixtures" / "official_scantalk_tiny"
CKPT = FIX / "official_format_tiny.pth.tar"


def run_isolated_rss(cmd, env):
    """Peak RSS of exactly this child (RUSAGE_CHILDREN is a running maximum, so use wait4)."""
    t = time.perf_counter()
    p = subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    _, status, usage = os.wait4(p.pid, 0)
    out = p.stdout.read().decode()
    err = p.stderr.read().decode()
    if status != 0:
        raise RuntimeError(f"{cmd} failed:\n{err[-3000:]}")
    return time.perf_counter() - t, usage.ru_maxrss / 1024, out


def dense_decoder_ms_per_frame(model, geom, audio, ops_np, frames: int) -> float:
    """The official design: L, gradX, gradY dense V×V, the decoder run frame by frame."""
    dec = model.decoder
    evecs, mass, evals = (torch.from_numpy(a) for a in (ops_np.evecs, ops_np.mass, ops_np.evals))
    gx = torch.from_numpy(ops_np.gradX.toarray())
    gy = torch.from_numpy(ops_np.gradY.toarray())
    t = time.perf_counter()
    with torch.inference_mode():
        for f in range(frames):
            x = dec.first_lin(torch.cat([geom, audio[f].expand(len(geom), -1)], dim=1))
            for b in dec.blocks():
                spec = evecs.T @ (x * mass[:, None])
                xd = evecs @ (torch.exp(-evals[:, None] * b.diffusion.times()[None]) * spec)
                g = b.gradient_features(gx @ xd, gy @ xd)
                x = x + b.mlp(torch.cat([x, xd, g], -1))
            dec.last_lin(x)
    return 1000 * (time.perf_counter() - t) / frames


def sparse_decoder_ms_per_frame(model, geom, audio, ops, repeats=2) -> float:
    from backend.inference import chunk_size

    chunk = chunk_size(geom.shape[0], model.cfg.width, torch.device("cpu"))
    best = float("inf")
    with torch.inference_mode():
        model.decode(geom, audio[:4], ops, chunk_frames=chunk)  # warm-up
        for _ in range(repeats):
            t = time.perf_counter()
            model.decode(geom, audio, ops, chunk_frames=chunk)
            best = min(best, time.perf_counter() - t)
    return 1000 * best / audio.shape[0]


def big_head(target: int):
    import fast_simplification

    with np.load(SHARED / "data" / "ict_facekit" / "ict_facekit_face_head_neck.npz") as z:
        v, f = z["neutral"].astype(np.float64) * 0.01, z["faces"].astype(np.int64)
    while len(v) < target:  # midpoint subdivision
        e = np.sort(np.concatenate([f[:, [0, 1]], f[:, [1, 2]], f[:, [2, 0]]]), 1)
        u, inv = np.unique(e, axis=0, return_inverse=True)
        m = inv.reshape(3, -1).T + len(v)
        v = np.concatenate([v, (v[u[:, 0]] + v[u[:, 1]]) / 2])
        a, b, c = f.T
        ab, bc, ca = m.T
        f = np.concatenate([np.stack(s, 1) for s in ((a, ab, ca), (b, bc, ab), (c, ca, bc), (ab, bc, ca))])
    if len(v) > 1.05 * target:
        v, f = fast_simplification.simplify(v.astype(np.float32), f.astype(np.int32), 1 - target / len(v))
    return v.astype(np.float64), f.astype(np.int64)


def speech(seconds: float, path: Path) -> Path:
    clips = sorted((SHARED / "data" / "speech").glob("*.wav"))
    wav = np.concatenate([load_audio(c) for c in clips])
    wav = np.tile(wav, int(np.ceil(seconds * 16000 / len(wav))))[: int(seconds * 16000)]
    save_wav(path, wav, 16000)
    return path


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--quick", action="store_true", help="skip the 100k mesh")
    ap.add_argument("--json")
    args = ap.parse_args()
    torch.set_num_threads(int(os.environ.get("BENCH_THREADS", torch.get_num_threads())))
    tmp = Path(tempfile.mkdtemp(prefix="scantalk-bench-"))
    env = dict(os.environ, SCANTALK_CACHE_DIR=str(tmp / "cache"), PYTHONPATH=str(ROOT))
    results: dict = {"threads": torch.get_num_threads()}

    # 1. FLAME + fixture ------------------------------------------------------------------
    v, f = load_mesh(SHARED / "data" / "meshes" / "FLAME_sample.ply")
    t = time.perf_counter()
    ops_np = compute_operators(v, f, 128)
    results["flame_operators_cold_s"] = time.perf_counter() - t
    get_operators(v, f, 128, cache=tmp / "c0")
    t = time.perf_counter()
    _, hit = get_operators(v, f, 128, cache=tmp / "c0")
    results["flame_operators_cached_s"] = time.perf_counter() - t
    assert hit
    model = load_model(CKPT)
    ops = TorchOperators.from_numpy(ops_np)
    wav = torch.from_numpy(load_audio(FIX / "speech_16k.wav"))[None]
    n = model.num_frames(wav.shape[1])
    with torch.inference_mode():
        audio = model.encode_audio(wav, n)
        geom = model.encode_geometry(torch.from_numpy(v).float(), ops)
    results["flame_sparse_ms_per_frame"] = sparse_decoder_ms_per_frame(model, geom, audio, ops)
    results["flame_dense_ms_per_frame"] = dense_decoder_ms_per_frame(model, geom, audio, ops_np, frames=6)
    results["flame_speedup"] = results["flame_dense_ms_per_frame"] / results["flame_sparse_ms_per_frame"]

    cli = [sys.executable, "-m", "backend", "animate", "--mesh", str(SHARED / "data" / "meshes" / "FLAME_sample.ply"),
           "--audio", str(FIX / "speech_16k.wav"), "--checkpoint", str(CKPT), "--out", str(tmp / "o.npz")]
    results["flame_cli_cold_s"], results["flame_cli_cold_rss_mb"], _ = run_isolated_rss(cli, env)
    results["flame_cli_cached_s"], results["flame_cli_cached_rss_mb"], _ = run_isolated_rss(cli, env)
    print(json.dumps(results, indent=1), flush=True)

    # 2. big meshes ------------------------------------------------------------------------
    ten = speech(10.0, tmp / "ten.wav")
    for target in ([25000] if args.quick else [25000, 100000]):
        bv, bf = big_head(target)
        key = f"{len(bv) // 1000}k"
        t = time.perf_counter()
        bops = compute_operators(bv, bf, 128)
        results[f"{key}_operators_s"] = time.perf_counter() - t
        tops = TorchOperators.from_numpy(bops)
        with torch.inference_mode():
            bgeom = model.encode_geometry(torch.from_numpy(bv).float(), tops)
        results[f"{key}_sparse_ms_per_frame"] = sparse_decoder_ms_per_frame(model, bgeom, audio[:30], tops, repeats=1)
        mesh = tmp / f"head_{key}.npz"
        np.savez(mesh, vertices=bv, faces=bf)
        cmd = [sys.executable, "-m", "backend", "animate", "--mesh", str(mesh), "--audio", str(ten),
               "--checkpoint", str(CKPT), "--out", str(tmp / f"o_{key}.npz"), "--normalize", "none"]
        results[f"{key}_cli_10s_audio_s"], results[f"{key}_cli_peak_rss_mb"], _ = run_isolated_rss(cmd, env)
        del bops, tops, bgeom
        print(json.dumps(results, indent=1), flush=True)

    # 3. warm serve request ------------------------------------------------------------------
    four = speech(4.0, tmp / "four.wav")
    mesh = tmp / "flame.npz"
    np.savez(mesh, vertices=v, faces=f)
    p = subprocess.Popen([sys.executable, "-m", "backend", "serve"], env=env, text=True,
                         stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL)
    p.stdout.readline()

    def request(rid):
        p.stdin.write(json.dumps({"id": rid, "cmd": "animate", "mesh": str(mesh), "audio": str(four),
                                  "out": str(tmp / f"{rid}.npz"), "checkpoint": str(CKPT)}) + "\n")
        p.stdin.flush()
        t = time.perf_counter()
        while True:
            ev = json.loads(p.stdout.readline())
            if ev.get("id") == rid and ev["event"] in ("result", "error"):
                assert ev["event"] == "result", ev
                return time.perf_counter() - t

    results["serve_first_request_s"] = request("w1")
    results["serve_warm_request_s"] = min(request("w2"), request("w3"))
    p.stdin.write(json.dumps({"id": "q", "cmd": "shutdown"}) + "\n")
    p.stdin.flush()
    p.wait(timeout=60)

    print(json.dumps(results, indent=1))
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=1))


if __name__ == "__main__":
    main()
