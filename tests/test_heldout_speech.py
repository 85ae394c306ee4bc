"""tools/heldout_speech.py: the STM transcript becomes clips and a transcription file that the
articulation report reads (the registry download itself is not exercised here: no network in CI)."""
import importlib.util
from pathlib import Path

import numpy as np
import soundfile as sf

from training.articulation import speech_dir_audios

ROOT = Path(__file__).resolve().parents[1]
_spec = importlib.util.spec_from_file_location("heldout_speech", ROOT / "tools" / "heldout_speech.py")
heldout = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(heldout)

STM = """sample 1 Diane 0.50 1.00 Hello?
;; a comment line without six fields
sample 1 Sheila 1.20 2.90 And I'm Sheila in Texas, originally from Chicago.
"""


def test_utterances_are_spelt_for_the_dictionary():
    assert heldout.utterances(STM) == [
        (0.5, 1.0, "hello"), (1.2, 2.9, "and i'm sheila in texas originally from chicago")]


def test_write_set_round_trips_through_the_articulation_reader(tmp_path):
    sr = 16000
    t = np.arange(3 * sr) / sr
    sf.write(str(tmp_path / "conv.wav"), (0.1 * np.sin(2 * np.pi * 220 * t)).astype(np.float32), sr)
    out = tmp_path / "set"
    assert heldout.write_set(tmp_path / "conv.wav", STM, out) == 2
    audios = speech_dir_audios(out)
    assert [(n, txt) for n, _, txt in audios] == [
        ("pyannote_sample_01", "hello"),
        ("pyannote_sample_02", "and i'm sheila in texas originally from chicago")]
    first, rate = sf.read(str(audios[0][1]))
    assert rate == sr and len(first) == int(1.15 * sr) - int(0.35 * sr)  # padded 0.15 s each side
    last, _ = sf.read(str(audios[1][1]))
    assert len(last) == 3 * sr - int(1.05 * sr)  # the pad stops at the recording's end
