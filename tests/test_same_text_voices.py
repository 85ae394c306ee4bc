"""tools/same_text_voices.py: a transcript voiced again keeps its phones in step with its audio, and
the schwa is taken out of the open vowels under either spelling."""
import importlib.util
import shutil
from pathlib import Path

import numpy as np
import pytest

from training.articulation import OPEN_VOWELS, normalise_phone

ROOT = Path(__file__).resolve().parents[1]
_spec = importlib.util.spec_from_file_location("same_text_voices", ROOT / "tools" / "same_text_voices.py")
tool = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(tool)


def test_without_ah_drops_only_ah_from_the_open_vowels():
    phones = [("AH", 0.0, 0.1), ("ah1", 0.1, 0.2), ("AA", 0.2, 0.3), ("ax", 0.3, 0.4), ("M", 0.4, 0.5)]
    out = tool.without_ah(phones)
    assert [p for p, _, _ in out] == ["AX", "AX", "AA", "ax", "M"]
    assert [(a, b) for _, a, b in out] == [(a, b) for _, a, b in phones]
    assert [normalise_phone(p) in OPEN_VOWELS for p, _, _ in out] == [False, False, True, False, False]


def test_voiced_clip_has_its_pauses_and_shifted_phones():
    if shutil.which("flite") is None:
        pytest.skip("flite not installed (Debian package flite)")
    from training.synth.tts import Voice

    samples, phones = tool.voiced("a man may be a bore", Voice("flite", "slt"))
    sr = 16000
    assert samples.dtype == np.float32 and abs(np.abs(samples).max() - 0.5) < 1e-3
    pause = int(tool.PAUSE_S * sr)
    assert not samples[:pause].any() and not samples[-pause:].any()
    assert phones[0][1] == pytest.approx(tool.PAUSE_S) and phones[-1][2] <= len(samples) / sr
    assert {"m", "b"} <= {p for p, _, _ in phones}


@pytest.mark.parametrize("spec", ["flite", "nope:x", "flite:a:b"])
def test_a_voice_that_is_not_engine_colon_name_is_refused(spec, capsys):
    with pytest.raises(SystemExit) as exc:
        tool.main(["--voice", spec])
    assert exc.value.code == 2 and "ENGINE:NAME" in capsys.readouterr().err
