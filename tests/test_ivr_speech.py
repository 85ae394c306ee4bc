"""tools/ivr_speech.py: prompt transcripts become dictionary spellings, G.722 decodes to the speech
that was encoded, and a set round-trips through the articulation report's reader (the Debian
download itself is not exercised here)."""
import gzip
import importlib.util
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

from training.articulation import speech_dir_audios

ROOT = Path(__file__).resolve().parents[1]
SPEECH = ROOT.parent / "shared" / "data" / "speech"
_spec = importlib.util.spec_from_file_location("ivr_speech", ROOT / "tools" / "ivr_speech.py")
ivr = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(ivr)

TRANSCRIPTS = """; Core Asterisk Sounds in English

agent-pass: Please enter your password followed by the pound key.
beep: [this is a simple beep tone]
call-fwd-no-ans: Call-Forward on No Answer, press 1.
conf-adminmenu-162: Please press 1 to mute, or 8 to exit.
vm-msgs: You have 12 new messages in your mailbox.
auth-thankyou: Thank you.
"""


def test_prompts_are_spelt_for_the_dictionary():
    assert ivr.prompts(TRANSCRIPTS) == [
        ("agent-pass", "please enter your password followed by the pound key"),
        ("call-fwd-no-ans", "call forward on no answer press one"),
        ("conf-adminmenu-162", "please press one to mute or eight to exit"),
    ]  # the beep is not speech, "12" is not spelt simply, "thank you" is too short


def test_evenly_keeps_the_ends_and_never_repeats():
    assert ivr.evenly(list(range(10)), 4) == [0, 3, 6, 9]
    assert ivr.evenly([1, 2], 5) == [1, 2]


def _g722(samples: np.ndarray) -> bytes:
    import G722

    pcm = (np.clip(samples, -1, 1) * 32767).astype(np.int16)
    return bytes(G722.G722(16000, 64000).encode(pcm))


def test_g722_decodes_the_speech_that_was_encoded(tmp_path):
    speech, sr = sf.read(str(sorted(SPEECH.glob("*.wav"))[0]), dtype="float32")
    assert sr == 16000
    (tmp_path / "x.g722").write_bytes(_g722(speech))
    back = ivr.decode_g722(tmp_path / "x.g722")
    assert back.dtype == np.float32 and len(back) == len(speech)
    # the codec has a short delay; at the best lag the waveforms agree closely
    best = max(np.corrcoef(speech[:len(speech) - k], back[k:])[0, 1] for k in range(40))
    assert best > 0.95


def test_write_set_round_trips_through_the_articulation_reader(tmp_path):
    root = tmp_path / "root"
    (root / ivr.SOUNDS).mkdir(parents=True)
    (root / ivr.TRANSCRIPTS).parent.mkdir(parents=True)
    (root / ivr.TRANSCRIPTS).write_bytes(gzip.compress(TRANSCRIPTS.encode()))
    tone = 0.2 * np.sin(2 * np.pi * 300 * np.arange(8000) / 16000)
    for name in ("agent-pass", "call-fwd-no-ans", "beep"):  # conf-adminmenu-162 has no sound file
        (root / ivr.SOUNDS / f"{name}.g722").write_bytes(_g722(tone))
    out = tmp_path / "set"
    assert ivr.write_set(root, out, max_clips=60) == 2
    audios = speech_dir_audios(out)
    assert [(n, t) for n, _, t in audios] == [
        ("ivr_agent-pass", "please enter your password followed by the pound key"),
        ("ivr_call-fwd-no-ans", "call forward on no answer press one")]
    wav, rate = sf.read(str(audios[0][1]))
    pad = int(ivr.PAD_S * 16000)
    assert rate == 16000 and len(wav) == 8000 + 2 * pad
    assert not wav[:pad].any() and not wav[-pad:].any() and np.abs(wav[pad:-pad]).max() > 0.1
    assert "CC-BY-SA-3.0" in (out / "SOURCE").read_text()
    with pytest.raises(SystemExit):
        ivr.main(["--out", str(out), "--max-clips", "0"])
