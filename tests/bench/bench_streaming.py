"""Streaming benchmark: peak RSS and time against clip length, before and after, cold/warm start
of the worker, batch throughput, float16 error (run on demand, not by CI).

    nice -n 19 .venv/bin/python tests/bench/bench_streaming.py [--json out.json]
        [--real 20,60] [--stub 1,10,60] [--stub-50k 1,10] [--baseline f422577] [--skip ...]
        [--real-before-max-s 60] [--before-max-min 10] [--compact-min 10]

Every run is a separate `python -m backend animate` process whose peak RSS is read with wait4.
"before" runs the same command from a git worktree of `--baseline` (the last commit before
streaming), "after" runs this checkout, in the same session.

- `real`: the default model on FLAME_sample (5,023 vertices), clips of the given seconds.
- `stub`/`stub-50k`: clips of the given MINUTES with the decoder's per-frame network replaced by
  a cheap stand-in of the same output shape (offsets from the audio latents, no DiffusionNet).
  Everything else is the real pipeline: audio loading and windowed encoding, BiLSTM, framing,
  resampling, the result file. This measures what memory does with length without hours of
  decoding on a loaded 2-core box; the decoder's own memory is one chunk of frames (bounded).
- `*_compact`: the same clip again with `--compact 0.1`: the backend's Compact basis
  (backend/compact.py) read back from the streamed file; its line (K, error, seconds) is kept.
- cold/warm: time from spawning `serve` to `ready`, to the first `progress` event and to the
  `result` of a 4 s clip at 5k vertices; cold = fresh process and empty operator cache; warm =
  a second request to the same worker.
- batch: clips per hour for N 4 s rows on two meshes.

Environment: OMP_NUM_THREADS=1 is set for every child (on this shared 2-core machine two threads
under contention decode 10-30x slower than one). Needs ../shared (FLAME, speech clips).
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

ROOT = Path(__file__).resolve().parents[2]
SHARED = ROOT.parent / "shared"
sys.path.insert(0, str(ROOT))

FLAME = SHARED / "data" / "meshes" / "FLAME_sample.ply"

# Runs `python -m backend ...` from the code at argv[1], optionally with the decoder stubbed.
RUNNER = r'''
import sys
root, stub = sys.argv[1], sys.argv[2] == "1"
sys.path.insert(0, root)
if stub:
    import torch
    from backend import model as M

    def decode_chunks(self, geom, audio, ops, chunk_frames=None, on_chunk=None):
        T, step = audio.shape[0], max(chunk_frames or 1, 256)
        g = geom[:, :3]
        for s in range(0, T, step):
            a = audio[s:s + step, :3]
            yield 1e-3 * torch.tanh(a[:, None, :] * g[None, :, :])
            if on_chunk is not None:
                on_chunk(min(s + step, T), T)

    def decode(self, geom, audio, ops, chunk_frames=None, on_chunk=None):
        return torch.cat(list(decode_chunks(self, geom, audio, ops, chunk_frames, on_chunk)))

    M.ScanTalk.decode_chunks = decode_chunks
    M.ScanTalk.decode = decode
from backend.cli import main
sys.exit(main(sys.argv[3:]))
'''


def run_rss_wait4(cmd, env, log):
    """Peak RSS of exactly this child: stdout/stderr to a file, wait4 for the rusage."""
    t = time.perf_counter()
    with open(log, "w") as fh:
        p = subprocess.Popen(cmd, env=env, stdout=fh, stderr=subprocess.STDOUT)
        _, status, usage = os.wait4(p.pid, 0)
    code = os.waitstatus_to_exitcode(status)
    return {"seconds": round(time.perf_counter() - t, 2), "peak_rss_mb": round(usage.ru_maxrss / 1024, 1),
            "exit": code, "log_tail": Path(log).read_text()[-400:] if code else ""}


def speech(seconds: float, path: Path) -> Path:
    from backend.audio_io import load_audio, save_wav

    if path.exists():
        return path
    clips = sorted((SHARED / "data" / "speech").glob("*.wav"))
    wav = np.concatenate([load_audio(c) for c in clips])
    wav = np.tile(wav, int(np.ceil(seconds * 16000 / len(wav))))[: int(seconds * 16000)]
    save_wav(path, wav, 16000, subtype="PCM_16")
    return path


def head_50k(tmp: Path) -> Path:
    path = tmp / "head_50k.npz"
    if not path.exists():
        sys.path.insert(0, str(ROOT / "tests" / "bench"))
        from bench_backend import big_head

        v, f = big_head(50000)
        np.savez(path, vertices=v, faces=f)
    return path


def baseline_tree(rev: str, tmp: Path) -> Path:
    tree = tmp / f"baseline-{rev}"
    if not tree.exists():
        subprocess.run(["git", "-C", str(ROOT), "worktree", "add", "--detach", str(tree), rev], check=True,
                       capture_output=True)
    return tree


def animate_case(code_root: Path, stub: bool, mesh: Path, audio: Path, out: Path, env, log, extra=()):
    cmd = [sys.executable, "-c", RUNNER, str(code_root), "1" if stub else "0", "animate", "--mesh", str(mesh),
           "--audio", str(audio), "--out", str(out), *extra]
    r = run_rss_wait4(cmd, env, log)
    compact = [ln for ln in Path(log).read_text().splitlines() if ln.startswith("added a Compact basis")]
    if compact:
        r["compact"] = compact[-1]
    if out.exists():
        r["file_mb"] = round(out.stat().st_size / 2**20, 1)
        out.unlink()
    return r


def worker_times(env, mesh: Path, audio: Path, tmp: Path) -> dict:
    """Seconds from spawn to ready, to the first progress event and to the result; then a
    second (warm) request."""
    t0 = time.perf_counter()
    p = subprocess.Popen([sys.executable, "-m", "backend", "serve"], env=env, text=True, stdin=subprocess.PIPE,
                         stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, cwd=ROOT)
    out = {}
    assert json.loads(p.stdout.readline())["event"] == "ready"
    out["cold_ready_s"] = time.perf_counter() - t0

    def request(rid, prefix):
        t = time.perf_counter()
        p.stdin.write(json.dumps({"id": rid, "cmd": "animate", "mesh": str(mesh), "audio": str(audio),
                                  "out": str(tmp / f"{rid}.npz")}) + "\n")
        p.stdin.flush()
        first = None
        while True:
            ev = json.loads(p.stdout.readline())
            if ev.get("id") != rid:
                continue
            if ev["event"] == "progress" and first is None:
                first = time.perf_counter() - t
            if ev["event"] in ("result", "error"):
                assert ev["event"] == "result", ev
                out[f"{prefix}_first_progress_s"] = first
                out[f"{prefix}_result_s"] = time.perf_counter() - t
                return

    request("c1", "cold_request")  # right after ready: pays the rest of the imports, operators
    out["cold_total_s"] = time.perf_counter() - t0
    request("w1", "warm_request")
    p.stdin.write(json.dumps({"id": "q", "cmd": "shutdown"}) + "\n")
    p.stdin.flush()
    p.wait(timeout=60)
    return {k: round(v, 3) for k, v in out.items()}


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--json")
    ap.add_argument("--real", default="20,60", help="seconds, real decoder, 5k, before and after")
    ap.add_argument("--stub", default="1,10,60", help="minutes, stub decoder, 5k (after; before up to 10)")
    ap.add_argument("--stub-50k", default="1,10", help="minutes, stub decoder, 50k (after; before 1)")
    ap.add_argument("--before-max-min", type=float, default=10.0,
                    help="longest stub clip run on the baseline (it holds every frame several times)")
    ap.add_argument("--baseline", default="f422577")
    ap.add_argument("--real-before-max-s", type=float, default=60.0,
                    help="longest real clip run on the baseline (it holds every frame several times)")
    ap.add_argument("--compact-min", default="10",
                    help="minutes (of --stub / --stub-50k) also run with --compact 0.1 (the backend's basis)")
    ap.add_argument("--batch-rows", type=int, default=6)
    ap.add_argument("--skip", default="", help="comma list of: real,stub,stub50k,start,batch,f16")
    args = ap.parse_args()
    skip = set(filter(None, args.skip.split(",")))
    compact_min = set(map(float, filter(None, args.compact_min.split(","))))
    import torch

    torch.set_num_threads(1)  # the in-process float16 check, like the children
    tmp = Path(tempfile.mkdtemp(prefix="scantalk-stream-bench-"))
    env = dict(os.environ, SCANTALK_CACHE_DIR=str(tmp / "cache"), OMP_NUM_THREADS="1", PYTHONPATH=str(ROOT))
    base = baseline_tree(args.baseline, tmp)
    res: dict = {"baseline": args.baseline, "threads": 1}

    def show():
        print(json.dumps(res, indent=1), flush=True)
        if args.json:
            Path(args.json).write_text(json.dumps(res, indent=1))

    # warm the operator cache for FLAME so every case below measures the same thing
    speech(4.0, tmp / "4s.wav")
    animate_case(ROOT, True, FLAME, tmp / "4s.wav", tmp / "w.npz", env, tmp / "w.log")

    if "real" not in skip:
        for sec in map(float, filter(None, args.real.split(","))):
            audio = speech(sec, tmp / f"{sec:g}s.wav")
            for name, code in (("after", ROOT), ("before", base)):
                if name == "before" and sec > args.real_before_max_s:
                    continue
                r = animate_case(code, False, FLAME, audio, tmp / "o.npz", env, tmp / "real.log")
                res[f"real_5k_{sec:g}s_{name}"] = r
                show()
    if "stub" not in skip:
        for mins in map(float, filter(None, args.stub.split(","))):
            audio = speech(60 * mins, tmp / f"{mins:g}min.wav")
            for name, code in (("after", ROOT), ("before", base)):
                if name == "before" and mins > args.before_max_min:
                    continue
                res[f"stub_5k_{mins:g}min_{name}"] = animate_case(code, True, FLAME, audio, tmp / "o.npz", env,
                                                                  tmp / "stub.log")
                show()
            if mins in compact_min:
                res[f"stub_5k_{mins:g}min_after_compact"] = animate_case(
                    ROOT, True, FLAME, audio, tmp / "o.npz", env, tmp / "stub.log", extra=("--compact", "0.1"))
                show()
    if "stub50k" not in skip:
        mesh = head_50k(tmp)
        animate_case(ROOT, True, mesh, tmp / "4s.wav", tmp / "w.npz", env, tmp / "w.log")  # operators
        for mins in map(float, filter(None, args.stub_50k.split(","))):
            audio = speech(60 * mins, tmp / f"{mins:g}min.wav")
            for name, code in (("after", ROOT), ("before", base)):
                if name == "before" and mins > 1:
                    continue
                res[f"stub_50k_{mins:g}min_{name}"] = animate_case(code, True, mesh, audio, tmp / "o.npz", env,
                                                                   tmp / "stub50.log")
                show()
            if mins in compact_min:
                res[f"stub_50k_{mins:g}min_after_compact"] = animate_case(
                    ROOT, True, mesh, audio, tmp / "o.npz", env, tmp / "stub50.log", extra=("--compact", "0.1"))
                show()
    if "start" not in skip:
        four = speech(4.0, tmp / "4s.wav")
        cold_env = dict(env, SCANTALK_CACHE_DIR=str(tmp / "cache-cold"))
        mesh = tmp / "flame.npz"
        from backend.mesh_io import load_mesh

        v, f = load_mesh(FLAME)
        np.savez(mesh, vertices=v, faces=f)
        res["worker_start_empty_cache"] = worker_times(cold_env, mesh, four, tmp)
        res["worker_start_cached_operators"] = worker_times(env, mesh, four, tmp)
        show()
    if "f16" not in skip:
        from backend.inference import Session, animate_to_file
        from backend.result_file import open_result

        four = speech(4.0, tmp / "4s.wav")
        s = Session(cache_dir=tmp / "cache")
        a = animate_to_file(FLAME, four, tmp / "f32.npz", session=s)
        b = animate_to_file(FLAME, four, tmp / "f16.npz", dtype="float16", session=s)
        with open_result(a.path) as ra, open_result(b.path) as rb:
            x, y = ra.frames(), rb.frames()
        err = np.abs(x - y)
        res["float16_default_model_flame"] = {"max_offset_m": float(np.abs(x).max()), "max_error_m": float(err.max()),
                                              "mean_error_m": float(err.mean()),
                                              "max_relative": float((err / np.maximum(np.abs(x), 1e-12)).max())}
        show()
    if "batch" not in skip:
        from backend.mesh_io import load_mesh

        four = speech(4.0, tmp / "4s.wav")
        v, f = load_mesh(FLAME)
        np.savez(tmp / "flame_b.npz", vertices=v, faces=f)
        demo = ROOT / "backend" / "assets" / "demo_head.obj"
        rows = [{"mesh": str(tmp / "flame_b.npz") if i % 2 else str(demo), "audio": str(four),
                 "out": f"row{i}"} for i in range(args.batch_rows)]
        manifest = tmp / "rows.jsonl"
        manifest.write_text("".join(json.dumps(r) + "\n" for r in rows))
        out = tmp / "batch_out"
        r = run_rss_wait4([sys.executable, "-m", "backend", "batch", str(manifest), "--out", str(out)],
                          dict(env, SCANTALK_CACHE_DIR=str(tmp / "cache-batch")), tmp / "batch.log")
        summary = json.loads((out / "batch_summary.json").read_text())
        res["batch_4s_rows"] = {**r, "rows": summary["rows"], "done": summary["done"],
                                "clips_per_hour": summary["clips_per_hour"],
                                "operators": [x.get("operators") for x in summary["results"]]}
        show()
    subprocess.run(["git", "-C", str(ROOT), "worktree", "remove", "--force", str(base)], capture_output=True)
    show()


if __name__ == "__main__":
    main()
