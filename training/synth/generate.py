"""Synthetic talking-head dataset in the "general" layout (see README.md beside this file).

Everything random is drawn from generators seeded by (seed, stage, subject, clip), so a seed gives
byte-identical output whatever the number of workers.
"""
from __future__ import annotations

import io
import json
import math
import multiprocessing as mp
import os
import shutil
import warnings
import zipfile
from pathlib import Path

import numpy as np

from . import tts
from .sentences import HARVARD_SENTENCES
from .sentences_multi import SENTENCES as MULTI_SENTENCES
from .topology import (FAMILIES, FAMILY_REQUIRES, N_IDENTITY_MODES, available_families,
                       build_subject_mesh, default_ict_path, identity_template, load_ict)
from .visemes import DEFAULT_STYLE, EXPRESSIONS, blink_track, viseme_track

GENERATOR_VERSION = "1.3"
SAMPLE_RATE = tts.SAMPLE_RATE
DEFAULT_HOLDOUT_FAMILY = "decimated"
# Train/val subjects cycle through these (remeshed twice: it is what real scans look like).
TRAIN_FAMILY_CYCLE = ("remeshed", "ict_face", "remeshed", "ict_narrow", "ict_full")
_FALLBACK_HOLDOUT = "ict_narrow"
# Of the English clips: the share spoken by flite, and by festival when it is installed (taken
# from espeak-ng's share); both engines' voices are built from real speakers' recordings.
DEFAULT_FLITE_SHARE = 0.3
DEFAULT_FESTIVAL_SHARE = 0.15
DEFAULT_ENGLISH_SHARE = 0.4  # probability that a clip is English (when other languages are on)
_TEST_HELD_OUT_LANGUAGE_SHARE = 0.5  # of the non-English test clips, when held-out languages exist
UNKNOWN_PHONE_WARN = 0.05  # warn when more of a language's speech than this maps to the default phone
_OUTPUT_ITEMS = ("meta.json", "clips.json", "templates", "masks", "wav", "vertices", ".work")
_BLINK = (EXPRESSIONS.index("eyeBlink_L"), EXPRESSIONS.index("eyeBlink_R"))


# --------------------------------------------------------------------------- small helpers

def n_frames_for(n_samples: int, fps: float, sample_rate: int = SAMPLE_RATE) -> int:
    """floor(duration * fps) + 1 frames for a clip of n_samples."""
    return int(math.floor(n_samples * float(fps) / sample_rate + 1e-9)) + 1


def _save_npz_deterministic(path: Path, **arrays) -> None:
    """np.savez without the zip timestamps (so the bytes depend on the data only)."""
    with zipfile.ZipFile(path, "w", compression=zipfile.ZIP_STORED) as zf:
        for name, arr in arrays.items():
            buf = io.BytesIO()
            np.lib.format.write_array(buf, np.ascontiguousarray(arr), allow_pickle=False)
            zf.writestr(zipfile.ZipInfo(f"{name}.npy", date_time=(1980, 1, 1, 0, 0, 0)), buf.getvalue())


def _write_indices(path: Path, idx) -> None:
    path.write_text("".join(f"{int(i)}\n" for i in idx), encoding="utf-8")


def _dump_json(path: Path, obj) -> None:
    path.write_text(json.dumps(obj, indent=1, sort_keys=False) + "\n", encoding="utf-8")


def _dump_clips_json(path: Path, obj) -> None:
    """JSON with one clip per line (readable, diffable, still plain JSON)."""
    head = {k: v for k, v in obj.items() if k != "clips"}
    lines = ["{"] + [f" {json.dumps(k)}: {json.dumps(v)}," for k, v in head.items()] + [' "clips": {']
    items = list(obj["clips"].items())
    for i, (name, clip) in enumerate(items):
        lines.append(f"  {json.dumps(name)}: {json.dumps(clip)}" + ("," if i + 1 < len(items) else ""))
    lines += [" }", "}"]
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")


def _r(x, nd=4):
    return float(round(float(x), nd))


# --------------------------------------------------------------------------- planning

def _split_subjects(n: int, seed: int):
    rng = np.random.default_rng([seed, 0])
    perm = [int(i) for i in rng.permutation(n)]
    n_test = max(1, round(0.2 * n)) if n >= 2 else 0
    n_val = round(0.1 * n) if n >= 5 else 0
    test, val, train = perm[:n_test], perm[n_test:n_test + n_val], perm[n_test + n_val:]
    return sorted(train), sorted(val), sorted(test)


def sentences_of(language: str):
    """The sentences spoken in a language ('en': the Harvard sentences)."""
    return HARVARD_SENTENCES if language == "en" else MULTI_SENTENCES[language]


def plan_subjects(n_subjects: int, n_sentences: int, seed: int, holdout_family: str,
                  train_families=None, languages=("en",), held_out_languages=(),
                  english_share: float = DEFAULT_ENGLISH_SHARE) -> list[dict]:
    """Identity, style, topology family, split and sentences of every subject (no heavy work).

    train_families: families cycled through by train/val subjects (default TRAIN_FAMILY_CYCLE,
    where 'remeshed' comes twice); the held-out family is removed from it.
    languages: the languages spoken ('en' and keys of sentences_multi.SENTENCES); those in
    held_out_languages are spoken by test subjects only. A clip is English with probability
    english_share (always, when English is the only language of its split; never without 'en').
    Each subject's ``sentences`` is a list of [language, sentence index].
    """
    for f in [holdout_family, *(train_families or [])]:
        if f not in FAMILIES:
            raise ValueError(f"unknown topology family '{f}'; use one of {sorted(FAMILIES)}")
    train, val, test = _split_subjects(n_subjects, seed)
    cycle = [f for f in (train_families or TRAIN_FAMILY_CYCLE) if f != holdout_family]
    if not cycle:
        raise ValueError("no train family left once the held-out family is removed")
    frng = np.random.default_rng([seed, 1])
    cycle = [cycle[i] for i in frng.permutation(len(cycle))]
    family = {}
    for k, s in enumerate(train + val):
        family[s] = cycle[k % len(cycle)]
    n_held = (len(test) + 1) // 2  # at least half of the test subjects are in the held-out family
    for k, s in enumerate(test):
        family[s] = holdout_family if k < n_held else cycle[(k - n_held + 1) % len(cycle)]
    split = {**{s: "train" for s in train}, **{s: "val" for s in val}, **{s: "test" for s in test}}
    langs = [lang for lang in languages if lang != "en"]
    for lang in langs:
        if lang not in MULTI_SENTENCES:
            raise ValueError(f"no sentences for language '{lang}'; use en or one of {sorted(MULTI_SENTENCES)}")
    seen = [lang for lang in langs if lang not in held_out_languages]
    held = [lang for lang in langs if lang in held_out_languages]
    has_en = "en" in languages
    subjects = []
    for i in range(n_subjects):
        rng = np.random.default_rng([seed, 10, i])
        coeffs = np.clip(rng.normal(size=N_IDENTITY_MODES), -2.5, 2.5)
        style = {
            "amplitude": _r(rng.uniform(0.75, 1.25)),
            "jaw_gain": _r(rng.uniform(0.8, 1.3)),
            "sigma": _r(rng.uniform(0.025, 0.045)),
            # Real mouths lead the sound, but by less than a frame or two on the whole: a larger
            # lead taught the model to open ~2 frames early on real speech (training.articulation).
            "lead": _r(rng.uniform(0.02, 0.045)),
            "asymmetry": _r(rng.uniform(-0.08, 0.08)),
        }
        bias = {"smile": _r(rng.uniform(0.0, 0.25)), "brows": _r(rng.uniform(0.0, 0.3))}
        # language of each clip, then sentences without repeats within a (subject, language)
        lrng = np.random.default_rng([seed, 11, i])
        pool = seen + held if split[i] == "test" else seen
        sent, orders, used = [], {}, {}
        for _ in range(n_sentences):
            if has_en and (not pool or lrng.random() < english_share):
                lang = "en"
            elif split[i] == "test" and held and seen:
                group = held if lrng.random() < _TEST_HELD_OUT_LANGUAGE_SHARE else seen
                lang = group[int(lrng.integers(len(group)))]
            elif pool:
                lang = pool[int(lrng.integers(len(pool)))]
            else:
                raise ValueError("no language left for the train/val split: every chosen language is held out")
            if lang not in orders:
                orders[lang] = lrng.permutation(len(sentences_of(lang)))
                used[lang] = 0
            sent.append([lang, int(orders[lang][used[lang] % len(orders[lang])])])
            used[lang] += 1
        subjects.append({
            "index": i, "name": f"synth{i:03d}", "split": split[i], "family": family[i],
            "identity_coeffs": [_r(c) for c in coeffs], "style": style, "bias": bias,
            "sentences": sent,
        })
    return subjects


def voice_pools(voices) -> dict:
    """Voices for train/val (seen) and test (held out); each split falls back to the other if empty."""
    seen = [v for v in voices if not v.held_out]
    held = [v for v in voices if v.held_out]
    if not voices:
        raise RuntimeError("synth: no text-to-speech voice works here; install the Debian packages "
                           "espeak-ng libespeak-ng1 flite")
    if not seen:
        warnings.warn("synth: no seen voice available; train/val use held-out voices", stacklevel=2)
        seen = held
    if not held:
        warnings.warn("synth: no held-out voice available; test uses seen voices", stacklevel=2)
        held = seen
    return {"train": seen, "val": seen, "test": held}


# --------------------------------------------------------------------------- stage 1: subjects

_ICT_CACHE: dict = {}


def _ict(path):
    key = str(path)
    if key not in _ICT_CACHE:
        _ICT_CACHE.clear()
        _ICT_CACHE[key] = load_ict(path)
    return _ICT_CACHE[key]


def _make_subject(job) -> dict:
    subj, out_dir, ict_path, seed = job
    out = Path(out_dir)
    ict = _ict(ict_path)
    coeffs = np.asarray(subj["identity_coeffs"])
    tpl_src = identity_template(ict, coeffs, subj["bias"]["smile"], subj["bias"]["brows"])
    mesh = build_subject_mesh(ict, subj["family"], tpl_src, np.random.default_rng([seed, 20, subj["index"]]))
    name = subj["name"]
    _save_npz_deterministic(out / "templates" / f"{name}.npz",
                            vertices=mesh.template.astype(np.float32), faces=mesh.faces.astype(np.int32))
    _write_indices(out / "masks" / f"{name}_lips.txt", mesh.lips)
    _write_indices(out / "masks" / f"{name}_upper.txt", mesh.upper)
    # what the clip workers need: the template and expression basis of this subject
    np.save(out / ".work" / f"{name}_template.npy", mesh.template)
    np.save(out / ".work" / f"{name}_basis.npy", mesh.basis.reshape(len(EXPRESSIONS), -1))
    return {"name": name, "region": mesh.region, "num_vertices": int(len(mesh.template)),
            "num_faces": int(len(mesh.faces)), "num_lip_vertices": int(len(mesh.lips)),
            "num_upper_vertices": int(len(mesh.upper)), "topology": mesh.info}


# --------------------------------------------------------------------------- stage 2: clips

_BASIS_CACHE: dict = {}


def _basis(out_dir: Path, name: str):
    key = (str(out_dir), name)
    if key not in _BASIS_CACHE:
        _BASIS_CACHE.clear()
        _BASIS_CACHE[key] = (np.load(out_dir / ".work" / f"{name}_template.npy"),
                             np.load(out_dir / ".work" / f"{name}_basis.npy"))
    return _BASIS_CACHE[key]


def _speak(text, language, pool, rng, shares):
    """Pick a voice of ``language`` (English: flite or festival with the probabilities ``shares``)
    and speak; on failure try the next ones of the same language."""
    pool = [v for v in pool if v.language == language]
    if not pool:
        raise RuntimeError(f"synth: no voice speaks '{language}' here")
    flite = [v for v in pool if v.engine == "flite"]
    espeak = [v for v in pool if v.engine == "espeak"]
    festival = [v for v in pool if v.engine == "festival"]
    u = float(rng.random()) if flite and espeak else 0.0
    flite_share, festival_share = shares
    use_flite = bool(flite) and (not espeak or u < flite_share)
    first = flite if use_flite else espeak
    # the optional festival voices take a share of the espeak clips (same draws without them)
    if festival and not use_flite and (not espeak or u >= 1.0 - festival_share):
        first = festival
    if not first:
        first = pool
    order = list(first)
    k = int(rng.integers(len(order)))
    order = order[k:] + order[:k] + [v for v in pool if v not in first]
    rate = float(rng.uniform(0.85, 1.2))
    pitch = float(rng.uniform(-0.8, 0.8))
    prange = float(rng.uniform(-0.6, 0.6))
    last = None
    for v in order:
        try:
            info = {}
            audio, phones = tts.synthesize(text, v, rate=rate, pitch=pitch, pitch_range=prange, info=info)
            return v, audio, phones, {"rate": _r(rate, 3), "pitch": _r(pitch, 3), "pitch_range": _r(prange, 3)}, info
        except tts.TTSError as exc:
            warnings.warn(f"synth: voice {v.id} failed, trying another: {exc}", stacklevel=2)
            last = exc
    raise RuntimeError(f"synth: every voice failed for '{text}': {last}")


def _make_clip(job) -> dict:
    (out_dir, subj, clip_idx, seed, fps, pool, shares) = job
    out = Path(out_dir)
    rng = np.random.default_rng([seed, 30, subj["index"], clip_idx])
    language, sent_id = subj["sentences"][clip_idx]
    text = sentences_of(language)[sent_id]
    voice, audio, phones, prosody, info = _speak(text, language, pool, rng, shares)
    speech_len = len(audio) / SAMPLE_RATE

    # loudness, silence padding, a faint noise floor
    peak = float(np.abs(audio).max()) or 1.0
    audio = audio * (rng.uniform(0.3, 0.9) / peak)
    lead_sil, tail_sil = rng.uniform(0.25, 0.6), rng.uniform(0.2, 0.5)
    n_lead, n_tail = int(round(lead_sil * SAMPLE_RATE)), int(round(tail_sil * SAMPLE_RATE))
    audio = np.concatenate([np.zeros(n_lead), audio, np.zeros(n_tail)])
    audio = audio + rng.normal(0.0, 10 ** rng.uniform(-4.7, -3.7), len(audio))
    pcm = np.clip(np.round(audio * 32767.0), -32768, 32767).astype(np.int16)
    n = len(pcm)
    dur = n / SAMPLE_RATE
    off = n_lead / SAMPLE_RATE
    ph = [("sil", 0.0, off)] + [(p, s + off, e + off) for p, s, e in phones] + [("sil", off + speech_len, dur)]
    merged = []
    for p, s, e in ph:
        e = min(e, dur)
        if e <= s:
            continue
        if merged and merged[-1][0] == p == "sil":
            merged[-1] = (p, merged[-1][1], e)
        else:
            merged.append((p, s, e))
    if merged[-1][2] < dur:  # the TTS audio ran past its last phone: silence to the end
        if merged[-1][0] == "sil":
            merged[-1] = ("sil", merged[-1][1], dur)
        else:
            merged.append(("sil", merged[-1][2], dur))
    speech = [x for x in merged if x[0] != "sil"]

    # motion
    T = n_frames_for(n, fps)
    style = dict(subj["style"])
    style["amplitude"] *= rng.uniform(0.9, 1.1)
    weights = viseme_track(merged, fps, T, style).astype(np.float64)
    blink = blink_track(T, fps, rng)
    weights[:, _BLINK[0]] = blink
    weights[:, _BLINK[1]] = blink
    template, basis = _basis(out, subj["name"])
    verts = (weights @ basis).reshape(T, -1, 3) + template[None]

    name = f"{subj['name']}_sentence{clip_idx + 1:02d}"
    import soundfile as sf

    sf.write(out / "wav" / f"{name}.wav", pcm, SAMPLE_RATE, subtype="PCM_16")
    np.save(out / "vertices" / f"{name}.npy", verts.astype(np.float32))
    return {
        "name": name, "subject": subj["name"], "split": subj["split"], "family": subj["family"],
        "language": language, "sentence_index": sent_id, "text": text,
        "voice": voice.id, "engine": voice.engine, "voice_held_out": voice.held_out, **prosody,
        "num_samples": n, "duration_s": _r(dur, 5), "num_frames": T,
        "speech_start_s": _r(speech[0][1]) if speech else None,
        "speech_end_s": _r(speech[-1][2]) if speech else None,
        "phonemes": [[p, _r(s), _r(e)] for p, s, e in merged],
        "unknown_phones": sorted({ph for ph, _ in info.get("unknown", [])}),
        "unknown_phone_s": _r(info.get("unknown_s", 0.0)), "speech_phone_s": _r(info.get("speech_s", 0.0)),
    }


# --------------------------------------------------------------------------- driver

def _parse_languages(languages) -> list[str]:
    """'all' | 'en' | 'en,de,...' | a list -> language codes in a fixed order (English first)."""
    if languages is None or (isinstance(languages, str) and languages.strip().lower() == "all"):
        return ["en", *tts.LANGUAGES]
    items = languages.split(",") if isinstance(languages, str) else list(languages)
    items = [str(x).strip() for x in items if str(x).strip()]
    known = ["en", *tts.LANGUAGES]
    bad = [x for x in items if x not in known]
    if bad or not items:
        raise ValueError(f"unknown language(s) {bad}; use all, en or some of {known}")
    return [x for x in known if x in items]


def _prepare_out(out: Path, overwrite: bool) -> None:
    if out.exists() and any(out.iterdir()):
        known = all(p.name in _OUTPUT_ITEMS for p in out.iterdir())
        if not overwrite:
            raise FileExistsError(f"{out} is not empty; pick a new folder or pass overwrite=True (--overwrite)")
        if not known:
            raise FileExistsError(f"{out} holds files this generator did not write; refusing to overwrite it")
        for p in out.iterdir():
            shutil.rmtree(p) if p.is_dir() else p.unlink()
    for d in ("templates", "masks", "wav", "vertices", ".work"):
        (out / d).mkdir(parents=True, exist_ok=True)


class _Runner:
    """Runs job lists in-process (workers <= 1) or on one pool of spawned worker processes."""

    def __init__(self, workers: int):
        self.workers = max(1, int(workers))
        self.pool = None

    def __enter__(self):
        if self.workers > 1:
            keys = ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS")
            saved = {k: os.environ.get(k) for k in keys}
            os.environ.update({k: "1" for k in keys})  # one BLAS thread per worker process
            try:
                self.pool = mp.get_context("spawn").Pool(self.workers)
            finally:
                for k, v in saved.items():
                    if v is None:
                        os.environ.pop(k, None)
                    else:
                        os.environ[k] = v
        return self

    def map(self, func, jobs, chunksize=1):
        if self.pool is None or len(jobs) <= 1:
            return [func(j) for j in jobs]
        return self.pool.map(func, jobs, chunksize=chunksize)

    def __exit__(self, *exc):
        if self.pool is not None:
            self.pool.terminate() if exc[0] else self.pool.close()
            self.pool.join()
        return False


def generate(out_dir, subjects: int = 12, sentences: int = 20, seed: int = 0, fps: float = 30,
             workers: int = 1, *, ict_path=None, holdout_family: str = DEFAULT_HOLDOUT_FAMILY,
             families=None, overwrite: bool = False, log=None, languages="all",
             english_share: float = DEFAULT_ENGLISH_SHARE, flite_share: float = DEFAULT_FLITE_SHARE,
             festival_share: float = DEFAULT_FESTIVAL_SHARE, festival_voices=None) -> Path:
    """Write a synthetic dataset (general layout) to ``out_dir`` and return its path.

    subjects x sentences clips; the same arguments give byte-identical files (whatever ``workers``).
    holdout_family: the topology family only test subjects get. families: the families train/val
    subjects cycle through (default TRAIN_FAMILY_CYCLE; a family may be repeated to weight it).
    log: optional callable taking a progress message.
    languages: "all" (English + tts.LANGUAGES), "en", or a list / comma-separated string of codes
    ('en', 'de', 'cmn-latn-pinyin', ...). tts.HELD_OUT_LANGUAGES among them are test-only.
    english_share: probability that a clip is English (the rest is spread over the other languages).
    flite_share, festival_share: of the English clips, the shares spoken by flite and by festival
    (when installed); espeak-ng speaks the rest.
    festival_voices: the festival voices that may speak (default: every installed one of
    tts.FESTIVAL_VOICES). Naming the voices of an older generator rebuilds its data on a machine
    that has more: ["cmu_us_slt_arctic_hts"] gives synth 1.2's voice pool.
    """
    if subjects < 1 or sentences < 1:
        raise ValueError("need at least one subject and one sentence")
    if not fps > 0:
        raise ValueError(f"fps must be positive, got {fps}")
    shares = (float(flite_share), float(festival_share))
    if min(shares) < 0.0 or sum(shares) > 1.0:
        raise ValueError(f"flite_share and festival_share must be >= 0 with a sum <= 1, got "
                         f"{flite_share} and {festival_share}")
    if festival_voices is not None:
        festival_voices = list(festival_voices)
    say = log or (lambda msg: None)
    out = Path(out_dir)
    ict_file = Path(ict_path) if ict_path else default_ict_path()
    _ict(ict_file)  # fail early with a clear message if the ICT file is missing

    usable = available_families()
    if holdout_family not in usable:
        warnings.warn(f"synth: family '{holdout_family}' needs the Python package "
                      f"{FAMILY_REQUIRES.get(holdout_family)}; holding out '{_FALLBACK_HOLDOUT}' instead",
                      stacklevel=2)
        holdout_family = _FALLBACK_HOLDOUT
    cycle = [f for f in (families or TRAIN_FAMILY_CYCLE) if f in usable or f not in FAMILIES]
    skipped = sorted(set(families or TRAIN_FAMILY_CYCLE) - set(cycle))
    if not [f for f in cycle if f != holdout_family]:
        cycle = [f for f in ("ict_face", "ict_narrow", "ict_full") if f != holdout_family]
    if skipped:
        warnings.warn(f"synth: families skipped (install fast-simplification / gpytoolbox): {skipped}",
                      stacklevel=2)
    wanted = _parse_languages(languages)
    if not 0.0 <= float(english_share) <= 1.0:
        raise ValueError(f"english_share must be in 0..1, got {english_share}")
    voices = tts.available_voices(wanted, festival_voices)
    spoken = {v.language for v in voices}
    missing = [lang for lang in wanted if lang not in spoken]
    if missing:
        warnings.warn(f"synth: no working voice for languages {missing}; skipped", stacklevel=2)
    langs = [lang for lang in wanted if lang in spoken]
    if not langs:
        raise RuntimeError("synth: no text-to-speech voice works here; install the Debian packages "
                           "espeak-ng libespeak-ng1 flite")
    held_langs = [lang for lang in langs if lang in tts.HELD_OUT_LANGUAGES]
    if held_langs and not [lang for lang in langs if lang not in held_langs]:
        warnings.warn("synth: only held-out languages chosen; they are used for every split", stacklevel=2)
        held_langs = []
    plan = plan_subjects(subjects, sentences, seed, holdout_family, cycle, languages=langs,
                         held_out_languages=held_langs, english_share=float(english_share))
    pools = voice_pools(voices)
    # a language without a held-out (or seen) voice in a split borrows the other split's voices
    for split in pools:
        have = {v.language for v in pools[split]}
        pools[split] = pools[split] + [v for v in voices if v.language not in have]
    _prepare_out(out, overwrite)

    jobs = [(str(out), s, c, seed, float(fps), pools[s["split"]], shares) for s in plan for c in range(sentences)]
    with _Runner(min(workers, len(jobs))) as runner:
        say(f"building {subjects} subject meshes")
        infos = runner.map(_make_subject, [(s, str(out), str(ict_file), seed) for s in plan])
        say(f"speaking and animating {len(jobs)} clips with {runner.workers} worker(s)")
        chunk = max(1, min(sentences, len(jobs) // (4 * runner.workers)))
        clips = runner.map(_make_clip, jobs, chunksize=chunk)
    shutil.rmtree(out / ".work", ignore_errors=True)

    clips_meta = {"generator": "training.synth", "generator_version": GENERATOR_VERSION,
                  "phone_set": "arpabet (lower case, no stress; 'sil' = silence)",
                  "clips": {c.pop("name"): c for c in clips}}
    _dump_clips_json(out / "clips.json", clips_meta)

    splits = {k: [s["name"] for s in plan if s["split"] == k] for k in ("train", "val", "test")}
    used_voices = sorted({c["voice"] for c in clips_meta["clips"].values()})
    phone_stats = {}
    for c in clips_meta["clips"].values():
        st = phone_stats.setdefault(c["language"], {"clips": 0, "speech_s": 0.0, "unknown_s": 0.0, "unknown": set()})
        st["clips"] += 1
        st["speech_s"] += c["speech_phone_s"]
        st["unknown_s"] += c["unknown_phone_s"]
        st["unknown"].update(c["unknown_phones"])
    for lang, st in phone_stats.items():
        st["unknown_fraction"] = _r(st["unknown_s"] / st["speech_s"]) if st["speech_s"] > 0 else 0.0
        st["speech_s"], st["unknown_s"] = _r(st["speech_s"], 2), _r(st["unknown_s"], 3)
        st["unknown"] = sorted(st["unknown"])
        if st["unknown_fraction"] > UNKNOWN_PHONE_WARN:
            warnings.warn(f"synth: {100 * st['unknown_fraction']:.1f}% of the '{lang}' speech maps to the "
                          f"default phone (unknown espeak phonemes {st['unknown']}); extend training/synth/phones.py",
                          stacklevel=2)
    lang_split = {k: sorted({c["language"] for c in clips_meta["clips"].values() if c["split"] == k})
                  for k in ("train", "val", "test")}
    train_fams = sorted({s["family"] for s in plan if s["split"] != "test"})
    meta = {
        "layout": "general",
        "generator": "training.synth", "generator_version": GENERATOR_VERSION, "seed": int(seed),
        "fps": float(fps), "sample_rate": SAMPLE_RATE, "units": "metres", "axes": "y up, face looks along +z (ICT FaceKit frame)",
        "splits": splits,
        "held_out": {
            "family": holdout_family,
            "families_train_val": train_fams,
            "voices_test_only": sorted(v.id for v in pools["test"] if v.held_out),
            "languages": held_langs,
            "languages_train_val": [lang for lang in langs if lang not in held_langs],
            "note": "test subjects are unseen identities; at least half use the held-out family; "
                    "test clips use held-out voices only; held-out languages are spoken in test clips only",
        },
        "families": {f: {"description": d, "held_out": f == holdout_family} for f, d in FAMILIES.items()},
        "voices_available": [v.id for v in voices], "voices_used": used_voices,
        "languages": langs, "english_share": float(english_share),
        "flite_share": shares[0], "festival_share": shares[1],
        "festival_voices": sorted(festival_voices) if festival_voices is not None else "installed",
        "languages_by_split": lang_split,
        "phone_mapping": phone_stats,
        "expressions": list(EXPRESSIONS), "default_style": DEFAULT_STYLE,
        "masks": {"lips": "lips and the skin within 7 mm around them (ICT landmarks 48-59), carried to each topology",
                  "upper": "face above the nose tip that no mouth expression moves by more than 0.5 mm"},
        "source": {"ict_facekit": ict_file.name, "licence": "MIT (USC ICT FaceKit)",
                   "sentences": "Harvard sentences (public domain); other languages: short everyday sentences "
                                "written for this project (training/synth/sentences_multi.py)"},
        "subjects": {s["name"]: {"split": s["split"], "family": s["family"], **info,
                                 "identity_coeffs": s["identity_coeffs"], "style": s["style"],
                                 "bias": s["bias"]}
                     for s, info in zip(plan, infos)},
        "num_clips": len(clips),
    }
    for s, info in zip(plan, infos):
        meta["subjects"][s["name"]].pop("name", None)
    _dump_json(out / "meta.json", meta)
    say(f"done: {len(clips)} clips in {out}")
    return out
