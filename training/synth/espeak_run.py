"""Speak one sentence with libespeak-ng (ctypes) and report its phoneme events. Standard library only.

Run as a separate process for every sentence: libespeak-ng keeps hidden state between utterances
(pitch flutter phase, noise generators), so only a fresh process gives the same audio for the same
arguments. Usage (argument lists, no shell):

    python espeak_run.py synth VOICE RATE PITCH RANGE TEXT
        stdout: one JSON line {"sample_rate", "events": [[sample, phoneme], ...]} then raw int16 PCM
    python espeak_run.py voices NAME [NAME ...]
        stdout: JSON list of the names libespeak-ng accepts
"""
import ctypes
import ctypes.util
import json
import sys

_AUDIO_OUTPUT_SYNCHRONOUS = 2
_INIT_PHONEME_EVENTS = 0x0001
_EV_LIST_TERMINATED, _EV_PHONEME = 0, 7
_P_RATE, _P_PITCH, _P_RANGE = 1, 3, 4
_CHARS_UTF8 = 1


class _EventId(ctypes.Union):
    _fields_ = [("number", ctypes.c_int), ("name", ctypes.c_char_p), ("string", ctypes.c_char * 8)]


class _Event(ctypes.Structure):  # espeak_EVENT from speak_lib.h
    _fields_ = [("type", ctypes.c_int), ("unique_identifier", ctypes.c_uint),
                ("text_position", ctypes.c_int), ("length", ctypes.c_int),
                ("audio_position", ctypes.c_int), ("sample", ctypes.c_int),
                ("user_data", ctypes.c_void_p), ("id", _EventId)]


_CALLBACK = ctypes.CFUNCTYPE(ctypes.c_int, ctypes.POINTER(ctypes.c_short), ctypes.c_int,
                             ctypes.POINTER(_Event))


def _load():
    name = ctypes.util.find_library("espeak-ng") or "libespeak-ng.so.1"
    lib = ctypes.CDLL(name)
    lib.espeak_Initialize.restype = ctypes.c_int
    lib.espeak_SetVoiceByName.argtypes = [ctypes.c_char_p]
    sr = lib.espeak_Initialize(_AUDIO_OUTPUT_SYNCHRONOUS, 0, None, _INIT_PHONEME_EVENTS)
    if sr <= 0:
        raise RuntimeError("espeak_Initialize failed (espeak-ng-data missing?)")
    return lib, sr


def synth(voice, rate, pitch, prange, text):
    lib, sr = _load()
    pcm = bytearray()
    events = []

    def callback(wav, n, ev):
        if n > 0 and wav:
            pcm.extend(ctypes.string_at(wav, 2 * n))
        i = 0
        while ev[i].type != _EV_LIST_TERMINATED:
            if ev[i].type == _EV_PHONEME:
                name = bytes(ev[i].id.string).split(b"\0")[0].decode("ascii", "replace")
                events.append([int(ev[i].sample), int(ev[i].audio_position), name])
            i += 1
        return 0

    cb = _CALLBACK(callback)
    lib.espeak_SetSynthCallback(cb)
    if lib.espeak_SetVoiceByName(voice.encode()) != 0:
        raise RuntimeError(f"espeak-ng has no voice '{voice}'")
    for p, v in ((_P_RATE, rate), (_P_PITCH, pitch), (_P_RANGE, prange)):
        lib.espeak_SetParameter(p, int(v), 0)
    data = text.encode("utf-8") + b"\0"
    err = lib.espeak_Synth(data, len(data), 0, 0, 0, _CHARS_UTF8, None, None)
    lib.espeak_Synchronize()
    if err != 0:
        raise RuntimeError(f"espeak_Synth failed with code {err}")
    return sr, events, bytes(pcm)


def voices(names):
    lib, _ = _load()
    return [n for n in names if lib.espeak_SetVoiceByName(n.encode()) == 0]


def main(argv):
    if len(argv) >= 7 and argv[1] == "synth":
        try:
            sr, events, pcm = synth(argv[2], int(argv[3]), int(argv[4]), int(argv[5]), argv[6])
        except (OSError, RuntimeError) as exc:
            print(str(exc), file=sys.stderr)
            return 1
        out = sys.stdout.buffer
        out.write(json.dumps({"sample_rate": sr, "events": events}).encode() + b"\n")
        out.write(pcm)
        out.flush()
        return 0
    if len(argv) >= 2 and argv[1] == "voices":
        try:
            print(json.dumps(voices(argv[2:])))
        except (OSError, RuntimeError) as exc:
            print(str(exc), file=sys.stderr)
            return 1
        return 0
    print(__doc__, file=sys.stderr)
    return 2


if __name__ == "__main__":
    sys.exit(main(sys.argv))
