"""Decode speed of model files against each other (run on demand, not by CI).

    .venv/bin/python tests/bench/bench_models.py BASELINE.pt CANDIDATE.pt [...] [--reps 3] [--json out.json]

`backend.inference.animate` end to end (audio features, encoder, decoder) on FLAME_sample (5,023
vertices) with a LibriVox clip, warm: one shared Session, operators cached, one untimed call per
model first. The models alternate within every repetition so that machine load falls on all of them
alike; the report is the median ms per frame and its ratio to the first model's (issue 8's budget:
within 1.5x). Needs ../shared (FLAME_sample and the speech clips are not redistributable).
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[2]
SHARED = ROOT.parent / "shared" / "data"
sys.path.insert(0, str(ROOT))

from backend.inference import Session, animate  # noqa: E402


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("models", nargs="+", help="model files; the first is the baseline")
    p.add_argument("--mesh", default=str(SHARED / "meshes" / "FLAME_sample.ply"))
    p.add_argument("--audio", default=str(SHARED / "speech" / "sense_and_sensibility_01_austen_64kb-0880.wav"))
    p.add_argument("--reps", type=int, default=3)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--json")
    a = p.parse_args(argv)
    torch.set_num_threads(a.threads)
    session = Session()
    for m in a.models:  # warm-up: operators, the models' weights, the allocator
        animate(a.mesh, a.audio, checkpoint=m, session=session)
    ms = {m: [] for m in a.models}
    frames = 0
    for _ in range(a.reps):
        for m in a.models:
            t = time.perf_counter()
            r = animate(a.mesh, a.audio, checkpoint=m, session=session)
            frames = r.offsets.shape[0]
            ms[m].append((time.perf_counter() - t) / frames * 1000)
    base = float(np.median(ms[a.models[0]]))
    rows = []
    for m in a.models:
        med = float(np.median(ms[m]))
        rows.append({"model": m, "ms_per_frame": med, "runs": ms[m], "ratio": med / base})
        print(f"{m}: {med:.2f} ms/frame (runs {', '.join(f'{x:.2f}' for x in ms[m])}), "
              f"x{med / base:.2f} of the first")
    print(f"{frames} frames, {a.reps} repetitions, {a.threads} threads, warm")
    if a.json:
        Path(a.json).write_text(json.dumps({"frames": frames, "threads": a.threads, "rows": rows}, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
