"""Synthetic dataset generator (training.synth): layout, shapes, determinism, motion sanity."""
from __future__ import annotations

import json
import math
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

ROOT = Path(__file__).resolve().parents[1]
ICT = ROOT.parent / "shared" / "data" / "ict_facekit" / "ict_facekit_face_head_neck.npz"
VOWELS = {"aa", "ae", "ah", "ao", "aw", "ay", "eh", "er", "ey", "ih", "iy", "ow", "oy", "uh", "uw", "ax"}


def _need_tools():
    if not ICT.is_file():
        pytest.skip(f"{ICT} not present (../shared holds the ICT FaceKit data; only the team's checkout has it)")
    if shutil.which("espeak-ng") is None:
        pytest.skip("espeak-ng not installed (Debian packages espeak-ng libespeak-ng1)")


@pytest.fixture(scope="module")
def dataset(tmp_path_factory):
    _need_tools()
    from training.synth import generate

    out = tmp_path_factory.mktemp("synth") / "ds"
    return generate(out, subjects=2, sentences=2, seed=0, fps=30, workers=1, ict_path=ICT)


def _meta(d):
    return json.loads((d / "meta.json").read_text()), json.loads((d / "clips.json").read_text())["clips"]


def _lip_disp(d, name, subject):
    tpl = np.load(d / "templates" / f"{subject}.npz")["vertices"]
    lips = np.loadtxt(d / "masks" / f"{subject}_lips.txt", dtype=np.int64)
    verts = np.load(d / "vertices" / f"{name}.npy")
    return np.linalg.norm(verts[:, lips] - tpl[lips], axis=-1).mean(axis=1)


def test_layout_and_shapes(dataset):
    import soundfile as sf

    d = Path(dataset)
    meta, clips = _meta(d)
    assert meta["fps"] == 30 and meta["seed"] == 0
    subjects = sorted(meta["subjects"])
    assert subjects == ["synth000", "synth001"]
    assert sorted(sum(meta["splits"].values(), [])) == subjects
    assert len(clips) == 4
    for s in subjects:
        with np.load(d / "templates" / f"{s}.npz") as t:
            v, f = t["vertices"], t["faces"]
        assert v.dtype == np.float32 and v.ndim == 2 and v.shape[1] == 3
        assert f.dtype == np.int32 and f.shape[1] == 3 and f.min() >= 0 and f.max() < len(v)
        assert 2000 <= len(v) <= 12000
        assert np.abs(v).max() < 0.3  # metres, not centimetres
        assert meta["subjects"][s]["num_vertices"] == len(v)
        for part in ("lips", "upper"):
            idx = np.loadtxt(d / "masks" / f"{s}_{part}.txt", dtype=np.int64, ndmin=1)
            assert len(idx) > 20 and idx.min() >= 0 and idx.max() < len(v)
            assert len(np.unique(idx)) == len(idx)
        lips = np.loadtxt(d / "masks" / f"{s}_lips.txt", dtype=np.int64)
        upper = np.loadtxt(d / "masks" / f"{s}_upper.txt", dtype=np.int64)
        assert not set(lips) & set(upper)
        assert v[upper, 1].mean() > v[lips, 1].mean() + 0.03  # upper face is above the lips
    for name, c in clips.items():
        assert name.startswith(c["subject"] + "_sentence")
        audio, sr = sf.read(d / "wav" / f"{name}.wav")
        assert sr == 16000 and audio.ndim == 1
        verts = np.load(d / "vertices" / f"{name}.npy")
        n_tpl = meta["subjects"][c["subject"]]["num_vertices"]
        assert verts.dtype == np.float32 and verts.shape[1:] == (n_tpl, 3)
        assert verts.shape[0] == math.floor(len(audio) / sr * 30) + 1 == c["num_frames"]
        assert c["text"] and c["voice"] and c["family"] == meta["subjects"][c["subject"]]["family"]
        ph = c["phonemes"]
        assert ph[0][0] == "sil" and ph[-1][0] == "sil" and abs(ph[-1][2] - len(audio) / sr) < 1e-3
        assert all(a <= b for _, a, b in ph) and all(p1[2] <= p2[1] + 1e-6 for p1, p2 in zip(ph, ph[1:]))


def test_splits_families_and_voices(dataset):
    meta, clips = _meta(Path(dataset))
    held = meta["held_out"]["family"]
    fams = {s: meta["subjects"][s]["family"] for s in meta["subjects"]}
    assert meta["splits"]["test"], "a test subject is expected with 2 subjects"
    assert all(fams[s] != held for s in meta["splits"]["train"] + meta["splits"]["val"])
    assert any(fams[s] == held for s in meta["splits"]["test"])
    counts = {meta["subjects"][s]["num_vertices"] for s in meta["subjects"]}
    assert len(counts) == 2, "the two subjects should have different topologies"
    for c in clips.values():
        assert c["voice_held_out"] == (c["split"] == "test")
        if c["split"] == "test":
            assert c["voice"] in meta["held_out"]["voices_test_only"]


def test_mouth_moves_with_speech_and_rests_in_silence(dataset):
    d = Path(dataset)
    _, clips = _meta(d)
    for name, c in clips.items():
        disp = _lip_disp(d, name, c["subject"])
        t = np.arange(len(disp)) / 30.0
        vowel = np.zeros(len(t), bool)
        for p, a, b in c["phonemes"]:
            if p in VOWELS:
                vowel |= (t >= a) & (t < b)
        lead = t < c["speech_start_s"] - 0.25
        assert vowel.sum() >= 3 and lead.sum() >= 1
        assert disp[lead].max() < 1e-4          # < 0.1 mm: at rest before the speech
        assert disp[vowel].mean() > 1.5e-3      # > 1.5 mm mean lip motion on vowels
        assert disp[vowel].mean() > 10 * (disp[lead].mean() + 1e-5)


def test_deterministic_across_workers_and_seed_matters(dataset, tmp_path):
    """Same seed through the CLI with 2 workers: byte-identical files; another seed: different."""
    d = Path(dataset)
    again = tmp_path / "again"
    cmd = [sys.executable, "-m", "training.synth", "--out", str(again), "--subjects", "2",
           "--sentences", "2", "--seed", "0", "--fps", "30", "--workers", "2", "--ict", str(ICT)]
    res = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert res.returncode == 0, res.stderr
    files = sorted(p.relative_to(d) for p in d.rglob("*") if p.is_file())
    assert files == sorted(p.relative_to(again) for p in again.rglob("*") if p.is_file())
    for rel in files:
        assert (d / rel).read_bytes() == (again / rel).read_bytes(), rel

    from training.synth import generate

    other = generate(tmp_path / "other", subjects=2, sentences=2, seed=1, ict_path=ICT)
    a = np.load(d / "vertices" / "synth000_sentence01.npy")
    b = np.load(other / "vertices" / "synth000_sentence01.npy")
    assert a.shape != b.shape or not np.array_equal(a, b)


def test_refuses_non_empty_folder(tmp_path):
    _need_tools()
    from training.synth import generate

    (tmp_path / "notes.txt").write_text("mine")
    with pytest.raises(FileExistsError):
        generate(tmp_path, subjects=1, sentences=1, ict_path=ICT)
    assert (tmp_path / "notes.txt").read_text() == "mine"


def test_viseme_track():
    from training.synth import EXPRESSIONS, viseme_track

    jaw, close = EXPRESSIONS.index("jawOpen"), EXPRESSIONS.index("mouthClose")
    ph = [("sil", 0.0, 0.5), ("aa", 0.5, 0.7), ("p", 0.7, 0.78), ("aa", 0.78, 1.0), ("sil", 1.0, 1.6)]
    w = viseme_track(ph, 100, 160, style={"lead": 0.06, "sigma": 0.03})
    assert w.shape == (160, len(EXPRESSIONS)) and w.dtype == np.float32
    assert np.all(w >= 0) and np.all(w <= 1)
    assert np.abs(w[:30]).max() < 1e-3 and np.abs(w[-20:]).max() < 1e-3  # silence -> rest
    assert w[54, jaw] > 0.25                                             # open on the vowel
    assert w[68, close] > 0.5 * 0.86 * w[68, jaw]                        # lips shut on the /p/
    # anticipation: the mouth is already opening before the sound starts at 0.5 s
    assert w[46, jaw] > 0.1
    lagged = viseme_track(ph, 100, 160, style={"lead": 0.0, "sigma": 0.03})
    assert w[46, jaw] > lagged[46, jaw] + 0.05
    assert np.abs(viseme_track([("sil", 0, 1)], 30, 31)).max() == 0
    assert viseme_track(ph, 30, 0).shape == (0, len(EXPRESSIONS))


def test_closest_point_transfer_is_exact_on_the_surface():
    from training.synth.topology import closest_point_barycentric

    rng = np.random.default_rng(0)
    # a bumpy open grid
    n = 20
    x, y = np.meshgrid(np.linspace(0, 1, n), np.linspace(0, 1, n))
    v = np.stack([x.ravel(), y.ravel(), 0.1 * np.sin(3 * x.ravel()) * np.cos(2 * y.ravel())], 1)
    q = np.arange(n * n).reshape(n, n)[:-1, :-1].ravel()
    f = np.concatenate([np.stack([q, q + 1, q + n], 1), np.stack([q + 1, q + n + 1, q + n], 1)])
    tri = rng.integers(0, len(f), 500)
    bary = rng.dirichlet([1, 1, 1], 500)
    pts = (bary[:, :, None] * v[f[tri]]).sum(1)
    t2, b2 = closest_point_barycentric(pts, v, f)
    back = (b2[:, :, None] * v[f[t2]]).sum(1)
    assert np.abs(back - pts).max() < 1e-9


def test_general_reader_accepts_the_output(dataset):
    datasets = pytest.importorskip("training.datasets")
    if not hasattr(datasets, "read_general"):
        pytest.skip("training.datasets has no read_general yet")
    meta, _ = _meta(Path(dataset))
    listing = datasets.read_general(dataset, "train")
    assert len(listing) == 2 * len(meta["splits"]["train"])
