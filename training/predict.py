"""Predict every clip of a dataset split with a checkpoint, for `python -m training.metrics`.

    python -m training.predict --checkpoint runs/default/best.pt --data ROOT --layout general \\
        --split test --out preds/ [--evaluate evals/]

Writes `OUT/<clip name>.npy`, float32 [T, V, 3] absolute vertex positions in the dataset's own
coordinates. Each template is mapped into the model's frame exactly as the add-on does at
inference (backend/framing.py: units snapped, bounding-box centre moved onto the model's frame
centre), and the offsets are mapped back. T is the ground-truth frame count (the official test
protocol; `--frames audio` uses the model's rule from the audio length instead).

`--baseline neutral` writes the "neutral face, no motion" baseline (the template repeated) without
any model. `--evaluate DIR` then runs training.metrics on the predictions (per_sequence.csv,
summary.json, plots) and adds `lipsync.json`: the Pearson correlation between predicted and
ground-truth mouth opening, per sequence (mean) and pooled over all frames after removing each
sequence's mean.
"""
from __future__ import annotations

import argparse
import json
import math
import sys
import time
import warnings
from pathlib import Path

import numpy as np
import torch

warnings.filterwarnings("ignore", message=".*Sparse CSR tensor support is in beta.*")
warnings.filterwarnings("ignore", message=".*Sparse invariant checks are implicitly disabled.*")


def _listing(args):
    from training import datasets as ds

    kwargs = {}
    if args.layout == "vocaset":
        if not args.faces_mesh or not args.lips_mask:
            raise ds.DatasetError("vocaset needs --faces-mesh (FLAME mesh) and --lips-mask")
        kwargs = dict(faces_mesh=args.faces_mesh, lips_mask=args.lips_mask, upper_mask=args.upper_mask)
    elif args.layout in ("biwi", "multiface"):
        kwargs = dict(lips_mask=args.lips_mask, upper_mask=args.upper_mask)
    split = [s for s in args.split.split(",") if s] if "," in args.split else args.split
    return ds.read_dataset(args.layout, args.data, split, **kwargs)


def _gt_frames(clip) -> int:
    arr = np.load(clip.vertices_path, mmap_mode="r", allow_pickle=False)
    n = arr.shape[0]
    return -(-n // clip.frame_step)  # ceil: what load_motion's [::step] keeps


@torch.no_grad()
def predict_clip(model, verts, faces, wav: np.ndarray, n_frames: int, cache=None, device="cpu",
                 ops_memo: dict | None = None) -> np.ndarray:
    """Absolute positions [n_frames, V, 3] (float32) for one template and one waveform."""
    from backend.diffusionnet import TorchOperators
    from backend.framing import fit_frame
    from backend.inference import audio_latents, chunk_size
    from backend.operator_cache import get_operators

    cfg = model.cfg
    frame = fit_frame(verts, cfg.frame_centre, cfg.frame_size)
    mverts = frame.to_model(verts)
    key = (mverts.tobytes(), faces.tobytes())
    if ops_memo is not None and key in ops_memo:
        ops = ops_memo[key]
    else:
        ops_np, _ = get_operators(mverts, faces, cfg.k_eig, cfg.grad_eps, cache=cache)
        ops = TorchOperators.from_numpy(ops_np, device)
        if ops_memo is not None:
            ops_memo.clear()  # keep one shape: clips come sorted by subject
            ops_memo[key] = ops
    w = torch.from_numpy(np.ascontiguousarray(wav, np.float32))[None].to(device)
    audio = audio_latents(model, w, n_frames, cfg.fps)
    neutral = torch.from_numpy(mverts.astype(np.float32)).to(device)
    geom = model.encode_geometry(neutral, ops)
    offsets = model.decode(geom, audio, ops, chunk_frames=chunk_size(len(verts), cfg.width, torch.device(device)))
    offsets = frame.offsets_from_model(offsets.float().cpu().numpy())
    return (verts[None].astype(np.float32) + offsets).astype(np.float32)


def pearson(a, b) -> float:
    a = np.asarray(a, np.float64) - np.mean(a)
    b = np.asarray(b, np.float64) - np.mean(b)
    den = math.sqrt(float((a * a).sum()) * float((b * b).sum()))
    if not den > 1e-18:  # a constant curve (e.g. the no-motion baseline) has no correlation
        return float("nan")
    return float((a * b).sum() / den)


def mouth_correlation(listing, pred_dir) -> dict:
    """Pearson r between predicted and ground-truth mouth opening (training.metrics' definition)."""
    from training.datasets import load_motion
    from training.metrics import mouth_opening, split_lips, truncate

    per, pooled_g, pooled_p = {}, [], []
    for clip in listing:
        path = Path(pred_dir) / f"{clip.name}.npy"
        subj = listing.subject_of(clip)
        if not path.is_file() or subj.lips is None:
            continue
        gt, pred = truncate(load_motion(clip), np.load(path))
        up, lo = split_lips(subj.template_vertices, subj.lips)
        mg, mp = mouth_opening(gt, up, lo), mouth_opening(pred, up, lo)
        per[clip.name] = pearson(mg, mp)
        pooled_g.append(mg - mg.mean())
        pooled_p.append(mp - mp.mean())
    vals = np.array([v for v in per.values() if np.isfinite(v)])
    out = {
        "mouth_r_mean": float(vals.mean()) if vals.size else None,
        "mouth_r_median": float(np.median(vals)) if vals.size else None,
        "mouth_r_pooled": pearson(np.concatenate(pooled_g), np.concatenate(pooled_p)) if pooled_g else None,
        "n_sequences": int(vals.size),
        "per_sequence": per,
    }
    langs = clip_languages(Path(listing.root) / "clips.json")
    if len(set(langs.values())) > 1:
        out["mouth_r_by_language"] = by_group(per, langs)
    return out


def clip_languages(clips_json) -> dict[str, str]:
    """clip name -> language from the generator's clips.json (English when it names none)."""
    from training.datasets import read_clips

    return {name: c.get("language", "en") for name, c in read_clips(clips_json).items()}


def by_group(per: dict, group_of: dict) -> dict:
    """{group: {"mouth_r_mean", "n"}} of the finite per-sequence values, by the group of each name."""
    groups: dict[str, list] = {}
    for name, v in per.items():
        if name in group_of and np.isfinite(v):
            groups.setdefault(group_of[name], []).append(v)
    return {g: {"mouth_r_mean": float(np.mean(v)), "n": len(v)} for g, v in sorted(groups.items())}


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="python -m training.predict", description=__doc__.split("\n\n")[0])
    p.add_argument("--checkpoint", help="our checkpoint (best.pt) or an official .pth.tar")
    p.add_argument("--baseline", choices=["neutral"], help="write the no-motion baseline instead of a model's predictions")
    p.add_argument("--data", required=True, help="dataset root")
    p.add_argument("--layout", default="general", choices=["general", "vocaset", "biwi", "multiface"])
    p.add_argument("--split", default="test", help="train, val, test, all, or subjects a,b,c")
    p.add_argument("--every", type=int, default=1, metavar="N",
                   help="keep every N-th clip of the split (a quicker, evenly spread subset)")
    p.add_argument("--out", required=True, help="folder for <clip name>.npy")
    p.add_argument("--faces-mesh", help="vocaset: FLAME mesh for the faces")
    p.add_argument("--lips-mask", help="lip indices (.mat 1-based lips_idx, or 0-based .npy/.txt)")
    p.add_argument("--upper-mask", help="upper-face indices (0-based .npy/.txt)")
    p.add_argument("--frames", choices=["gt", "audio"], default="gt",
                   help="frame count: the ground truth's (default) or from the audio length")
    p.add_argument("--device", default="cpu", help="cpu, cuda or auto")
    p.add_argument("--operator-cache", help="operator cache folder (default: the backend's)")
    p.add_argument("--evaluate", metavar="DIR", help="then run training.metrics into DIR (+ lipsync.json)")
    p.add_argument("--no-plots", action="store_true", help="with --evaluate: no PNG plots")
    args = p.parse_args(argv)
    if bool(args.checkpoint) == bool(args.baseline):
        p.error("give exactly one of --checkpoint or --baseline")

    from backend.audio_io import load_audio
    from backend.checkpoint import load_model
    from backend.errors import ScanTalkError
    from backend.inference import pick_device
    from training.datasets import DatasetError

    try:
        listing = _listing(args)
        if args.every < 1:
            raise ValueError(f"--every must be a positive whole number, not {args.every}")
        if args.every > 1:
            from dataclasses import replace

            listing = replace(listing, clips=listing.clips[::args.every])
        out = Path(args.out)
        out.mkdir(parents=True, exist_ok=True)
        device = pick_device(args.device)
        model = load_model(args.checkpoint, device) if args.checkpoint else None
        memo: dict = {}
        t0 = time.time()
        try:
            from tqdm import tqdm

            clips = tqdm(list(listing), desc="predict", dynamic_ncols=True)
        except ImportError:
            clips = list(listing)
        for clip in clips:
            subj = listing.subject_of(clip)
            verts = subj.template_vertices
            n_gt = _gt_frames(clip)
            if model is None:
                pred = np.repeat(verts[None].astype(np.float32), n_gt, axis=0)
            else:
                wav = load_audio(clip.wav_path)
                n = n_gt if args.frames == "gt" else model.num_frames(len(wav), model.cfg.fps)
                pred = predict_clip(model, verts, subj.faces, wav, n, args.operator_cache, device, memo)
            np.save(out / f"{clip.name}.npy", pred)
        print(f"wrote {len(listing)} predictions to {out} in {time.time() - t0:.1f} s", file=sys.stderr)
        if args.evaluate:
            from training.metrics import METRIC_KEYS, run_evaluation

            summary = run_evaluation(out, listing, args.evaluate, plots=not args.no_plots)
            lips = mouth_correlation(listing, out)
            Path(args.evaluate, "lipsync.json").write_text(json.dumps(lips, indent=2), encoding="utf-8")
            short = {k: summary[k] for k in ("n_sequences", *METRIC_KEYS, "fdd_abs")}
            short.update({k: lips[k] for k in ("mouth_r_mean", "mouth_r_median", "mouth_r_pooled")})
            print(json.dumps(short, indent=2))
    except (DatasetError, ScanTalkError, ValueError, FileNotFoundError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
