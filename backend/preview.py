"""A contact sheet PNG of an animation: shaded front views of chosen frames + motion over time.

Software rendering with matplotlib (painter's algorithm, Lambert shading) so a result can be
looked at on a machine with no GPU, display or Blender.
"""
from __future__ import annotations

import numpy as np


def _shaded_polys(verts, faces):
    tri = verts[faces]
    n = np.cross(tri[:, 1] - tri[:, 0], tri[:, 2] - tri[:, 0])
    n /= np.linalg.norm(n, axis=1, keepdims=True) + 1e-12
    light = np.array([0.3, 0.4, 1.0])
    shade = np.clip(np.abs(n @ (light / np.linalg.norm(light))), 0.05, 1.0)
    order = np.argsort(tri[:, :, 2].mean(axis=1))  # far (small z) first: the camera looks along -z
    return tri[order][:, :, :2], shade[order]


def draw_mesh(ax, verts, faces, title="", heat=None):
    from matplotlib.collections import PolyCollection

    polys, shade = _shaded_polys(verts, faces)
    colors = np.repeat(shade[:, None], 3, axis=1) * np.array([0.93, 0.80, 0.72])
    if heat is not None:  # per-vertex values in 0..1 tint the faces red
        order = np.argsort(verts[faces][:, :, 2].mean(axis=1))
        h = np.clip(heat[faces].mean(axis=1)[order], 0, 1)[:, None]
        colors = colors * (1 - h) + shade[:, None] * np.array([0.9, 0.1, 0.1]) * h
    ax.add_collection(PolyCollection(polys, facecolors=colors, edgecolors="none"))
    lo, hi = verts[:, :2].min(0), verts[:, :2].max(0)
    pad = 0.05 * (hi - lo).max()
    ax.set_xlim(lo[0] - pad, hi[0] + pad)
    ax.set_ylim(lo[1] - pad, hi[1] + pad)
    ax.set_aspect("equal")
    ax.axis("off")
    ax.set_title(title, fontsize=8)


def pick_frames(mag: np.ndarray, n: int) -> np.ndarray:
    """From per-frame, per-vertex motion [T, V]: the stillest frame, then local peaks spread
    over the clip."""
    mag = mag.max(axis=1)
    picks = [int(np.argmin(mag))]
    bounds = np.linspace(0, len(mag), n, dtype=int)
    for a, b in zip(bounds[:-1], bounds[1:]):
        if b > a:
            picks.append(int(a + np.argmax(mag[a:b])))
    return np.array(picks[:n])


def contact_sheet(verts, faces, offsets, fps, path, audio=None, start=0.0, duration=None, n_frames=6, title=None):
    """Write a PNG: neutral + n_frames predicted frames (mouth region tinted by motion), and the
    motion of the most-moving vertices over time above the waveform."""
    try:
        import matplotlib
    except ImportError as exc:
        from .errors import ScanTalkError

        raise ScanTalkError("--preview needs matplotlib: pip install matplotlib "
                            "(the offsets were written without it)") from exc
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    faces = np.asarray(faces)
    # Motion about each vertex's median position: a constant offset is not speech.
    mag = np.linalg.norm(offsets - np.median(offsets, axis=0), axis=2)  # [T, V]
    scale = max(float(np.percentile(mag.max(axis=0), 99.5)), 1e-9)
    frames = pick_frames(mag, n_frames)

    fig = plt.figure(figsize=(2.2 * (n_frames + 1), 5.2), dpi=90)
    grid = fig.add_gridspec(2, n_frames + 1, height_ratios=[3, 1.4])
    draw_mesh(fig.add_subplot(grid[0, 0]), verts, faces, "neutral")
    for i, f in enumerate(frames):
        draw_mesh(fig.add_subplot(grid[0, i + 1]), verts + offsets[f], faces,
                  f"frame {f} ({f / fps:.2f} s)", heat=mag[f] / scale)

    ax = fig.add_subplot(grid[1, :])
    top = np.argsort(mag.max(axis=0))[-max(1, mag.shape[1] // 50):]
    t = np.arange(len(offsets)) / fps
    ax.plot(t, 1000 * mag[:, top].mean(axis=1), color="tab:red", label="motion of the most-moving 2% (mm)")
    ax.set_xlabel("seconds")
    ax.set_xlim(0, t[-1] if len(t) > 1 else 1)
    if audio is not None:
        from .audio_io import load_audio

        wav = load_audio(audio, start=start, duration=duration)
        ax2 = ax.twinx()
        tw = np.arange(len(wav)) / 16000
        ax2.plot(tw, wav, color="0.6", lw=0.4, zorder=0)
        ax2.set_yticks([])
    ax.legend(loc="upper right", fontsize=8)
    for f in frames:
        ax.axvline(f / fps, color="k", lw=0.5, ls=":")
    if title:
        fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
    return path
