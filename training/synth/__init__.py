"""Synthetic talking-head data: ICT FaceKit identities in several topologies, speaking English
(Harvard sentences, espeak-ng and flite) and 27 other languages (espeak-ng). ``python -m training.synth --out DIR`` (see README.md)."""
from .generate import GENERATOR_VERSION, generate, n_frames_for
from .visemes import EXPRESSIONS, VISEMES, blink_track, phone_to_viseme, viseme_track

__all__ = ["generate", "viseme_track", "blink_track", "phone_to_viseme", "n_frames_for",
           "EXPRESSIONS", "VISEMES", "GENERATOR_VERSION"]
