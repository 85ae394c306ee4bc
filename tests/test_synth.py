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
    return generate(out, subjects=2, sentences=2, seed=0, fps=30, workers=1, ict_path=ICT, languages="en")


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
           "--sentences", "2", "--seed", "0", "--fps", "30", "--workers", "2", "--ict", str(ICT),
           "--languages", "en"]
    res = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert res.returncode == 0, res.stderr
    files = sorted(p.relative_to(d) for p in d.rglob("*") if p.is_file())
    assert files == sorted(p.relative_to(again) for p in again.rglob("*") if p.is_file())
    for rel in files:
        assert (d / rel).read_bytes() == (again / rel).read_bytes(), rel

    from training.synth import generate

    other = generate(tmp_path / "other", subjects=2, sentences=2, seed=1, ict_path=ICT, languages="en")
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


# --------------------------------------------------------------------------- multilingual

def _need_espeak():
    if shutil.which("espeak-ng") is None:
        pytest.skip("espeak-ng not installed (Debian packages espeak-ng libespeak-ng1)")
    from training.synth import tts

    if not tts.espeak_voices_installed(["de"]):
        pytest.skip("libespeak-ng not loadable (Debian package libespeak-ng1)")


def test_general_phone_mapping_keeps_lips():
    from training.synth.phones import espeak_phones

    for lang in ("de", "hi", "sw", "ko", "cmn-latn-pinyin", "ru", "en"):
        for ph, want in (("p", "p"), ("b", "b"), ("m", "m"), ("'m", "m"), ("f", "f"), ("v", "v")):
            assert espeak_phones(ph, lang)[0] == (want,), (lang, ph)
    for ph, want in (("p#", "p"), ("b#", "b"), ("m-", "m"), ("m;", "m"), ("ph", "p"), ("p-", "p"),
                     ("B", "b"), ("v#", "v")):
        parts, known = espeak_phones(ph, "xx")
        assert known and parts == (want,), ph
    # rounded vowels stay rounded, aspirated 'th' is a t (not English theta), pauses are silence
    for ph in ("o", "o:", "O~", "u", "u:", "y", "Y:", "W", "8"):
        assert espeak_phones(ph, "de")[0][0] in {"ao", "ow", "uw", "uh"}, ph
    assert espeak_phones("th", "cmn-latn-pinyin")[0] == ("t",)
    assert espeak_phones("uo", "cmn-latn-pinyin")[0] == ("uw", "ao")
    assert espeak_phones("_:", "de")[0] == ("sil",)
    assert espeak_phones("%$", "de") == (("ax",), False)


def test_every_language_has_sentences_in_its_own_script():
    import unicodedata

    from training.synth import tts
    from training.synth.sentences_multi import SENTENCES

    assert len(tts.LANGUAGES) + 1 >= 24 and set(tts.LANGUAGES) == set(SENTENCES)
    assert len(tts.HELD_OUT_LANGUAGES) >= 3
    from training.synth.sentences_multi import FAMILY

    assert len({FAMILY[lang] for lang in tts.HELD_OUT_LANGUAGES}) == len(tts.HELD_OUT_LANGUAGES)
    script = {"ru": "CYRILLIC", "uk": "CYRILLIC", "el": "GREEK", "hi": "DEVANAGARI", "bn": "BENGALI",
              "ar": "ARABIC", "fa": "ARABIC", "ko": "HANGUL", "ta": "TAMIL", "ja": ("HIRAGANA", "KATAKANA")}
    for lang, sents in SENTENCES.items():
        assert 10 <= len(sents) <= 20 and len(set(sents)) == len(sents), lang
        if lang in script:
            for s in sents:
                names = [unicodedata.name(ch, "") for ch in s if ch.isalpha()]
                assert names and all(n.startswith(script[lang]) for n in names), (lang, s)
        if lang == "ja":
            assert not any("CJK" in unicodedata.name(ch, "") for s in sents for ch in s)  # kana only


@pytest.mark.parametrize("lang,text", [
    ("de", "Mein Bruder backt am Montag Brot mit Paul."),
    ("sw", "Mama yangu hunywa maziwa na babu."),
    ("hi", "मेरी माँ सुबह बाज़ार में पपीता खरीदती है।"),
])
def test_espeak_synthesis_maps_bilabials(lang, text):
    _need_espeak()
    from training.synth import tts

    info = {}
    audio, phones = tts.synthesize(text, tts.Voice("espeak", lang), info=info)
    assert len(audio) > 16000 * 0.5
    names = [p for p, _, _ in phones]
    n_bilabial = sum(p in ("p", "b", "m") for p in names)
    assert n_bilabial >= 4, names
    from training.synth.visemes import PHONE_TO_VISEME

    assert all(p in PHONE_TO_VISEME for p in names), names
    assert info["unknown_s"] <= 0.05 * info["speech_s"], info["unknown"]


def test_unknown_phones_are_rare_in_every_language():
    """Fewer than 5 % of each language's phone time falls back to the default phone."""
    _need_espeak()
    from training.synth import tts
    from training.synth.generate import sentences_of

    ok = tts.espeak_voices_installed(["en-us", *tts.LANGUAGES])
    report = {}
    for lang in ["en-us", *tts.LANGUAGES]:
        if lang not in ok:
            continue
        unknown = speech = 0.0
        for text in sentences_of(tts.language_of(lang))[:3]:
            info = {}
            tts.synthesize(text, tts.Voice("espeak", lang), info=info)
            unknown += info["unknown_s"]
            speech += info["speech_s"]
        report[lang] = unknown / speech
    assert len(report) >= 20, f"only {sorted(report)} speak here"
    bad = {k: round(v, 3) for k, v in report.items() if v >= 0.05}
    assert not bad, bad


def test_short_bilabials_close_the_lips_at_30fps():
    """Every /p b m/ of 20-40 ms between open vowels shuts the lips on at least one 30 fps frame
    of its window [start - lead - 30 ms, end - lead + 30 ms], and the closure has no one-frame pop."""
    from training.synth.visemes import CLOSE_PER_JAW, EXPRESSIONS, viseme_track

    jaw, close = EXPRESSIONS.index("jawOpen"), EXPRESSIONS.index("mouthClose")
    openers = [EXPRESSIONS.index(n) for n in ("mouthLowerDown_L", "mouthLowerDown_R", "mouthUpperUp_L",
                                              "mouthUpperUp_R", "mouthFunnel")]
    rng = np.random.default_rng(0)
    n_checked = 0
    for trial in range(60):
        sigma, lead = rng.uniform(0.025, 0.045), rng.uniform(0.045, 0.075)
        t = 0.3 + rng.uniform(0, 0.04)
        ph, bil = [("sil", 0.0, t)], []
        for k in range(6):
            d = rng.uniform(0.06, 0.15)
            ph.append((["aa", "ae", "ao"][k % 3], t, t + d))
            t += d
            d = 0.03 if k % 2 else rng.uniform(0.02, 0.04)
            ph.append((["p", "b", "m"][k % 3], t, t + d))
            bil.append((t, t + d))
            t += d
        ph += [("aa", t, t + 0.12), ("sil", t + 0.12, t + 0.6)]
        n = int((t + 0.6) * 30) + 1
        style = {"sigma": sigma, "lead": lead, "amplitude": rng.uniform(0.75, 1.25), "jaw_gain": rng.uniform(0.8, 1.3)}
        w = viseme_track(ph, 30, n, style).astype(np.float64)
        times = np.arange(n) / 30.0
        c = w[:, close] / (CLOSE_PER_JAW * np.maximum(w[:, jaw], 1e-9))
        shut = (c >= 0.95) & (w[:, openers].max(axis=1) < 0.03) & (w[:, jaw] > 0.05)
        for a, b in bil:
            win = (times >= a - lead - 0.03) & (times <= b - lead + 0.03)
            assert shut[win].any(), (trial, a, b, c[win])
            n_checked += 1
        # smooth: no frame is closed while both its neighbours are wide open
        for i in range(1, n - 1):
            if c[i] >= 0.95:
                assert max(c[i - 1], c[i + 1]) > 0.3, (trial, i)
    assert n_checked == 360


@pytest.fixture(scope="module")
def multi_dataset(tmp_path_factory):
    _need_tools()
    from training.synth import generate

    out = tmp_path_factory.mktemp("synth_multi") / "ds"
    return generate(out, subjects=2, sentences=3, seed=3, fps=30, workers=1, ict_path=ICT,
                    languages="en,de,hi,sw,ta", english_share=0.2)


def test_multilingual_dataset_records_languages(multi_dataset):
    from training.synth import tts

    meta, clips = _meta(Path(multi_dataset))
    assert len(clips) == 6
    held = meta["held_out"]["languages"]
    assert set(held) == {"sw", "ta"} and set(held) <= set(tts.HELD_OUT_LANGUAGES)
    assert not set(held) & set(meta["held_out"]["languages_train_val"])
    langs = set()
    for c in clips.values():
        assert c["language"] in {"en", "de", "hi", "sw", "ta"}
        langs.add(c["language"])
        if c["language"] in held:
            assert c["split"] == "test"
        if c["engine"] == "espeak":
            assert tts.language_of(c["voice"].split(":", 1)[1]) == c["language"]
        assert c["voice_held_out"] == (c["split"] == "test")
        assert c["unknown_phone_s"] <= 0.05 * c["speech_phone_s"] + 1e-9
    assert len(langs) >= 2
    for lang, st in meta["phone_mapping"].items():
        assert st["unknown_fraction"] < 0.05, (lang, st)


def test_held_out_languages_only_in_test_plan():
    """The plan (no synthesis) of a bigger dataset: held-out languages only for test subjects."""
    from training.synth.generate import plan_subjects

    langs = ["en", "de", "fr", "ru", "hi", "hu", "ta", "sw"]
    plan = plan_subjects(20, 20, 0, "decimated", ["remeshed", "ict_face"], languages=langs,
                         held_out_languages=["hu", "ta", "sw"], english_share=0.4)
    seen_by_split = {"train": set(), "val": set(), "test": set()}
    n_en = n_all = 0
    for s in plan:
        for lang, idx in s["sentences"]:
            seen_by_split[s["split"]].add(lang)
            n_en += lang == "en"
            n_all += 1
    assert not seen_by_split["train"] & {"hu", "ta", "sw"}
    assert not seen_by_split["val"] & {"hu", "ta", "sw"}
    assert seen_by_split["test"] & {"hu", "ta", "sw"}
    assert 0.3 < n_en / n_all < 0.5
    assert plan == plan_subjects(20, 20, 0, "decimated", ["remeshed", "ict_face"], languages=langs,
                                 held_out_languages=["hu", "ta", "sw"], english_share=0.4)


def test_festival_voice_optional():
    """festival (Debian festival + festvox-us-slt-hts / -kallpc16k / -kdlpc16k) is an optional
    English engine: every installed voice speaks with phone timings, the diphone voices take the rate."""
    from training.synth import tts

    installed = tts.festival_voices_installed()
    if not installed:
        pytest.skip("festival or its voices not installed (optional engine)")
    for name in sorted(installed):
        audio, phones = tts.synthesize("Bob made a map of the moon.", tts.Voice("festival", name))
        assert len(audio) > 16000 * 0.5, name
        names = [p for p, _, _ in phones]
        assert names[0] == "sil" and sum(p in ("p", "b", "m") for p in names) >= 5, (name, names)
        assert all(a < b for _, a, b in phones)
        if name.endswith("_diphone"):
            fast, _ = tts.synthesize("Bob made a map of the moon.", tts.Voice("festival", name), rate=1.2)
            assert len(fast) < 0.9 * len(audio), name


def test_voice_shares_pick_the_engine():
    """flite_share / festival_share decide which engine speaks an English clip; bad shares are refused."""
    import numpy as np

    from training.synth import tts
    from training.synth.generate import _speak, generate

    pool = [v for v in tts.available_voices(["en"]) if not v.held_out]
    engines = {v.engine for v in pool}
    for shares, want in (((1.0, 0.0), "flite"), ((0.0, 0.0), "espeak"), ((0.0, 1.0), "festival")):
        if want not in engines:
            continue
        for k in range(3):
            voice, audio, *_ = _speak("Bob made a map.", "en", pool, np.random.default_rng(k), shares)
            assert voice.engine == want and len(audio) > 0
    with pytest.raises(ValueError, match="flite_share and festival_share"):
        generate("/nonexistent/never_written", 1, 1, flite_share=0.7, festival_share=0.5)


def test_festival_voices_filter(tmp_path):
    """festival_voices limits festival to the named voices (how synth2 is rebuilt on a machine with
    more of them), is recorded in meta.json, and an unknown name is refused before anything is written."""
    import json

    from training.synth import tts
    from training.synth.generate import generate

    with pytest.raises(ValueError, match="unknown festival voices \\['nope'\\]"):
        generate(tmp_path / "never", 1, 1, festival_voices=["nope"])
    assert not (tmp_path / "never").exists()
    with pytest.raises(ValueError, match="unknown festival voices"):
        tts.available_voices(["en"], festival_voices=["cmu_us_slt_arctic_hts", "nope"])
    everyone = tts.available_voices(["en"])
    no_festival = tts.available_voices(["en"], festival_voices=[])
    assert no_festival == [v for v in everyone if v.engine != "festival"]  # same order, festival gone
    slt = "cmu_us_slt_arctic_hts"
    if slt not in tts.festival_voices_installed():
        pytest.skip("festival's slt voice not installed (optional engine)")
    out = generate(tmp_path / "d", 2, 3, seed=1, languages="en", english_share=1.0, flite_share=0.0,
                   festival_share=1.0, festival_voices=[slt])
    clips = json.loads((out / "clips.json").read_text())["clips"].values()
    # test clips speak with held-out voices only, which festival has none of
    assert {c["voice"] for c in clips if c["split"] != "test"} == {f"festival:{slt}"}
    assert json.loads((out / "meta.json").read_text())["festival_voices"] == [slt]
