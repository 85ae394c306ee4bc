"""What an Exact result would cost, said before the job starts (no bpy).

Exact writes one shape key per frame: frames x vertices x 12 bytes (three float32 per vertex)
that Blender keeps in memory, copies once more for undo, and saves into the .blend. A 10-minute
clip at 30 fps on a 50k-vertex head is 18,000 keys, 10.8 GB of key data. Compact stores the same
motion within Max Error in at most Max Basis Keys keys.
"""
from __future__ import annotations

import os
import shutil

BYTES_PER_VERTEX = 12
# Blender holds the key data and, after the operator, an undo copy of it
MEMORY_FACTOR = 2.0
# beyond this share of the computer's memory Exact is refused (the rest is Blender's and the OS's)
MEMORY_SHARE = 0.6
BLEND_WARN_BYTES = 1 << 30
# blender-facts.md: 1,800 animated per-frame keys scrub at ~180 ms per frame
KEYS_WARN = 1800


def physical_memory() -> int | None:
    """This computer's RAM in bytes (None if unknown)."""
    try:
        if os.name == "nt":
            import ctypes

            class _Status(ctypes.Structure):
                _fields_ = [("dwLength", ctypes.c_ulong), ("dwMemoryLoad", ctypes.c_ulong),
                            ("ullTotalPhys", ctypes.c_ulonglong), ("ullAvailPhys", ctypes.c_ulonglong),
                            ("ullTotalPageFile", ctypes.c_ulonglong), ("ullAvailPageFile", ctypes.c_ulonglong),
                            ("ullTotalVirtual", ctypes.c_ulonglong), ("ullAvailVirtual", ctypes.c_ulonglong),
                            ("ullAvailExtendedVirtual", ctypes.c_ulonglong)]

            st = _Status()
            st.dwLength = ctypes.sizeof(_Status)
            if ctypes.windll.kernel32.GlobalMemoryStatusEx(ctypes.byref(st)):
                return int(st.ullTotalPhys)
            return None
        return int(os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES"))
    except (AttributeError, ValueError, OSError):
        return None


def _size(n: float) -> str:
    for unit, scale in (("GB", 1e9), ("MB", 1e6)):
        if n >= scale:
            return f"{n / scale:.1f} {unit}"
    return f"{n / 1e3:.0f} kB"


def exact_check(frames: int, vertices: int, memory: int | None = None) -> tuple[str, str]:
    """("", "") when Exact is reasonable; ("WARNING", text) when it makes a large .blend or slow
    scrubbing; ("ERROR", text) when it would not fit in memory. Texts offer Compact."""
    frames, vertices = int(frames), int(vertices)
    data = frames * vertices * BYTES_PER_VERTEX
    need = data * MEMORY_FACTOR
    what = f"Exact mode writes {frames:,} shape keys of {vertices:,} vertices ({_size(data)} of shape-key data"
    compact = "Compact mode stores the same motion within Max Error in a few dozen keys"
    if memory and need > MEMORY_SHARE * memory:
        return "ERROR", (f"{what}, about {_size(need)} of memory with Blender's undo copy): more than this computer's "
                         f"{_size(memory)} can hold. Use Compact: it stores the same motion within Max Error in a "
                         f"few dozen keys (or animate a shorter part).")
    if data > BLEND_WARN_BYTES or frames > KEYS_WARN:
        slow = f"; over {KEYS_WARN:,} keys also slow down scrubbing" if frames > KEYS_WARN else ""
        return "WARNING", f"{what}): the .blend grows by about {_size(data)}{slow}. {compact}."
    return "", ""


def disk_check(frames: int, vertices: int, folder: str, free: int | None = None) -> str:
    """"" when the backend's result file (every frame's offsets, whatever the mode: Compact and Rig
    are fitted from it) fits on the disk of `folder`; otherwise the error to show."""
    need = int(frames) * int(vertices) * BYTES_PER_VERTEX
    if free is None:
        try:
            free = shutil.disk_usage(folder).free
        except OSError:
            return ""
    if need * 1.05 + (64 << 20) <= free:
        return ""
    return (f"The backend writes the whole result ({_size(need)}: {int(frames):,} frames of {int(vertices):,} "
            f"vertices) to {folder} before Blender reads it, and that disk has only {_size(free)} free. "
            f"Free some space there, set TMPDIR (TEMP on Windows) to a folder on a larger disk before "
            f"starting Blender, or animate a shorter part of the strip.")


def wav_seconds(path: str) -> float | None:
    """Length of a PCM .wav from its header (other formats: None)."""
    import wave

    try:
        with wave.open(path) as w:
            return w.getnframes() / float(w.getframerate())
    except (OSError, EOFError, wave.Error):
        return None
