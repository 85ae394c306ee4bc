"""Evaluation metrics (numpy), as ../shared/docs/scantalk-reference.md "Metrics" defines them.

All sequence arrays are [T, V, 3] in metres at the dataset's frame rate (vocaset at 30 fps,
i.e. after the [::2] subsampling: the official code's 60-fps slip is NOT reproduced). Ground truth
and prediction are truncated to their common length before any metric.

- MVE: mean over frames and vertices of ||gt - pred||  (m).
- LVE: mean over frames of the max over lip vertices of ||gt - pred||^2  (m^2).
- FDD: std over time of ||v_t - template||^2 per upper-face vertex, averaged over those vertices;
  FDD_seq = std_gt - std_pred (sign kept)  (m^2).
- Lip sync (follow-up work): mouth opening = distance between the mean of the upper-lip vertices
  and the mean of the lower-lip vertices, per frame (m); DTW and discrete Frechet distances are
  computed between the predicted and the ground-truth mouth-opening curves (m).

CLI::

    python -m training.metrics --pred DIR --data ROOT --layout general --split test --out OUTDIR
"""
from __future__ import annotations

import argparse
import csv
import json
import math
import sys
from pathlib import Path

import numpy as np


# --------------------------------------------------------------------------- basic metrics

def truncate(gt: np.ndarray, pred: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Both sequences cut to their common length; vertex counts must match."""
    gt = np.asarray(gt, dtype=np.float64)
    pred = np.asarray(pred, dtype=np.float64)
    if gt.ndim != 3 or pred.ndim != 3 or gt.shape[2] != 3 or pred.shape[2] != 3:
        raise ValueError(f"sequences must be [T, V, 3]; got {list(gt.shape)} and {list(pred.shape)}")
    if gt.shape[1] != pred.shape[1]:
        raise ValueError(f"ground truth has {gt.shape[1]} vertices, prediction {pred.shape[1]}")
    n = min(len(gt), len(pred))
    if n == 0:
        raise ValueError("a sequence has 0 frames")
    return gt[:n], pred[:n]


def mve(gt, pred) -> float:
    """Mean vertex error: mean over frames and vertices of the Euclidean distance (m)."""
    gt, pred = truncate(gt, pred)
    return float(np.linalg.norm(gt - pred, axis=-1).mean())


def lve(gt, pred, lips) -> float:
    """Lip vertex error: mean over frames of the max over lip vertices of the squared distance (m^2)."""
    gt, pred = truncate(gt, pred)
    lips = np.asarray(lips, dtype=np.int64)
    sq = ((gt[:, lips] - pred[:, lips]) ** 2).sum(-1)  # [T, L]
    return float(sq.max(axis=1).mean())


def upper_face_dynamics(seq, template, upper) -> float:
    """Mean over upper-face vertices of the std over time of ||v_t - template||^2."""
    seq = np.asarray(seq, dtype=np.float64)
    template = np.asarray(template, dtype=np.float64)
    upper = np.asarray(upper, dtype=np.int64)
    disp = ((seq[:, upper] - template[None, upper]) ** 2).sum(-1)  # [T, U]
    return float(disp.std(axis=0).mean())


def fdd(gt, pred, template, upper) -> float:
    """Upper-face dynamics deviation of one sequence: std_gt - std_pred (sign kept, m^2)."""
    gt, pred = truncate(gt, pred)
    return upper_face_dynamics(gt, template, upper) - upper_face_dynamics(pred, template, upper)


# --------------------------------------------------------------------------- lip sync

def split_lips(template, lips) -> tuple[np.ndarray, np.ndarray]:
    """Split a lip mask into (upper lip, lower lip) by y relative to the mask's mean y (y up)."""
    template = np.asarray(template)
    lips = np.asarray(lips, dtype=np.int64)
    y = template[lips, 1]
    upper, lower = lips[y >= y.mean()], lips[y < y.mean()]
    if upper.size == 0 or lower.size == 0:
        raise ValueError("the lip mask cannot be split into an upper and a lower lip by height")
    return upper, lower


def mouth_opening(verts, upper_lip_idx, lower_lip_idx) -> np.ndarray:
    """Per frame, distance between the centroids of the upper and the lower lip vertices [T]."""
    verts = np.asarray(verts, dtype=np.float64)
    up = verts[:, np.asarray(upper_lip_idx, dtype=np.int64)].mean(axis=1)
    lo = verts[:, np.asarray(lower_lip_idx, dtype=np.int64)].mean(axis=1)
    return np.linalg.norm(up - lo, axis=-1)


def _as_traj(a) -> np.ndarray:
    a = np.asarray(a, dtype=np.float64)
    if a.ndim == 1:
        a = a[:, None]
    elif a.ndim > 2:
        a = a.reshape(a.shape[0], -1)
    if a.shape[0] == 0:
        raise ValueError("a trajectory has 0 frames")
    return a


def _pairwise(a, b) -> np.ndarray:
    a, b = _as_traj(a), _as_traj(b)
    if a.shape[1] != b.shape[1]:
        raise ValueError(f"trajectories differ in dimension: {a.shape[1]} and {b.shape[1]}")
    if a.shape[0] * b.shape[0] * a.shape[1] <= 20_000_000:
        return np.linalg.norm(a[:, None, :] - b[None, :, :], axis=-1)
    d2 = (a * a).sum(1)[:, None] + (b * b).sum(1)[None, :] - 2.0 * a @ b.T
    d = np.sqrt(np.maximum(d2, 0.0))
    return d


def _diagonals(n: int, m: int):
    """For each anti-diagonal k = i + j: the i indices (row) on it."""
    for k in range(n + m - 1):
        i0, i1 = max(0, k - m + 1), min(n - 1, k)
        yield k, np.arange(i0, i1 + 1)


def dtw_distance(a, b) -> float:
    """Dynamic time warping between trajectories a [T1, d] and b [T2, d] (1-D allowed).

    Local cost: Euclidean distance between frames; steps (1,0), (0,1), (1,1); the total cost of
    the optimal path is divided by that path's length (number of matched pairs). O(T1*T2),
    vectorised along anti-diagonals.
    """
    c = _pairwise(a, b)
    n, m = c.shape
    D = np.full((n, m), np.inf)
    L = np.zeros((n, m), dtype=np.int64)
    for k, i in _diagonals(n, m):
        j = k - i
        if k == 0:
            D[0, 0], L[0, 0] = c[0, 0], 1
            continue
        cand = np.full((3, len(i)), np.inf)
        lens = np.zeros((3, len(i)), dtype=np.int64)
        ok = (i > 0) & (j > 0)
        cand[0, ok], lens[0, ok] = D[i[ok] - 1, j[ok] - 1], L[i[ok] - 1, j[ok] - 1]
        ok = i > 0
        cand[1, ok], lens[1, ok] = D[i[ok] - 1, j[ok]], L[i[ok] - 1, j[ok]]
        ok = j > 0
        cand[2, ok], lens[2, ok] = D[i[ok], j[ok] - 1], L[i[ok], j[ok] - 1]
        best = cand.argmin(axis=0)  # ties: diagonal first (shortest path)
        cols = np.arange(len(i))
        D[i, j] = c[i, j] + cand[best, cols]
        L[i, j] = lens[best, cols] + 1
    return float(D[-1, -1] / L[-1, -1])


def discrete_frechet(a, b) -> float:
    """Discrete Frechet distance between trajectories a [T1, d] and b [T2, d] (1-D allowed)."""
    c = _pairwise(a, b)
    n, m = c.shape
    F = np.full((n, m), np.inf)
    for k, i in _diagonals(n, m):
        j = k - i
        if k == 0:
            F[0, 0] = c[0, 0]
            continue
        prev = np.full((3, len(i)), np.inf)
        ok = (i > 0) & (j > 0)
        prev[0, ok] = F[i[ok] - 1, j[ok] - 1]
        ok = i > 0
        prev[1, ok] = F[i[ok] - 1, j[ok]]
        ok = j > 0
        prev[2, ok] = F[i[ok], j[ok] - 1]
        F[i, j] = np.maximum(prev.min(axis=0), c[i, j])
    return float(F[-1, -1])


# --------------------------------------------------------------------------- per sequence

METRIC_KEYS = ("mve", "lve", "fdd", "dtw", "frechet")


def evaluate_sequence(gt, pred, template=None, lips=None, upper=None,
                      upper_lip=None, lower_lip=None) -> dict:
    """All metrics of one sequence. A metric whose mask is missing is NaN.

    ``upper_lip``/``lower_lip`` default to ``split_lips(template, lips)``; the mouth-opening
    curves (m) are returned too (keys ``mouth_gt``, ``mouth_pred``) for plots.
    """
    gt, pred = truncate(gt, pred)
    row = {"n_frames": int(len(gt)), "mve": mve(gt, pred), "lve": math.nan, "fdd": math.nan,
           "dtw": math.nan, "frechet": math.nan, "mouth_gt": None, "mouth_pred": None}
    if lips is not None and len(lips):
        row["lve"] = lve(gt, pred, lips)
    if upper is not None and len(upper) and template is not None:
        row["fdd"] = fdd(gt, pred, template, upper)
    if (upper_lip is None or lower_lip is None) and lips is not None and template is not None:
        try:
            upper_lip, lower_lip = split_lips(template, lips)
        except ValueError:
            upper_lip = lower_lip = None
    if upper_lip is not None and lower_lip is not None:
        mg = mouth_opening(gt, upper_lip, lower_lip)
        mp = mouth_opening(pred, upper_lip, lower_lip)
        row["dtw"] = dtw_distance(mg, mp)
        row["frechet"] = discrete_frechet(mg, mp)
        row["mouth_gt"], row["mouth_pred"] = mg, mp
    return row


def _nanmean(vals) -> float | None:
    v = np.asarray([x for x in vals if x is not None], dtype=np.float64)
    v = v[np.isfinite(v)]
    return float(v.mean()) if v.size else None


def summarise(rows) -> dict:
    """Means over sequences: mve, lve, fdd (sign kept), fdd_abs (mean |FDD_seq|), dtw, frechet.

    NaN entries (a mask missing) are left out of a mean; a mean over nothing is None.
    """
    rows = list(rows)
    out = {"n_sequences": len(rows)}
    for key in METRIC_KEYS:
        out[key] = _nanmean(r.get(key) for r in rows)
    out["fdd_abs"] = _nanmean(abs(r["fdd"]) if r.get("fdd") is not None else None for r in rows)
    return out


# --------------------------------------------------------------------------- CLI

def _load_listing(args):
    from training import datasets as ds

    kwargs = {}
    if args.layout == "vocaset":
        if not args.faces_mesh or not args.lips_mask:
            raise ds.DatasetError("vocaset needs --faces-mesh (FLAME mesh) and --lips-mask "
                                  "(FLAME_lips_idx.mat)")
        kwargs = {"faces_mesh": args.faces_mesh, "lips_mask": args.lips_mask,
                  "upper_mask": args.upper_mask}
    elif args.layout in ("biwi", "multiface"):
        kwargs = {"lips_mask": args.lips_mask, "upper_mask": args.upper_mask}
    split = args.split.split(",") if "," in args.split else args.split
    return ds.read_dataset(args.layout, args.data, split, **kwargs)


def _plot_errors(rows, path: Path):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = [r["name"] for r in rows]
    panels = [("mve", "MVE (mm)", 1e3), ("lve", "LVE (mm²)", 1e6), ("fdd", "FDD (mm²)", 1e6),
              ("dtw", "DTW mouth opening (mm)", 1e3)]
    fig, axes = plt.subplots(len(panels), 1, figsize=(max(6.0, 0.35 * len(rows) + 2), 2.2 * len(panels)),
                             sharex=True, squeeze=False)
    x = np.arange(len(rows))
    for ax, (key, label, scale) in zip(axes[:, 0], panels):
        vals = np.array([r[key] for r in rows], dtype=np.float64) * scale
        ax.bar(x, np.nan_to_num(vals), color="tab:red" if key == "fdd" else "tab:blue")
        ax.set_ylabel(label, fontsize=8)
        ax.grid(axis="y", alpha=0.3)
    axes[-1, 0].set_xticks(x)
    axes[-1, 0].set_xticklabels(names, rotation=90, fontsize=7)
    fig.suptitle("Per-sequence errors")
    fig.tight_layout()
    fig.savefig(path, dpi=80)
    plt.close(fig)


def _plot_mouth(name, mouth_gt, mouth_pred, fps, wav_path, path: Path):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (ax1, ax2) = plt.subplots(2, 1, figsize=(8, 4.5), sharex=True,
                                   gridspec_kw={"height_ratios": [2, 1]})
    t = np.arange(len(mouth_gt)) / fps
    ax1.plot(t, mouth_gt * 1e3, label="ground truth", color="black")
    ax1.plot(t, mouth_pred * 1e3, label="prediction", color="tab:orange")
    ax1.set_ylabel("mouth opening (mm)")
    ax1.legend(fontsize=8)
    ax1.set_title(name)
    try:
        import soundfile as sf

        wav, sr = sf.read(str(wav_path), dtype="float32", always_2d=True)
        wav = wav.mean(axis=1)
        step = max(1, len(wav) // 4000)
        ax2.plot(np.arange(0, len(wav), step) / sr, wav[::step], color="tab:gray", lw=0.5)
    except Exception as exc:  # the plot is still useful without audio
        ax2.text(0.5, 0.5, f"audio unavailable: {exc}", ha="center", va="center",
                 transform=ax2.transAxes, fontsize=8)
    ax2.set_ylabel("audio")
    ax2.set_xlabel("time (s)")
    fig.tight_layout()
    fig.savefig(path, dpi=80)
    plt.close(fig)


def _safe_name(name: str) -> str:
    return "".join(ch if ch.isalnum() or ch in "-_." else "_" for ch in name)


def run_evaluation(pred_dir, listing, out_dir, n_mouth_plots: int = 4, plots: bool = True) -> dict:
    """Evaluate predictions ``pred_dir/<clip name>.npy`` against a DatasetListing; write
    per_sequence.csv, summary.json and PNG plots under out_dir. Returns the summary."""
    from training.datasets import load_motion

    pred_dir, out_dir = Path(pred_dir), Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    rows, missing = [], []
    for clip in listing:
        ppath = pred_dir / f"{clip.name}.npy"
        if not ppath.is_file():
            missing.append(clip.name)
            continue
        pred = np.load(ppath, allow_pickle=False)
        if pred.ndim == 2 and pred.shape[1] % 3 == 0:
            pred = pred.reshape(pred.shape[0], -1, 3)
        gt = load_motion(clip)
        subj = listing.subject_of(clip)
        try:
            row = evaluate_sequence(gt, pred, subj.template_vertices, subj.lips, subj.upper)
        except ValueError as exc:
            raise ValueError(f"{clip.name}: {exc}") from exc
        row.update(name=clip.name, subject=clip.subject, fps=clip.fps, wav_path=str(clip.wav_path))
        rows.append(row)
    if not rows:
        raise FileNotFoundError(
            f"no predictions found in {pred_dir} for the {len(listing)} clips of the split "
            f"(expected files like {pred_dir / (listing[0].name + '.npy')})")
    with open(out_dir / "per_sequence.csv", "w", newline="", encoding="utf-8") as fh:
        w = csv.writer(fh)
        w.writerow(["name", "subject", "n_frames", *METRIC_KEYS])
        for r in rows:
            w.writerow([r["name"], r["subject"], r["n_frames"],
                        *("" if r[k] is None or not np.isfinite(r[k]) else f"{r[k]:.9g}"
                          for k in METRIC_KEYS)])
    summary = summarise(rows)
    summary.update(layout=listing.layout, split=listing.split, fps=listing.fps,
                   units={"mve": "m", "lve": "m^2", "fdd": "m^2", "fdd_abs": "m^2",
                          "dtw": "m (mouth opening)", "frechet": "m (mouth opening)"},
                   missing_predictions=missing)
    (out_dir / "summary.json").write_text(json.dumps(summary, indent=2), encoding="utf-8")
    if plots:
        _plot_errors(rows, out_dir / "per_sequence_errors.png")
        shown = [r for r in rows if r["mouth_gt"] is not None][:n_mouth_plots]
        for r in shown:
            _plot_mouth(r["name"], r["mouth_gt"], r["mouth_pred"], r["fps"], r["wav_path"],
                        out_dir / f"mouth_{_safe_name(r['name'])}.png")
    return summary


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="python -m training.metrics", description=__doc__.split("\n\n")[0])
    p.add_argument("--pred", required=True, help="folder of predictions <clip name>.npy [T,V,3]")
    p.add_argument("--data", required=True, help="dataset root")
    p.add_argument("--layout", required=True, choices=["general", "vocaset", "biwi", "multiface"])
    p.add_argument("--split", default="test", help="train, val, test, all, or subjects a,b,c")
    p.add_argument("--out", required=True, help="output folder")
    p.add_argument("--faces-mesh", help="vocaset: FLAME mesh for the faces")
    p.add_argument("--lips-mask", help="lip indices (.mat 1-based lips_idx, or 0-based .npy/.txt)")
    p.add_argument("--upper-mask", help="upper-face indices (0-based .npy/.txt)")
    p.add_argument("--mouth-plots", type=int, default=4, help="how many mouth-opening plots")
    p.add_argument("--no-plots", action="store_true")
    args = p.parse_args(argv)
    try:
        listing = _load_listing(args)
        summary = run_evaluation(args.pred, listing, args.out, args.mouth_plots, not args.no_plots)
    except (ValueError, FileNotFoundError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    print(json.dumps({k: summary[k] for k in ("n_sequences", *METRIC_KEYS, "fdd_abs")}, indent=2))
    if summary["missing_predictions"]:
        print(f"warning: {len(summary['missing_predictions'])} clips had no prediction",
              file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
