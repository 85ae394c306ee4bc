"""Inner-lip geometry and the articulation report (training.lip_geometry, training.articulation).

Hand-made meshes and sequences with known answers: a face-like sheet with a mouth slit whose lower
half moves, lips that close on every bilabial (100%) or never (0%), a mouth that follows the sound
k frames late (lag k). Real pieces where ../shared has them: FLAME's mouth, pocketsphinx alignment
of a LibriVox clip, and the CLI on the bundled demo head.
"""
import json
import math
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from tests.conftest import ROOT, shared_path
from training import articulation as art
from training.lip_geometry import boundary_loops, inner_lip, lip_gap, mouth_width

SHARED = ROOT.parent / "shared" / "data"
FPS = 30.0


def slit_sheet(n=41, half_width=0.025):
    """A 10 cm square sheet (metres, y up, facing +z) with a mouth slit cut out of its middle; the
    lip mask is the band around the slit."""
    xs = np.linspace(-0.05, 0.05, n)
    X, Y = np.meshgrid(xs, xs)
    verts = np.stack([X.ravel(), Y.ravel(), np.zeros(n * n)], 1)
    faces = []
    for i in range(n - 1):
        for j in range(n - 1):
            a, b, c, d = i * n + j, i * n + j + 1, (i + 1) * n + j, (i + 1) * n + j + 1
            cy = 0.5 * (xs[i] + xs[i + 1])
            cx = 0.5 * (xs[j] + xs[j + 1])
            if abs(cx) < half_width and 0 < cy < 0.0013:  # the slit: one row of quads above y = 0
                continue
            faces += [(a, b, d), (a, d, c)]
    faces = np.array(faces)
    lips = np.flatnonzero((np.abs(verts[:, 0]) < 0.035) & (np.abs(verts[:, 1]) < 0.012))
    return verts, faces, lips


def open_by(verts, amount, below=0.0):
    """The sheet with its lower half (y <= below) moved down by `amount` (m), the rest kept."""
    out = verts.copy()
    out[verts[:, 1] <= below, 1] -= amount
    return out


# ----------------------------------------------------------------------------- lip geometry

def test_mouth_hole_is_found_and_gap_follows_the_lower_lip():
    verts, faces, lips = slit_sheet()
    loops = boundary_loops(faces)
    assert len(loops) == 2  # the sheet's rim and the mouth
    lip = inner_lip(verts, faces, lips)
    assert lip.method == "mouth_hole"
    assert (verts[lip.upper, 1] > 0).all() and (verts[lip.lower, 1] <= 0).all()
    g0 = lip_gap(verts, lip)
    assert g0 == pytest.approx(0.0025, abs=1e-6)  # the slit is one grid row (2.5 mm) tall
    seq = np.stack([open_by(verts, a) for a in (0.0, 0.004, -0.002)])
    np.testing.assert_allclose(lip_gap(seq, lip), g0 + np.array([0.0, 0.004, -0.002]), atol=1e-9)
    t = torch.tensor(seq, requires_grad=True)
    gt = lip_gap(t, lip)
    np.testing.assert_allclose(gt.detach().numpy(), lip_gap(seq, lip), atol=1e-12)
    gt.sum().backward()
    assert t.grad[:, :, 1].abs().sum() > 0  # differentiable through the extreme vertices
    assert mouth_width(verts, faces, lips) == pytest.approx(0.05)  # the slit, corner to corner
    assert mouth_width(verts * 2, faces, lips) == pytest.approx(0.1)


def test_without_a_mouth_hole_the_mask_is_split_by_height():
    verts, _, lips = slit_sheet()
    lip = inner_lip(verts, None, lips)
    assert lip.method == "mask_split"
    assert mouth_width(verts, None, lips) is None
    assert lip_gap(open_by(verts, 0.003, below=-0.001), lip) - lip_gap(verts, lip) == pytest.approx(0.003)


def test_bad_lip_masks_are_reported():
    verts, faces, _ = slit_sheet()
    with pytest.raises(ValueError, match="at least 4"):
        inner_lip(verts, faces, [1, 2])
    with pytest.raises(ValueError, match="indexes vertex"):
        inner_lip(verts, faces, [0, 1, 2, len(verts) + 5])


@pytest.mark.skipif(not (SHARED / "meshes" / "FLAME_sample.ply").is_file(), reason="needs ../shared (FLAME)")
def test_flame_mouth_is_found_with_lips_touching():
    from backend.mesh_io import load_mesh
    from training.datasets import load_index_file

    verts, faces = load_mesh(SHARED / "meshes" / "FLAME_sample.ply")
    lips = load_index_file(SHARED / "masks" / "vocaset" / "FLAME_lips_idx.mat", one_based=True)
    lip = inner_lip(verts, faces, lips)
    assert lip.method == "mouth_hole"
    assert -3e-3 < lip_gap(verts, lip) < 1e-3  # FLAME's neutral lips touch
    opened = verts.copy()
    opened[lip.lower] -= [0, 0.01, 0]
    assert lip_gap(opened, lip) - lip_gap(verts, lip) == pytest.approx(0.01, abs=1e-6)


# ----------------------------------------------------------------------------- measures

PHONES = [("SIL", 0.0, 0.5), ("M", 0.5, 0.6), ("AA", 0.6, 0.9), ("P", 0.9, 0.95), ("AE", 0.95, 1.3),
          ("B", 1.3, 1.4), ("AH", 1.4, 1.7), ("S", 1.7, 1.8), ("sil", 1.8, 2.5)]


def opening_track(n, close_on_bilabials: bool, lag_frames: int = 0):
    """Opening (m) per frame: 8 mm on open vowels, 3 mm on other speech; at bilabials 0 (closing)
    or 5 mm (never closing); 0 in silence."""
    o = np.zeros(n)
    for p, a, b in PHONES:
        p = p.upper()
        val = 0.0 if p == "SIL" else 0.008 if p in art.OPEN_VOWELS else 0.003
        if p in art.BILABIALS:
            val = 0.0 if close_on_bilabials else 0.005
        o[math.ceil(a * FPS - 1e-9):math.ceil(b * FPS - 1e-9)] = val  # frames in [a, b)
    return np.roll(o, lag_frames) if lag_frames else o


def sequence(opening, verts):
    return np.stack([open_by(verts, a) for a in opening])


def test_closing_on_every_bilabial_scores_100_percent_and_never_closing_0():
    verts, faces, lips = slit_sheet()
    lip = inner_lip(verts, faces, lips)
    n = int(2.5 * FPS) + 1
    good = art.measure_clip("good", sequence(opening_track(n, True), verts), verts, lip, PHONES, FPS, lips=lips)
    bad = art.measure_clip("bad", sequence(opening_track(n, False), verts), verts, lip, PHONES, FPS, lips=lips)
    sg, sb = good.summary(), bad.summary()
    assert sg["bilabials"] == sb["bilabials"] == 3
    assert sg["closure_rate"] == 1.0 and sb["closure_rate"] == 0.0
    assert sg["open_vowel_opening_mm"] == pytest.approx(8.0, abs=0.01)
    assert sg["bilabial_opening_mm"] == pytest.approx(0.0, abs=0.01)
    assert sg["open_to_bilabial_ratio"] == pytest.approx(80.0, rel=0.01)  # bilabial mean floored at 0.1 mm
    assert sb["bilabial_opening_mm"] == pytest.approx(5.0, abs=0.01)
    assert sb["open_to_bilabial_ratio"] == pytest.approx(1.6, abs=0.01)
    assert sg["silence_lip_motion_mm"] == pytest.approx(0.0, abs=1e-9)  # still in silence
    pooled = art.summarise([good, bad])
    assert (pooled["bilabials"], pooled["bilabials_closed"], pooled["closure_rate"]) == (6, 3, 0.5)
    events = sb["bilabial_events"]  # one per bilabial, in order, as measured
    assert [(e["phone"], e["start_s"], e["end_s"], e["after"], e["closed"]) for e in events] == [
        ("M", 0.5, 0.6, "SIL", False), ("P", 0.9, 0.95, "AA", False), ("B", 1.3, 1.4, "AE", False)]
    assert [e["opening_mm"] for e in events] == pytest.approx([5.0] * 3, abs=0.01)
    assert [e["min_gap_mm"] for e in events] == pytest.approx([5.0] * 3, abs=0.01)  # neighbours open wider
    assert [e["closed"] for e in sg["bilabial_events"]] == [True] * 3
    assert all(abs(e["min_gap_mm"]) < 0.01 for e in sg["bilabial_events"])


@pytest.mark.parametrize("frame, value, closed", [
    (32, 0.0015, True),    # inside the phone [1.01, 1.09) s, below the threshold
    (33, 0.0015, True),    # 10 ms after the phone: within its ±30 ms
    (35, 0.0015, False),   # 77 ms after: too late
    (32, 0.0025, False),   # inside, but above the threshold
])
def test_closure_window_and_threshold(frame, value, closed):
    """'Closed': the smallest gap within the phone ±30 ms is at most the neutral gap plus 20% of
    the speech-time opening range (here 0 to 10 mm, so 2 mm)."""
    verts, faces, lips = slit_sheet()
    lip = inner_lip(verts, faces, lips)
    phones = [("AA", 0.0, 1.01), ("M", 1.01, 1.09), ("AA", 1.09, 2.05)]
    o = np.full(61, 0.01)
    o[5:15] = 0.0
    o[frame] = value
    rep = art.measure_clip("c", sequence(o, verts), verts, lip, phones, FPS)
    assert rep.threshold - rep.neutral_gap == pytest.approx(0.002, abs=1e-9)
    assert rep.bilabials[0].closed is closed, rep.bilabials


def test_upper_face_motion_and_silence_motion():
    verts, faces, lips = slit_sheet()
    lip = inner_lip(verts, faces, lips)
    n = int(2.5 * FPS) + 1
    seq = sequence(opening_track(n, True), verts)
    upper = np.flatnonzero(verts[:, 1] > 0.03)
    seq[:, upper, 2] += 0.0005  # the brow moves 0.5 mm throughout
    seq[:3, lips, 2] += 0.002    # a twitch 2 mm at the start (silence)
    rep = art.measure_clip("u", seq, verts, lip, PHONES, FPS, lips=lips, upper=upper)
    s = rep.summary()
    assert s["speech_upper_face_motion_mm"] == pytest.approx(0.5, abs=1e-6)
    quiet = ~art.speech_mask(rep.phones, FPS, n, art.SILENCE_MARGIN)
    assert s["silence_lip_motion_mm"] == pytest.approx(2.0 * 3 / quiet.sum(), abs=1e-3)  # rounded to µm


def test_far_field_motion_counts_only_vertices_far_from_the_lips():
    verts, faces, lips = slit_sheet()
    lip = inner_lip(verts, faces, lips)
    n = int(2.5 * FPS) + 1
    seq = np.repeat(verts[None], n, axis=0)
    far = art.far_field(verts, lips)
    diag = np.linalg.norm(verts.max(0) - verts.min(0))
    centre = verts[lips].mean(0)
    assert len(far) and (np.linalg.norm(verts[far] - centre, axis=1) > 0.25 * diag).all()
    assert not np.isin(lips, far).any()
    seq[:, far, 2] += 0.0007   # the corners (shoulders) drift 0.7 mm
    seq[:, lips, 2] += 0.003   # the lips move a lot: not far field
    s = art.measure_clip("f", seq, verts, lip, PHONES, FPS, lips=lips).summary()
    assert s["speech_far_field_motion_mm"] == pytest.approx(0.7, abs=1e-6)
    assert art.measure_clip("g", seq, verts, lip, PHONES, FPS).summary()["speech_far_field_motion_mm"] is None


@pytest.mark.parametrize("lag", [-2, 0, 1, 3])
def test_lag_of_mouth_behind_the_sound(lag):
    rng = np.random.default_rng(0)
    n, sr = 150, 16000
    env = np.convolve(rng.random(n), np.ones(4) / 4, mode="same")  # a smooth random loudness
    t = np.arange(int(n / FPS * sr)) / sr
    amp = np.interp(t, np.arange(n) / FPS, env)
    samples = amp * np.sin(2 * np.pi * 180 * t)
    opening = np.roll(art.envelope(samples, sr, FPS, n), lag)
    got, corr = art.opening_lag(opening, art.envelope(samples, sr, FPS, n))
    assert got == lag and corr > 0.9


# ----------------------------------------------------------------------------- real parts

@pytest.mark.skipif(not (SHARED / "speech" / "transcription").is_file(), reason="needs ../shared speech")
def test_pocketsphinx_alignment_of_a_librivox_clip():
    pytest.importorskip("pocketsphinx", reason="pip install pocketsphinx")
    import soundfile as sf

    texts = art.read_transcriptions(SHARED / "speech" / "transcription")
    name = "sense_and_sensibility_01_austen_64kb-0880"
    assert texts[name] == "he was not an ill disposed young man"
    x, sr = sf.read(str(SHARED / "speech" / f"{name}.wav"), dtype="float32")
    phones, words = art.align(x, sr, texts[name])
    names = [p for p, _, _ in phones]
    assert names[-4:-1] == ["M", "AE", "N"] and names.count("P") == 1  # "disposed", "man"
    assert all(b > a for _, a, b in phones) and phones[-1][2] <= len(x) / sr + 0.02
    recognised, text = art.align(x, sr, None)  # no transcript: recognise, then align
    assert "young man" in text and [p for p, _, _ in recognised].count("M") >= 1


def test_cli_on_the_demo_head(tmp_path):
    pytest.importorskip("pocketsphinx", reason="pip install pocketsphinx")
    assets = ROOT / "backend" / "assets"
    out = tmp_path / "report"
    import soundfile as sf

    sf.write(str(tmp_path / "blip.wav"), np.zeros(4800, np.float32), 16000)  # too short for its text
    cmd = [sys.executable, "-m", "training.articulation", "--head", "demo",  # HEADS: mesh and masks
           "--audio", str(assets / "demo_voice.wav"),
           "--text", "unless to be rather cold hearted and rather selfish is to be ill disposed",
           "--audio", str(tmp_path / "blip.wav"), "--text", "had he married a more amiable woman",
           "--out", str(out)]
    r = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stderr[-2000:]
    rep = json.loads((out / "articulation.json").read_text())
    assert list(rep["skipped"]) == ["blip"] and "could not align" in rep["skipped"]["blip"]
    assert list(rep["clips"]) == ["demo_voice"] and "blip: skipped" in r.stderr
    pooled = rep["pooled"]
    assert rep["inner_lip"] == "mouth_hole" and rep["size_factor"] == 1.0
    assert pooled["bilabials"] == 3  # "to Be ... to Be ill disPosed"
    assert 0.0 <= pooled["closure_rate"] <= 1.0 and pooled["open_vowels"] > 3
    assert pooled["open_vowel_opening_mm"] > 0.5  # the model opens the mouth on vowels
    assert (out / "demo_voice.png").stat().st_size > 10_000
    bad = subprocess.run(cmd[:3] + ["--mesh", str(assets / "demo_head.obj"), "--out", str(out)], cwd=ROOT,
                         capture_output=True, text=True, timeout=120)
    assert bad.returncode == 2 and "--lips" in bad.stderr
    both = subprocess.run(cmd[:5] + ["--lips", str(assets / "demo_head_lips.txt"), "--out", str(out)],
                          cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert both.returncode == 2 and "--head names the mesh" in both.stderr
    zero = subprocess.run(cmd[:5] + ["--size-factor", "0", "--out", str(out)], cwd=ROOT,
                          capture_output=True, text=True, timeout=120)
    assert zero.returncode == 2 and "--size-factor must be above 0" in zero.stderr


def test_the_reported_heads_and_their_masks_are_where_the_table_says():
    # the bundled head first: a clone without ../shared checks it, then skips the licensed ones
    for name, head in sorted(art.HEADS.items(), key=lambda kv: kv[0] != "demo"):
        for path in (head.mesh, head.lips, head.upper):
            if SHARED in path.parents:
                shared_path("data", *path.relative_to(SHARED).parts)
            assert path.is_file(), (name, path)
        verts, faces, _ = art.mesh_in_metres(head.mesh, head.fit_size, 0.35)
        diag = float(np.linalg.norm(verts.max(0) - verts.min(0)))
        assert 0.15 < diag < 0.6, (name, diag)  # every one a head in metres
        big, _, _ = art.mesh_in_metres(head.mesh, head.fit_size, 0.35, size_factor=1.5)
        assert np.allclose(big, verts * 1.5)  # the size sweep's head: the same head, larger
        idx = art.load_indices(head.lips)
        assert 0 < len(idx) and idx.max() < len(verts), name
        # human-sized, where it counts: the model reads positions in metres, and a face 1.5x too
        # large (BIWI scaled to a whole head's diagonal) hardly moves its lips
        width = mouth_width(verts, faces, idx)
        assert width is not None and 0.04 < width < 0.06, (name, width)
