"""Build a wideband real-speech judge set for `python -m training.articulation --speech-dir`.

Asterisk's core English prompts, as Debian packages them (asterisk-core-sounds-en and
asterisk-core-sounds-en-g722, version pinned below): hundreds of short phrases read by one
professional speaker (Allison Smith), recorded in a studio, shipped as 16 kHz G.722 (50-7000 Hz),
with a transcript of every prompt (core-sounds-en.txt). No model in this project was
trained or tuned on them, and they are not pocketsphinx's test data (the LibriVox clips are), so
they judge a candidate without that bias.

    python tools/ivr_speech.py --out /tmp/ivr            # 60 of 200 usable prompts, 4.6 min of speech
    python -m training.articulation --speech-dir /tmp/ivr --mesh ... --lips ... --out ...

Licence: CC-BY-SA-3.0 (Digium, Inc.; voice: Allison Smith). Fetched from the Debian archive at
run time with `apt-get download`, used for evaluation only, never committed nor bundled. The
transcripts are the upstream ones; prompts with bracketed descriptions ("[beep]"), numbers other
than single digits or fewer than MIN_WORDS words are left out, and a deterministic, evenly spaced
subset is kept so the report stays a few minutes long. The prompts are trimmed to the speech;
each gets PAD_S of digital silence on both sides, without which pocketsphinx cannot align many.
"""
from __future__ import annotations

import argparse
import gzip
import re
import subprocess
import tempfile
from pathlib import Path

import numpy as np
import soundfile as sf

from training.articulation import dictionary_words, write_transcriptions

PACKAGES = ("asterisk-core-sounds-en=1.6.1-1", "asterisk-core-sounds-en-g722=1.6.1-1")
SOUNDS = "usr/share/asterisk/sounds/en_US_f_Allison"
TRANSCRIPTS = "usr/share/doc/asterisk-core-sounds-en/core-sounds-en.txt.gz"
SAMPLE_RATE = 16000
MIN_WORDS = 5
PAD_S = 0.25  # the prompts are trimmed to the speech: the aligner needs silence around it
DIGITS = ("zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine")


def fetch(work: Path) -> Path:
    """Download and unpack the two Debian packages into `work`; returns the unpacked root."""
    try:
        subprocess.run(["apt-get", "download", *PACKAGES], check=True, cwd=work,
                       stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        root = work / "root"
        for deb in sorted(work.glob("*.deb")):
            subprocess.run(["dpkg-deb", "-x", str(deb), str(root)], check=True, capture_output=True)
    except FileNotFoundError as exc:
        raise SystemExit(f"ivr_speech: {exc.filename} not found; this tool needs a Debian machine "
                         f"(apt-get, dpkg-deb) to fetch {', '.join(PACKAGES)}") from None
    except subprocess.CalledProcessError as exc:
        raise SystemExit(f"ivr_speech: {' '.join(exc.cmd[:2])} failed: "
                         f"{(exc.stderr or b'').decode(errors='replace').strip()[:300]}") from None
    return root


def words_of(text: str) -> str | None:
    """The transcript as pocketsphinx's dictionary spells it (lower case, single digits as words),
    or None for a prompt that is not plain speech or carries a number that cannot be spelt simply."""
    if "[" in text or "]" in text:
        return None
    text = re.sub(r"(?<![\w.])(\d)(?!\w|\.\d)", lambda m: f" {DIGITS[int(m.group(1))]} ", text)
    if re.search(r"\d", text):
        return None
    words = dictionary_words(text)
    return words if len(words.split()) >= MIN_WORDS else None


def prompts(transcripts: str) -> list[tuple[str, str]]:
    """(name, words) of every usable prompt in core-sounds-en.txt, in file order."""
    out = []
    for line in transcripts.splitlines():
        if line.startswith(";") or ":" not in line:
            continue
        name, _, text = line.partition(":")
        words = words_of(text.strip())
        if words and re.fullmatch(r"[\w-]+", name.strip()):
            out.append((name.strip(), words))
    return out


def evenly(items: list, n: int) -> list:
    """n items spread evenly over `items` (all of them when there are no more than n)."""
    if len(items) <= n:
        return list(items)
    return [items[i] for i in np.linspace(0, len(items) - 1, n).round().astype(int)]


def decode_g722(path: Path) -> np.ndarray:
    """Float samples in [-1, 1] of a raw 64 kbit/s G.722 file, at 16 kHz."""
    try:
        import G722
    except ImportError as exc:
        raise RuntimeError("decoding G.722 needs the G722 package: pip install -e '.[train]'") from exc
    pcm = np.asarray(G722.G722(SAMPLE_RATE, 64000).decode(path.read_bytes()), dtype=np.int16)
    return pcm.astype(np.float32) / 32768.0


def write_set(root: Path, out: Path, max_clips: int) -> int:
    texts = gzip.decompress((root / TRANSCRIPTS).read_bytes()).decode("utf-8", errors="replace")
    chosen = evenly([(n, w) for n, w in prompts(texts) if (root / SOUNDS / f"{n}.g722").is_file()],
                    max_clips)
    out.mkdir(parents=True, exist_ok=True)
    for name, words in chosen:
        pad = np.zeros(int(PAD_S * SAMPLE_RATE), np.float32)
        speech = decode_g722(root / SOUNDS / f"{name}.g722")
        sf.write(str(out / f"ivr_{name}.wav"), np.concatenate([pad, speech, pad]), SAMPLE_RATE)
    write_transcriptions(out / "transcription", {f"ivr_{name}": words for name, words in chosen})
    (out / "SOURCE").write_text(
        f"Debian {' '.join(PACKAGES)}: Asterisk core sounds, English, voice Allison Smith, "
        f"(c) Digium, Inc., CC-BY-SA-3.0; G.722 decoded to 16 kHz PCM, {PAD_S} s of silence added on both sides. Evaluation only.\n",
        encoding="utf-8")
    return len(chosen)


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", type=Path, required=True, help="folder for the clips and `transcription`")
    ap.add_argument("--max-clips", type=int, default=60, help="prompts kept, evenly spaced (default 60)")
    args = ap.parse_args(argv)
    if args.max_clips < 1:
        ap.error("--max-clips must be at least 1")
    with tempfile.TemporaryDirectory() as tmp:
        n = write_set(fetch(Path(tmp)), args.out, args.max_clips)
    print(f"{n} clips in {args.out}")


if __name__ == "__main__":
    main()
