"""Articulation report: do the lips close on /p b m/, open on open vowels, rest in silence?

    # a model on real recordings (phones from pocketsphinx forced alignment of the transcript)
    python -m training.articulation --mesh FLAME_sample.ply --lips FLAME_lips_idx.mat \\
        --upper upper_mask.npy --speech-dir ../shared/data/speech --out REPORT [--checkpoint C]
    # the same for a head the model card reports (HEADS: flame, demo, biwi)
    python -m training.articulation --head flame --speech-dir ../shared/data/speech --out REPORT
    # any audio, with or without a transcript (without: pocketsphinx recognises one first)
    python -m training.articulation --mesh M --lips L --audio a.wav [--text "..."] --out REPORT
    # the synthetic generator's targets (its own phone timings), or predictions of them
    python -m training.articulation --data SYNTH --split test [--pred PRED_DIR] --out REPORT

Measures, per clip and pooled over clips (REPORT/articulation.json, one PNG per clip):
- inner-lip gap g(t) (training.lip_geometry), neutral gap g0, opening o(t) = g(t) - g0;
- bilabial closure rate: a P, B or M phone is closed when the smallest gap within the phone
  ±30 ms is at most g0 + 20% of the clip's speech-time opening range (5th to 95th percentile of g
  over speech frames); each clip also lists its bilabials (`bilabial_events`: phone, times,
  the phone before it (SIL after silence), smallest gap and mean opening above g0, closed or not);
- mean opening on open vowels (AA AE AH AO AW AY) and on bilabials (per phone, the mean over its
  frames), and their ratio (the bilabial mean floored at 0.1 mm so a perfect closer stays finite);
- lip motion in silence: mean displacement of the lip vertices from the neutral in silent frames
  more than 100 ms away from any speech phone;
- upper-face motion: mean displacement of the upper-face vertices during speech;
- far-field motion: the same for the vertices farther from the lips' centre than a quarter of the
  mesh's bounding-box diagonal (back of the head, neck, shoulders: speech should not move them);
- lag: the frame shift that maximises the cross-correlation of the mouth opening with the speech
  envelope (RMS per frame), within ±10 frames; positive = the mouth moves after the sound.

Units: millimetres in the report; vertices in metres (the model frame) as input.
"""
from __future__ import annotations

import argparse
import json
import math
import re
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import NamedTuple

import numpy as np

from training.lip_geometry import InnerLip, inner_lip, lip_gap

BILABIALS = ("P", "B", "M")
OPEN_VOWELS = ("AA", "AE", "AH", "AO", "AW", "AY")
SILENCE = ("SIL", "SP", "PAU", "SPN", "H#", "")
CLOSURE_WINDOW = 0.030   # s either side of a bilabial phone
CLOSURE_FRACTION = 0.2   # of the speech-time opening range, above the neutral gap
SILENCE_MARGIN = 0.100   # s away from any speech phone for a frame to count as silence
MAX_LAG = 10             # frames
GAP_FLOOR = 1e-4         # m: the bilabial mean used in the ratio is at least 0.1 mm
FAR_FIELD_FRACTION = 0.25  # of the bounding-box diagonal from the lips: "far from the mouth"


class Bilabial(NamedTuple):
    """One P, B or M phone as measured: gaps in metres, times in seconds."""
    phone: str
    start: float
    end: float
    min_gap: float   # smallest inner-lip gap within the phone +-CLOSURE_WINDOW
    closed: bool     # min_gap at or below the clip's closure threshold
    opening: float   # mean opening above the neutral gap over the phone
    after: str       # the phone before it (SIL after silence or at the start)


@dataclass(frozen=True)
class Head:
    """A neutral head the model card reports, with its lip and upper-face masks."""
    mesh: Path
    lips: Path
    upper: Path
    fit_size: float | None = None  # m: bbox diagonal to scale to, for a scan in no usual unit


_SHARED = Path(__file__).resolve().parents[2] / "shared" / "data"  # ../shared: not redistributable
_ASSETS = Path(__file__).resolve().parents[1] / "backend" / "assets"
HEADS = {
    "flame": Head(_SHARED / "meshes/FLAME_sample.ply", _SHARED / "masks/vocaset/FLAME_lips_idx.mat",
                  _SHARED / "masks/vocaset/upper_mask.npy"),
    "demo": Head(_ASSETS / "demo_head.obj", _ASSETS / "demo_head_lips.txt", _ASSETS / "demo_head_upper.txt"),
    # BIWI's scans come in a unit of their own and hold the face alone: at 0.233 m its mouth is
    # FLAME_sample's width (51 mm) and the face 145 mm wide, a human's. Scaled to a whole head's
    # diagonal (0.348 m, used until version 4) both were 1.5x human size, and the lips hardly moved.
    "biwi": Head(_SHARED / "meshes/BIWI.ply", _SHARED / "masks/biwi/lve_region.txt",
                 _SHARED / "masks/biwi/fdd_region.txt", fit_size=0.233),
}


def normalise_phone(p: str) -> str:
    """'p', 'P1', 'sil' -> 'P', 'P', 'SIL' (CMU/ARPAbet upper case, no stress digits)."""
    return str(p).strip().upper().rstrip("012")


@dataclass
class ClipReport:
    name: str
    fps: float
    gap: np.ndarray                 # [T] m
    neutral_gap: float              # m
    threshold: float                # m: closed when the gap is at or below this
    phones: list                    # [(phone, start_s, end_s)]
    bilabials: list = field(default_factory=list)   # [Bilabial]
    vowel_openings: list = field(default_factory=list)     # m, one per open vowel
    silence_lip_motion: list = field(default_factory=list)  # m, per silent frame
    speech_upper_motion: list = field(default_factory=list)  # m, per speech frame
    speech_far_motion: list = field(default_factory=list)  # m, per speech frame
    lag_frames: int | None = None
    lag_corr: float | None = None

    def summary(self) -> dict:
        return summarise([self]) | {"name": self.name, "lag_frames": self.lag_frames,
                                     "lag_corr": _r(self.lag_corr, 3), "bilabial_events": self.bilabial_events()}

    def bilabial_events(self) -> list[dict]:
        """Each bilabial with its timing, its smallest gap (phone ±30 ms) and mean opening over
        the phone, both above the neutral gap: which closures a model misses (after silence,
        /m/ or /p/), not only how many."""
        return [{"phone": b.phone, "start_s": _r(b.start), "end_s": _r(b.end), "after": b.after,
                 "min_gap_mm": _r((b.min_gap - self.neutral_gap) * 1e3), "opening_mm": _r(b.opening * 1e3),
                 "closed": b.closed}
                for b in self.bilabials]


def _r(x, nd=3):
    return None if x is None or not np.isfinite(x) else round(float(x), nd)


def _frames_in(t0: float, t1: float, fps: float, n: int) -> np.ndarray:
    """Frame indices whose time i/fps lies in [t0, t1); the nearest frame if none does."""
    i0, i1 = max(0, math.ceil(t0 * fps - 1e-9)), min(n - 1, math.ceil(t1 * fps - 1e-9) - 1)
    if i1 < i0:
        return np.array([min(n - 1, max(0, round(0.5 * (t0 + t1) * fps)))])
    return np.arange(i0, i1 + 1)


def speech_mask(phones, fps: float, n: int, margin: float = 0.0) -> np.ndarray:
    """Frames within `margin` seconds of a non-silence phone."""
    m = np.zeros(n, bool)
    for p, a, b in phones:
        if normalise_phone(p) not in SILENCE:
            m[_frames_in(a - margin, b + margin, fps, n)] = True
    return m


def envelope(samples: np.ndarray, sr: int, fps: float, n: int) -> np.ndarray:
    """RMS of the audio in a window of one frame centred on each frame time [n]."""
    samples = np.asarray(samples, np.float64)
    half = int(round(sr / fps / 2))
    energy = np.concatenate([[0.0], np.cumsum(samples ** 2)])  # window sums in O(1) each
    c = np.round(np.arange(n) * sr / fps).astype(np.int64)
    lo, hi = np.clip(c - half, 0, len(samples)), np.clip(c + half, 0, len(samples))
    count = hi - lo
    return np.sqrt(np.divide(energy[hi] - energy[lo], count, out=np.zeros(n), where=count > 0).clip(0))


def opening_lag(opening: np.ndarray, env: np.ndarray, max_lag: int = MAX_LAG) -> tuple[int | None, float | None]:
    """(lag, correlation) maximising corr(opening[t + lag], env[t]); positive = mouth after sound."""
    n = min(len(opening), len(env))
    a, b = np.asarray(opening[:n], float), np.asarray(env[:n], float)
    if n < 2 * max_lag + 4 or a.std() == 0 or b.std() == 0:
        return None, None
    best = (None, -np.inf)
    for lag in range(-max_lag, max_lag + 1):
        x = a[max(0, lag):n + min(0, lag)]
        y = b[max(0, -lag):n - max(0, lag)]
        if x.std() > 0 and y.std() > 0:
            c = float(np.corrcoef(x, y)[0, 1])
            if c > best[1]:
                best = (lag, c)
    return best


def far_field(neutral: np.ndarray, lips) -> np.ndarray:
    """Vertices farther from the lip vertices' centroid than FAR_FIELD_FRACTION of the diagonal."""
    lo, hi = neutral.min(0), neutral.max(0)
    dist = np.linalg.norm(neutral - neutral[np.asarray(lips)].mean(0), axis=1)
    return np.flatnonzero(dist > FAR_FIELD_FRACTION * float(np.linalg.norm(hi - lo)))


def measure_clip(name: str, seq, neutral, lip: InnerLip, phones, fps: float, lips=None, upper=None,
                 samples=None, sr: int = 16000) -> ClipReport:
    """Measures of one clip. seq [T, V, 3] and neutral [V, 3] in metres, y up; phones
    [(phone, start_s, end_s)] (any case, stress digits allowed; silence as SIL/sil)."""
    seq = np.asarray(seq, np.float64)
    neutral = np.asarray(neutral, np.float64)
    n = len(seq)
    phones = [(normalise_phone(p), float(a), float(b)) for p, a, b in phones]
    gap = lip_gap(seq, lip)
    g0 = float(lip_gap(neutral, lip))
    speech = speech_mask(phones, fps, n)
    ref = gap[speech] if speech.any() else gap
    rng = float(np.percentile(ref, 95) - np.percentile(ref, 5))
    rep = ClipReport(name, fps, gap, g0, g0 + CLOSURE_FRACTION * rng, phones)
    for i, (p, a, b) in enumerate(phones):
        if p in BILABIALS:
            low = float(gap[_frames_in(a - CLOSURE_WINDOW, b + CLOSURE_WINDOW, fps, n)].min())
            # a closure from rest (after silence) and one inside running speech are different tasks
            after = "SIL" if i == 0 or phones[i - 1][0] in SILENCE else phones[i - 1][0]
            rep.bilabials.append(Bilabial(p, a, b, low, bool(low <= rep.threshold),
                                          float(gap[_frames_in(a, b, fps, n)].mean() - g0), after))
        elif p in OPEN_VOWELS:
            rep.vowel_openings.append(float(gap[_frames_in(a, b, fps, n)].mean() - g0))
    if lips is not None:
        quiet = ~speech_mask(phones, fps, n, SILENCE_MARGIN)
        if quiet.any():
            d = np.linalg.norm(seq[quiet][:, lips] - neutral[lips], axis=-1).mean(axis=1)
            rep.silence_lip_motion = d.tolist()
    if upper is not None and len(upper) and speech.any():
        d = np.linalg.norm(seq[speech][:, upper] - neutral[upper], axis=-1).mean(axis=1)
        rep.speech_upper_motion = d.tolist()
    if lips is not None and len(lips) and speech.any():
        far = far_field(neutral, lips)
        if len(far):
            d = np.linalg.norm(seq[speech][:, far] - neutral[far], axis=-1).mean(axis=1)
            rep.speech_far_motion = d.tolist()
    if samples is not None:
        rep.lag_frames, rep.lag_corr = opening_lag(gap - g0, envelope(samples, sr, fps, n))
    return rep


def summarise(reports) -> dict:
    """Pooled measures of several clips (phones and frames pooled, lags by median)."""
    bil = [b for r in reports for b in r.bilabials]
    vow = [v for r in reports for v in r.vowel_openings]
    bo = [b.opening for b in bil]
    sil = [v for r in reports for v in r.silence_lip_motion]
    upp = [v for r in reports for v in r.speech_upper_motion]
    far = [v for r in reports for v in r.speech_far_motion]
    lags = [r.lag_frames for r in reports if r.lag_frames is not None]
    closed = sum(1 for b in bil if b.closed)
    mv = float(np.mean(vow)) if vow else None
    mb = float(np.mean(bo)) if bo else None
    mm = 1e3
    return {
        "bilabials": len(bil), "bilabials_closed": closed,
        "closure_rate": _r(closed / len(bil)) if bil else None,
        "open_vowels": len(vow),
        "open_vowel_opening_mm": _r(mv * mm) if mv is not None else None,
        "bilabial_opening_mm": _r(mb * mm) if mb is not None else None,
        "open_to_bilabial_ratio": _r(mv / max(mb, GAP_FLOOR), 2) if mv is not None and mb is not None else None,
        "silence_lip_motion_mm": _r(np.mean(sil) * mm) if sil else None,
        "speech_upper_face_motion_mm": _r(np.mean(upp) * mm) if upp else None,
        "speech_far_field_motion_mm": _r(np.mean(far) * mm) if far else None,
        "lag_frames_median": _r(float(np.median(lags)), 1) if lags else None,
        "lag_frames": lags,
    }


# --------------------------------------------------------------------------- phone timings

def align(samples: np.ndarray, sr: int, text: str | None = None) -> tuple[list, str]:
    """(phones [(PHONE, start_s, end_s)], transcript) by pocketsphinx forced alignment (US English
    acoustic model and CMU dictionary from its wheel). Without `text`, the transcript is first
    recognised with pocketsphinx's word language model. samples: mono float in [-1, 1]."""
    try:
        from pocketsphinx import Decoder
    except ImportError as exc:
        raise RuntimeError("phone alignment needs pocketsphinx: pip install 'pocketsphinx>=5'") from exc
    if sr != 16000:
        from scipy.signal import resample_poly

        g = math.gcd(int(sr), 16000)
        samples, sr = resample_poly(samples, 16000 // g, int(sr) // g), 16000
    pcm = (np.clip(samples, -1, 1) * 32767).astype(np.int16).tobytes()
    if not text:
        d = Decoder(samprate=sr, loglevel="FATAL")
        d.start_utt()
        d.process_raw(pcm, full_utt=True)
        d.end_utt()
        hyp = d.hyp()
        text = hyp.hypstr if hyp is not None else ""
        if not text.strip():
            return [("SIL", 0.0, len(samples) / sr)], ""
    words = " ".join(w for w in text.lower().replace("<s>", " ").replace("</s>", " ").split())
    d = Decoder(samprate=sr, loglevel="FATAL")
    try:
        d.set_align_text(words)
    except Exception as exc:
        raise RuntimeError(f"pocketsphinx cannot align {words!r}: {exc} (a word missing from its "
                           "dictionary?)") from exc
    try:
        for _ in range(2):  # the first pass finds the words, the second their phones and states
            d.start_utt()
            d.process_raw(pcm, full_utt=True)
            d.end_utt()
            if _ == 0:
                d.set_alignment()
    except RuntimeError as exc:
        raise RuntimeError(f"pocketsphinx could not align {words!r} to the audio ({exc}): is the "
                           "transcript the one spoken, and the clip long enough?") from exc
    phones = []
    for w in d.get_alignment():
        for p in w:
            phones.append((normalise_phone(p.name), p.start / 100.0, (p.start + p.duration) / 100.0))
    return phones, words


def aligned_audios(audios, skipped: dict):
    """(name, samples, phones, transcript) of each (name, wav_path, transcript or None) that
    pocketsphinx aligns; each one it cannot goes into `skipped` with the reason (and to stderr):
    a clip the aligner cannot place costs that clip, not the report."""
    from backend.audio_io import load_audio

    for name, wav, text in audios:
        samples = load_audio(wav)
        try:
            phones, words = align(samples, 16000, text)
        except RuntimeError as exc:
            print(f"{name}: skipped, {exc}", file=sys.stderr)
            skipped[name] = str(exc)
            continue
        yield name, samples, phones, words


def speech_dir_audios(folder) -> list[tuple[str, Path, str | None]]:
    """(name, wav path, transcript or None) of every .wav in `folder`, transcripts from its CMU
    `transcription` file when there is one (../shared/data/speech's layout)."""
    folder = Path(folder)
    texts = read_transcriptions(folder / "transcription") if (folder / "transcription").is_file() else {}
    return [(w.stem, w, texts.get(w.stem)) for w in sorted(folder.glob("*.wav"))]


def dictionary_words(text: str) -> str:
    """Text as pocketsphinx's dictionary spells it: lower case, letters and inner apostrophes only."""
    words = re.sub(r"[^a-z' ]+", " ", text.lower()).split()
    return " ".join(w.strip("'") for w in words if w.strip("'"))


def write_transcriptions(path, texts: dict[str, str]) -> None:
    """The inverse of read_transcriptions: one `<s> words </s> (name)` line per clip."""
    Path(path).write_text("".join(f"<s> {t} </s> ({n})\n" for n, t in texts.items()), encoding="utf-8")


def read_transcriptions(path) -> dict[str, str]:
    """CMU Sphinx test-data format: `<s> words </s> (utterance_id)` per line."""
    out = {}
    for line in Path(path).read_text(encoding="utf-8").splitlines():
        line = line.strip()
        if not line or "(" not in line:
            continue
        text, _, uid = line.rpartition("(")
        out[uid.rstrip(")").strip()] = text.replace("<s>", "").replace("</s>", "").strip()
    return out


# --------------------------------------------------------------------------- plots

def plot_clip(rep: ClipReport, path, samples=None, sr: int = 16000) -> Path:
    """Mouth opening over time with the phones and the closure threshold, waveform below."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    t = np.arange(len(rep.gap)) / rep.fps
    fig, (ax, aw) = plt.subplots(2, 1, figsize=(max(8, 2.2 * t[-1] + 2), 4.6), sharex=True,
                                 gridspec_kw={"height_ratios": [3, 1]})
    ax.plot(t, (rep.gap - rep.neutral_gap) * 1e3, color="k", lw=1.3, label="opening")
    ax.axhline((rep.threshold - rep.neutral_gap) * 1e3, color="tab:red", ls="--", lw=0.8, label="closed below")
    ax.axhline(0, color="0.6", lw=0.6)
    top = ax.get_ylim()[1]
    for p, a, b in rep.phones:
        if p in SILENCE:
            continue
        color = "tab:red" if p in BILABIALS else ("tab:blue" if p in OPEN_VOWELS else "0.5")
        if p in BILABIALS or p in OPEN_VOWELS:
            ax.axvspan(a, b, color=color, alpha=0.12, lw=0)
        ax.text(0.5 * (a + b), top, p, ha="center", va="bottom", fontsize=6, color=color, rotation=90)
    for bl in rep.bilabials:
        ax.plot([0.5 * (bl.start + bl.end)], [(bl.min_gap - rep.neutral_gap) * 1e3], "v" if bl.closed else "x",
                color="tab:green" if bl.closed else "tab:red", ms=6)
    ax.set_ylabel("inner-lip opening (mm)")
    s = rep.summary()
    ax.set_title(f"{rep.name}: bilabials closed {s['bilabials_closed']}/{s['bilabials']}, "
                 f"open vowels {s['open_vowel_opening_mm']} mm vs bilabials {s['bilabial_opening_mm']} mm, "
                 f"lag {rep.lag_frames} frames", fontsize=8, pad=18)
    ax.legend(fontsize=7, loc="upper right")
    if samples is not None:
        ts = np.arange(len(samples)) / sr
        aw.plot(ts, samples, color="0.3", lw=0.4)
    aw.set_xlabel("time (s)")
    aw.set_yticks([])
    fig.tight_layout()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


# --------------------------------------------------------------------------- inputs

def load_indices(path) -> np.ndarray:
    """0-based vertex indices from .txt (comma/space separated, 0-based), .npy or .mat (FLAME's
    FLAME_lips_idx.mat is 1-based)."""
    from training.datasets import load_index_file

    path = Path(path)
    if path.suffix == ".mat":
        return load_index_file(path, one_based=True)
    return load_index_file(path)


def mesh_in_metres(mesh_path, fit_size: float | None, reference_size: float, size_factor: float = 1.0):
    """(verts in metres, faces, scale) of a mesh: units snapped as the backend snaps them (against
    the model's training head size), or scaled so the bounding-box diagonal is `fit_size` metres
    (for scans in an unusual unit, like BIWI); then `size_factor` times larger, to ask how a head
    off life size moves. Lip gaps are reported in mm, so metres matter."""
    from backend.framing import UNIT_SCALES, bbox, guess_units
    from backend.mesh_io import load_mesh

    verts, faces = load_mesh(mesh_path)
    _, diag = bbox(verts)
    scale = (fit_size / diag if fit_size else UNIT_SCALES[guess_units(diag, reference_size)]) * size_factor
    return verts * scale, faces, scale


class TalkingHead:
    """A head in metres (mesh_in_metres, against the model's training size) with its inner lip,
    and a warm model to animate it: what report_model and tools/same_text_voices share."""

    def __init__(self, mesh, lips, fit_size=None, checkpoint=None, device="cpu", size_factor=1.0,
                 session=None):
        import torch

        from backend.inference import Session, resolve_checkpoint

        self.checkpoint, self.device, self.session = checkpoint, device, session or Session()
        model, _ = self.session.model(resolve_checkpoint(checkpoint), torch.device(device))
        self.verts, self.faces, _ = mesh_in_metres(mesh, fit_size, model.cfg.frame_size, size_factor)
        self.lip = inner_lip(self.verts, self.faces, lips)

    def speak(self, samples: np.ndarray) -> tuple[np.ndarray, float]:
        """(vertex positions [T, V, 3] in metres, fps) of the head speaking 16 kHz `samples`."""
        from backend.inference import animate

        # verts are in metres already: a snap here would undo a large size_factor (FLAME at 3x
        # is nearer the training heads in dm) and report another size than the one asked for
        res = animate((self.verts, self.faces), samples, checkpoint=self.checkpoint, device=self.device,
                      session=self.session, units="m")
        return self.verts[None] + res.offsets.astype(np.float64), res.fps


def report_model(mesh, lips, audios, out_dir, upper=None, checkpoint=None, fit_size=None,
                 device="cpu", plots=True, size_factor=1.0) -> dict:
    """Animate `mesh` with each (name, wav_path, transcript or None) and report."""
    head = TalkingHead(mesh, lips, fit_size, checkpoint, device, size_factor)
    reports, clips, skipped = [], {}, {}
    for name, samples, phones, words in aligned_audios(audios, skipped):
        seq, fps = head.speak(samples)
        rep = measure_clip(name, seq, head.verts, head.lip, phones, fps, lips=lips, upper=upper,
                           samples=samples)
        reports.append(rep)
        clips[name] = rep.summary() | {"transcript": words}
        if plots:
            plot_clip(rep, Path(out_dir) / f"{name}.png", samples)
    if not reports:
        raise ValueError(f"pocketsphinx aligned none of the {len(skipped)} recordings: {skipped}")
    return {"mesh": str(mesh), "inner_lip": head.lip.method, "checkpoint": str(checkpoint or "default"),
            "size_factor": size_factor, "pooled": summarise(reports), "clips": clips, "skipped": skipped}


def report_dataset(root, split="test", pred_dir=None, out_dir=None, plots=True, max_plots=6,
                   languages: bool = True) -> dict:
    """The generator's own targets (or predictions in `pred_dir`, <clip>.npy absolute vertices)
    measured with the generator's phone timings from clips.json."""
    import soundfile as sf

    from training.datasets import load_motion, read_clips, read_dataset

    root = Path(root)
    listing = read_dataset("general", root, split)
    meta = read_clips(root / "clips.json")
    reports, clips, by_lang = [], {}, {}
    lips_cache = {}
    for i, clip in enumerate(listing):
        subj = listing.subject_of(clip)
        if subj.lips is None:
            continue
        if subj.name not in lips_cache:
            lips_cache[subj.name] = inner_lip(subj.template_vertices, subj.faces, subj.lips)
        if pred_dir and not (Path(pred_dir) / f"{clip.name}.npy").is_file():
            continue  # predictions of a subset (training.predict --every)
        seq = np.load(Path(pred_dir) / f"{clip.name}.npy") if pred_dir else load_motion(clip)
        info = meta.get(clip.name, {})
        samples, sr = sf.read(str(clip.wav_path), dtype="float32")
        rep = measure_clip(clip.name, seq, subj.template_vertices, lips_cache[subj.name],
                           info.get("phonemes", []), clip.fps, lips=subj.lips, upper=subj.upper,
                           samples=samples, sr=sr)
        reports.append(rep)
        clips[clip.name] = rep.summary()
        by_lang.setdefault(info.get("language", "en"), []).append(rep)
        if plots and out_dir and i < max_plots:
            plot_clip(rep, Path(out_dir) / f"{clip.name}.png", samples, sr)
    out = {"data": str(root), "split": split, "pred": str(pred_dir) if pred_dir else "targets",
           "pooled": summarise(reports), "clips": clips}
    if languages and len(by_lang) > 1:
        out["languages"] = {k: summarise(v) for k, v in sorted(by_lang.items())}
    return out


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="python -m training.articulation", description=__doc__.split("\n")[0])
    p.add_argument("--out", required=True, help="folder for articulation.json and the PNGs")
    p.add_argument("--head", choices=sorted(HEADS), help="a head the model card reports, with its masks "
                   "(instead of --mesh, --lips, --upper and --fit-size)")
    p.add_argument("--mesh", help="neutral head (y up, facing +z)")
    p.add_argument("--lips", help="lip mask: vertex indices (.txt/.npy 0-based, .mat 1-based)")
    p.add_argument("--upper", help="upper-face mask (for upper-face motion)")
    p.add_argument("--audio", action="append", default=[], help="a recording (repeatable)")
    p.add_argument("--text", action="append", default=[], help="its transcript (same order; optional)")
    p.add_argument("--speech-dir", help="folder of .wav files with a CMU `transcription` file")
    p.add_argument("--checkpoint", help="model (default: the bundled one)")
    p.add_argument("--fit-size", type=float, help="scale the head so its bbox diagonal is this many m")
    p.add_argument("--size-factor", type=float, default=1.0,
                   help="the head this many times its size in metres (with --head too): how a head "
                   "off life size moves (the model reads metres; a sculpt may be 1.5x life)")
    p.add_argument("--device", default="cpu")
    p.add_argument("--data", help="synthetic dataset root (general layout with clips.json)")
    p.add_argument("--split", default="test")
    p.add_argument("--pred", help="predictions of --data (<clip>.npy) instead of its targets")
    p.add_argument("--no-plots", action="store_true")
    a = p.parse_args(argv)
    if not a.size_factor > 0:
        p.error(f"--size-factor must be above 0 (1 = the head's own size), not {a.size_factor}")
    out = Path(a.out)
    try:
        if a.data:
            res = report_dataset(a.data, a.split, a.pred, out, plots=not a.no_plots)
        else:
            if a.head:
                if a.mesh or a.lips or a.upper or a.fit_size:
                    p.error("--head names the mesh and its masks: leave out --mesh, --lips, --upper, --fit-size")
                h = HEADS[a.head]
                a.mesh, a.lips, a.upper, a.fit_size = str(h.mesh), str(h.lips), str(h.upper), h.fit_size
            if not (a.mesh and a.lips):
                p.error("--mesh and --lips are needed (or --head, or --data for a synthetic dataset)")
            audios = []
            if a.speech_dir:
                audios += speech_dir_audios(a.speech_dir)
            texts = a.text + [None] * (len(a.audio) - len(a.text))
            audios += [(Path(w).stem, Path(w), t) for w, t in zip(a.audio, texts)]
            if not audios:
                p.error("give --audio or --speech-dir")
            lips = load_indices(a.lips)
            upper = load_indices(a.upper) if a.upper else None
            res = report_model(a.mesh, lips, audios, out, upper=upper, checkpoint=a.checkpoint,
                               fit_size=a.fit_size, device=a.device, plots=not a.no_plots,
                               size_factor=a.size_factor)
    except (ValueError, RuntimeError, OSError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    out.mkdir(parents=True, exist_ok=True)
    (out / "articulation.json").write_text(json.dumps(res, indent=1), encoding="utf-8")
    print(json.dumps(res["pooled"], indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
