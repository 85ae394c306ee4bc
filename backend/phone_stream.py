"""Which phone is sounding, every 10 ms, from a recogniser trained on real speech.

pocketsphinx's US-English acoustic model (BSD-2, inside its PyPI wheel) was trained on hours of
real recordings; a phone loop over it (no words, no dictionary) names the phone of every 10 ms
frame in any language, since lips care about the place of articulation, not the language. A
speech encoder trained only on text-to-speech voices reads real speech much worse than this: on
the LibriVox clips the recogniser's frames fall in the right viseme class 68% of the time against
50% for the bundled version-4 log-mel encoder, though those labels come from pocketsphinx's own
aligner, so 68% flatters it. `LogMelEncoder(phones="pocketsphinx")` reads these frames beside the
log-mel. The candidate trained with it (version 6) was not shipped: docs/experiments.md says why.

A fresh decoder per utterance: one reused across utterances carries adaptation state over, so the
same audio would give different phones depending on what was decoded before it.
"""
from __future__ import annotations

import os

import numpy as np

SAMPLE_RATE = 16000
FRAME_SECONDS = 0.01  # pocketsphinx's frame rate, the same as the log-mel hop
HOP = int(SAMPLE_RATE * FRAME_SECONDS)  # samples per recogniser step
# Silence first, then the 39 CMU phones (pocketsphinx's phone set, stress removed).
PHONES = ("SIL", "AA", "AE", "AH", "AO", "AW", "AY", "B", "CH", "D", "DH", "EH", "ER", "EY", "F", "G",
          "HH", "IH", "IY", "JH", "K", "L", "M", "N", "NG", "OW", "OY", "P", "R", "S", "SH", "T", "TH",
          "UH", "UW", "V", "W", "Y", "Z", "ZH")
_INDEX = {p: i for i, p in enumerate(PHONES)}


def _decoder():
    try:
        import pocketsphinx
    except ImportError as exc:
        raise RuntimeError("this model reads phones from pocketsphinx, which is not installed in the "
                           "backend's Python: pip install 'pocketsphinx>=5.1,<6'") from exc
    model = pocketsphinx.get_model_path()
    return pocketsphinx.Decoder(samprate=SAMPLE_RATE, loglevel="FATAL", lm=None,
                                allphone=os.path.join(model, "en-us-phone.lm.bin"))


def recognise_phones(wav: np.ndarray) -> list[tuple[str, int, int]]:
    """[(phone, first frame, last frame + 1)] in 10 ms frames; fillers and noise are "SIL".
    wav: mono float at 16 kHz, in [-1, 1]."""
    pcm = (np.clip(np.asarray(wav, np.float32), -1.0, 1.0) * 32767).astype(np.int16)
    d = _decoder()
    d.start_utt()
    d.process_raw(pcm.tobytes(), full_utt=True)
    d.end_utt()
    out = []
    for seg in d.seg():
        name = seg.word.upper()
        out.append((name if name in _INDEX else "SIL", int(seg.start_frame), int(seg.end_frame) + 1))
    return out


def phone_frames(wav: np.ndarray, n_steps: int, floor_db: float = -60.0) -> np.ndarray:
    """[len(PHONES), n_steps] one-hot of the recognised phone at each 10 ms step. Silence where
    the recogniser said nothing and where the 25 ms around the step is quieter than `floor_db`
    below full scale: on digital silence the phone loop hallucinates phones."""
    wav = np.asarray(wav, np.float32)
    label = np.zeros(n_steps, np.int64)  # SIL
    for name, a, b in recognise_phones(wav):
        label[max(0, a):max(0, min(n_steps, b))] = _INDEX[name]
    hop, half = HOP, 200
    padded = np.pad(wav, (half, half + hop * n_steps))
    power = np.cumsum(np.concatenate([[0.0], padded.astype(np.float64) ** 2]))
    centre = np.arange(n_steps) * hop + half
    rms = np.sqrt((power[centre + half] - power[centre - half]) / (2 * half))
    label[rms < 10 ** (floor_db / 20)] = 0
    out = np.zeros((len(PHONES), n_steps), np.float32)
    out[label, np.arange(n_steps)] = 1.0
    return out
