"""The real-speech articulation gap on identical words: each transcript of a speech folder spoken
again by text-to-speech voices, the model's lips measured on each, under two judges.

    python tools/same_text_voices.py [--checkpoint C] [--speech-dir ../shared/data/speech] \
        [--voice flite:awb --voice flite:slt --voice espeak:en-us+m4]

Real recordings and the training voices differ in words as well as in sound, and the synthetic test
is judged by the generator's own phone timings while real speech is judged by pocketsphinx's
alignment. Here the words are the same for every row, and each voiced clip is judged both ways:
"aligned" (pocketsphinx forced alignment of the transcript, as for the real recordings) and "own"
(the voice's own phone timings, as for the synthetic test). One animation per clip serves both.
The two judges spell the schwa differently: pocketsphinx's dictionary as AH (an open vowel of the
report), the voices as AX (not one). The "-noAH" rows leave AH out of the open vowels under either
judge, so that they count the same vowels.
Prints one line per head, voice and judge: bilabials closed, open-vowel and bilabial opening (mm),
their ratio, lips in silence (mm), lag (frames); real recordings first.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from backend.audio_io import load_audio  # noqa: E402
from backend.inference import Session  # noqa: E402
from training.articulation import (HEADS, TalkingHead, align, load_indices, measure_clip,  # noqa: E402
                                   speech_dir_audios, summarise)
from training.synth.tts import TTSError, Voice, synthesize  # noqa: E402

SHARED = ROOT.parent / "shared" / "data"
PAUSE_S = 0.25  # the real recordings start and end in a pause; so do the voiced copies


def line(head: str, voice: str, judge: str, reports) -> str:
    p = summarise(reports)
    return (f"{head:6s} {voice:16s} {judge:12s} clips {len(reports)}  closed {p['bilabials_closed']}/"
            f"{p['bilabials']}  open/bilabial {p['open_vowel_opening_mm']:.2f}/{p['bilabial_opening_mm']:.2f} mm"
            f" (x{p['open_to_bilabial_ratio']:.2f}, {p['open_vowels']} open vowels)  silence "
            f"{p['silence_lip_motion_mm']:.2f}  lag {p['lag_frames_median']}")


def without_ah(phones):
    return [("AX" if p.upper().rstrip("012") == "AH" else p, a, b) for p, a, b in phones]


def voiced(text: str, voice: Voice):
    """Speak text with a pause each side, peak at half scale: (samples, the voice's own phones)."""
    audio, phones = synthesize(text, voice)
    pad = np.zeros(int(PAUSE_S * 16000))
    audio = np.concatenate([pad, audio, pad])
    audio = (0.5 * audio / max(np.abs(audio).max(), 1e-9)).astype(np.float32)
    return audio, [(p, s + PAUSE_S, e + PAUSE_S) for p, s, e in phones]


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--checkpoint", default=None, help="model file (default: the bundled model)")
    ap.add_argument("--speech-dir", type=Path, default=SHARED / "speech")
    ap.add_argument("--voice", action="append", default=None,
                    help="ENGINE:NAME, e.g. flite:awb or espeak:en-us+m4 (repeatable)")
    ap.add_argument("--heads", default="flame,demo", help=f"comma-separated, of {', '.join(HEADS)}")
    a = ap.parse_args(argv)
    specs = a.voice or ["flite:awb", "flite:slt", "espeak:en-us+m4"]
    bad = [v for v in specs if v.count(":") != 1 or v.split(":")[0] not in ("espeak", "flite", "festival")]
    if bad:
        ap.error(f"--voice {bad[0]!r}: give ENGINE:NAME with ENGINE espeak, flite or festival")
    voices = [Voice(*v.split(":")) for v in specs]
    unknown = [h for h in a.heads.split(",") if h not in HEADS]
    if unknown:
        ap.error(f"--heads: unknown head {unknown[0]!r}; choose from {', '.join(HEADS)}")
    audios = [x for x in speech_dir_audios(a.speech_dir) if x[2]]
    if not audios:
        raise SystemExit(f"no transcribed recordings in {a.speech_dir} (it needs a `transcription` file)")
    session = Session()  # one warm model for every head
    for head in a.heads.split(","):
        h = HEADS[head]
        lips, upper = load_indices(h.lips), load_indices(h.upper)
        talker = TalkingHead(h.mesh, lips, h.fit_size, a.checkpoint, session=session)

        def measure(name, samples):
            """Animate once; the returned function measures that animation under given phones."""
            seq, fps = talker.speak(samples)
            return lambda ph: measure_clip(name, seq, talker.verts, talker.lip, ph, fps, lips=lips,
                                           upper=upper, samples=samples)

        real = {"aligned": [], "aligned-noAH": []}
        for name, wav, text in audios:
            samples = load_audio(wav)
            try:
                phones = align(samples, 16000, text)[0]
            except RuntimeError as exc:
                print(f"{name}: skipped, {exc}", file=sys.stderr)
                continue
            judge = measure(name, samples)
            real["aligned"].append(judge(phones))
            real["aligned-noAH"].append(judge(without_ah(phones)))
        if not real["aligned"]:
            raise SystemExit(f"pocketsphinx aligned none of the recordings in {a.speech_dir}")
        for j, reps in real.items():
            print(line(head, "real", j, reps), flush=True)
        for voice in voices:
            by_judge = {"aligned": [], "own": [], "aligned-noAH": [], "own-noAH": []}
            for name, _, text in audios:
                try:
                    samples, own = voiced(text, voice)
                except TTSError as exc:
                    raise SystemExit(f"{voice.id}: {exc}") from exc
                judge = measure(name, samples)
                by_judge["own"].append(judge(own))
                by_judge["own-noAH"].append(judge(without_ah(own)))
                try:
                    phones = align(samples, 16000, text)[0]
                except RuntimeError:  # pocketsphinx cannot place every synthetic voice
                    continue
                by_judge["aligned"].append(judge(phones))
                by_judge["aligned-noAH"].append(judge(without_ah(phones)))
            for j, reps in by_judge.items():
                print(line(head, voice.id, j, reps) if reps else f"{head:6s} {voice.id:16s} {j:12s} "
                      "no clip aligned", flush=True)

if __name__ == "__main__":
    main()
