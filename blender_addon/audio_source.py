"""Resolve what the backend should listen to: a sound strip of the sequencer or an audio file.

Timing: a sound strip's content starts at `frame_start` (its untrimmed start); the audible part is
[frame_final_start, frame_final_end). Audio heard at scene frame f is at
t = (f - frame_start) / fps + sound_offset seconds into the file, fps = render.fps / render.fps_base.
So we ask the backend for `start` = (frame_final_start - frame_start) / fps + sound_offset and
`duration` = (frame_final_end - frame_final_start) / fps at the scene's fps, and its output frame i
belongs on scene frame frame_final_start + i.

Blender 5.0+: the Video Sequencer can edit a scene of its own (`workspace.sequencer_scene`); its
sound strips are found too (the scene's own strips first). Their frames are taken as this scene's
frames (the two timelines are assumed aligned); a different frame rate is converted and warned about.

API differences: 4.2 has `sequence_editor.sequences_all` and `SoundSequence`; 4.5+ `strips_all`
and `SoundStrip` (5.0 only those). Everything else used here is the same.
"""
from __future__ import annotations

import os
import tempfile
from dataclasses import dataclass, field
from pathlib import Path


class AudioSourceError(ValueError):
    pass


@dataclass
class AudioSpec:
    path: str  # the file the backend reads
    start: float  # seconds into the file
    duration: float | None  # seconds; None = to the end of the file
    frame_start: int  # scene frame that shows the backend's frame 0
    fps: float
    label: str  # for messages
    temp: bool = False  # path is our temporary copy of a packed sound
    warnings: list = field(default_factory=list)

    def request_fields(self) -> dict:
        return {"audio": self.path, "start": float(self.start), "duration": self.duration, "fps": float(self.fps)}


def scene_fps(scene) -> float:
    return float(scene.render.fps) / float(scene.render.fps_base or 1.0)


def strips_all(scene) -> list:
    se = getattr(scene, "sequence_editor", None)
    if se is None:
        return []
    coll = getattr(se, "strips_all", None)
    if coll is None:
        coll = getattr(se, "sequences_all", None)  # Blender 4.2
    return list(coll) if coll is not None else []


def sequencer_scene(context):
    """The workspace's sequencer scene (Blender 5.0+), or None."""
    ws = getattr(context, "workspace", None)
    return getattr(ws, "sequencer_scene", None) if ws is not None else None


def strip_scene(scene, seq_scene=None):
    """The scene whose sound strips are used: `scene` when it has any, else the sequencer scene
    when that one has them; `scene` otherwise."""
    if sound_strips(scene) or seq_scene is None or seq_scene == scene:
        return scene
    return seq_scene if sound_strips(seq_scene) else scene


def strips_collection_name(scene) -> str | None:
    """Name of the sequence editor's collection of all strips (for UILayout.prop_search)."""
    se = getattr(scene, "sequence_editor", None)
    if se is None:
        return None
    return "strips_all" if hasattr(se, "strips_all") else "sequences_all"


def is_sound(strip) -> bool:
    return getattr(strip, "type", "") == "SOUND"


def is_muted(scene, strip) -> bool:
    if getattr(strip, "mute", False):
        return True
    se = getattr(scene, "sequence_editor", None)
    channels = getattr(se, "channels", None)
    try:
        return bool(channels is not None and channels[strip.channel].mute)
    except (IndexError, KeyError, TypeError, AttributeError):
        return False


def sound_strips(scene) -> list:
    return [s for s in strips_all(scene) if is_sound(s)]


def choose_strip(scene, name: str | None = None):
    """The strip named `name`, else the only / first unmuted sound strip (by start, channel)."""
    sounds = sound_strips(scene)
    if name:
        for s in sounds:
            if s.name == name:
                return s, ""
        others = [s.name for s in strips_all(scene) if s.name == name]
        if others:
            raise AudioSourceError(f"Strip '{name}' is not a sound strip; pick a sound strip or an audio file.")
        names = ", ".join(repr(s.name) for s in sounds) or "none"
        raise AudioSourceError(f"No sound strip named '{name}' in scene '{scene.name}' (sound strips: {names}).")
    if not sounds:
        raise AudioSourceError(f"Scene '{scene.name}' has no sound strip. Add one in the Video Sequencer "
                               "(Add > Sound) or choose an audio file in the ScanTalk panel.")
    live = [s for s in sounds if not is_muted(scene, s)]
    if not live:
        raise AudioSourceError("All sound strips are muted. Unmute one or pick it by name in the ScanTalk panel.")
    live.sort(key=lambda s: (strip_frames(s)[0], s.channel, s.name))
    note = ""
    if len(live) > 1:
        note = (f"used strip '{live[0].name}', the first of {len(live)} unmuted sound strips "
                "(pick another in the ScanTalk panel)")
    return live[0], note


def _abspath(path: str, library=None) -> str:
    try:
        import bpy

        return os.path.normpath(bpy.path.abspath(path, library=library))
    except ImportError:  # outside Blender (tests of the timing logic)
        return os.path.normpath(os.path.abspath(path))


def _sound_seconds(path: str) -> float | None:
    """Length of an audio file if Blender's audio module can tell (4.5+), else None."""
    try:
        import aud

        snd = aud.Sound(path)
        return float(snd.length) / float(snd.specs[0])
    except Exception:
        return None


def sound_file(sound, temp_dir: str | None = None) -> tuple[str, bool]:
    """(path, is_temp) of a Sound datablock's audio: packed sounds are written to a temp file."""
    if sound is None:
        raise AudioSourceError("The sound strip has no sound data.")
    packed = getattr(sound, "packed_file", None)
    if packed is not None and packed.size:
        ext = Path(sound.filepath or "").suffix or ".wav"
        fd, tmp = tempfile.mkstemp(prefix="scantalk_sound_", suffix=ext, dir=temp_dir)
        with os.fdopen(fd, "wb") as fh:
            fh.write(bytes(packed.data))
        return tmp, True
    if not sound.filepath:
        raise AudioSourceError(f"Sound '{sound.name}' has no file path.")
    path = _abspath(sound.filepath, getattr(sound, "library", None))
    if not os.path.isfile(path):
        raise AudioSourceError(f"The audio file of sound '{sound.name}' is missing: {path}. "
                               "Fix the path in the strip's Sound properties, or pack the sound.")
    return path, False


def strip_frames(strip) -> tuple[float, float, float]:
    """(left handle, right handle (exclusive), content start) of a strip, in scene frames.
    Blender 5.2 renamed frame_final_start/frame_final_end/frame_start to left_handle/right_handle/
    content_start and deprecates the old names (removed in 6.0); older versions have only those."""
    if hasattr(strip, "left_handle"):
        return strip.left_handle, strip.right_handle, strip.content_start
    return strip.frame_final_start, strip.frame_final_end, strip.frame_start


def strip_timing(strip, fps: float) -> tuple[int, float, float]:
    """(first scene frame, start seconds into the sound, duration seconds) of a strip's audible part.
    start is negative when the strip's sound offset makes it begin before its audio."""
    left, right, content = strip_frames(strip)
    first = int(round(left))
    last = int(round(right))  # exclusive
    start = (left - content) / fps + float(getattr(strip, "sound_offset", 0.0) or 0.0)
    # start < 0 (a negative sound offset): the backend pads that much silence before the audio
    return first, start, max(0, last - first) / fps


def resolve_strip(scene, strip, temp_dir: str | None = None, target_fps: float | None = None) -> AudioSpec:
    """`scene` holds the strip; keys are made at `target_fps` (the animated scene's, default the same)."""
    fps = scene_fps(scene)
    path, temp = sound_file(strip.sound, temp_dir)
    first, start, duration = strip_timing(strip, fps)
    warnings = []
    if target_fps is not None and abs(target_fps - fps) > 1e-6:
        warnings.append(f"strip '{strip.name}' is in scene '{scene.name}' at {fps:g} fps; its start frame is "
                        f"converted to this scene's {target_fps:g} fps")
        first = int(round(first * target_fps / fps))
        fps = target_fps
    if duration <= 0:
        raise AudioSourceError(f"Strip '{strip.name}' is trimmed to nothing.")
    length = _sound_seconds(path)
    if length is not None:
        if start >= length:
            raise AudioSourceError(f"Strip '{strip.name}' starts {start:.2f} s into a {length:.2f} s sound: "
                                   "nothing is left to animate.")
        if start + duration > length + 1e-6:
            duration = length - start  # the strip runs past the end of the sound (e.g. fps changed)
    speed = float(getattr(strip, "speed_factor", 1.0) or 1.0)
    if abs(speed - 1.0) > 1e-6 or len(getattr(strip, "retiming_keys", []) or []) > 2:
        warnings.append(f"strip '{strip.name}' is retimed; ScanTalk animates it at normal speed")
    return AudioSpec(path=path, start=start, duration=duration, frame_start=first, fps=fps,
                     label=f"strip '{strip.name}'", temp=temp, warnings=warnings)


def resolve_file(scene, path: str, frame_start: int | None = None) -> AudioSpec:
    p = _abspath(path)
    if not os.path.isfile(p):
        raise AudioSourceError(f"Audio file not found: {p}")
    return AudioSpec(path=p, start=0.0, duration=None,
                     frame_start=int(scene.frame_start if frame_start is None else frame_start),
                     fps=scene_fps(scene), label=f"file '{os.path.basename(p)}'")


def resolve(scene, strip_name: str = "", audio_path: str = "", temp_dir: str | None = None,
            seq_scene=None) -> AudioSpec:
    """An explicit audio file wins over strips; otherwise the named or default sound strip, of
    `scene` or else of the workspace's sequencer scene `seq_scene` (Blender 5.0+)."""
    if audio_path:
        return resolve_file(scene, audio_path)
    owner = strip_scene(scene, seq_scene)
    if strip_name and owner is scene and seq_scene is not None and seq_scene != scene:
        if not any(s.name == strip_name for s in sound_strips(scene)) and \
                any(s.name == strip_name for s in sound_strips(seq_scene)):
            owner = seq_scene
    strip, note = choose_strip(owner, strip_name or None)
    spec = resolve_strip(owner, strip, temp_dir, target_fps=scene_fps(scene))
    if note:
        spec.warnings.insert(0, note)
    return spec
