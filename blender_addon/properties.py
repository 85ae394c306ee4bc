"""Settings shown in the ScanTalk panel: the audio per scene (`scene.scantalk`), how a head is
animated per object (`object.scantalk`), so two heads in one scene keep their own."""
import bpy
from bpy.props import (BoolProperty, CollectionProperty, EnumProperty, FloatProperty, IntProperty, PointerProperty,
                       StringProperty)

from .mesh_export import AXES_ITEMS
from .rig import KEYSET_ITEMS
from .writeback import MODE_ITEMS

SOURCE_ITEMS = [
    ("STRIP", "Sound Strip", "Use a sound strip of the scene's sequencer (timing follows the strip)"),
    ("FILE", "Audio File", "Use an audio file; the animation starts at the scene's start frame"),
]

# "//" paths (next to the .blend) are resolved with bpy.path.abspath; Blender 4.5+ warns on every
# such value unless the property says it takes them (4.2 has no such option).
RELATIVE_PATH = {"PATH_SUPPORTS_BLEND_RELATIVE"} if bpy.app.version >= (4, 5, 0) else set()

# Shared by the panel settings and the operator's script properties (same names, same meaning).
DESCRIPTIONS = {
    "strip": "Sound strip to animate from (empty: the only / first unmuted sound strip)",
    "audio_path": "Audio file to animate from instead of a strip (wav, flac, ogg, mp3)",
    "checkpoint": "Model checkpoint: our .pt or an official ScanTalk .pth.tar (empty: the bundled model)",
    "mode": "How the result is stored",
    "strength": "Scale of the predicted motion (1 = as predicted)",
    "smoothing": "Temporal smoothing, Gaussian sigma in frames (0 = off)",
    "max_error_mm": "Compact mode: largest allowed deviation from the exact result, in millimetres "
                    "at the head's real size",
    "axes": "How the head is modelled in its local space",
    "head_scale": "How many times life size this head is in its units (a sculpt made at 2x life size: 2): "
                  "the model animates it at life size and scales the motion with it",
    "rig_keyset": "Rig mode: which of the mesh's shape keys to drive",
    "rig_keys": "Rig mode, List: the shape keys to drive, separated by commas",
    "rig_smooth": "Rig mode: temporal smoothness of the weights (0 = none; a weight step costs this much "
                  "relative to the same weight error in the fit)",
    "companions": "Rig mode: objects that follow the jaw (lower teeth, tongue), comma-separated names",
}


class ScanTalkSettings(bpy.types.PropertyGroup):
    """Per scene: where the audio comes from."""

    source: EnumProperty(name="Audio", items=SOURCE_ITEMS, default="STRIP")
    strip: StringProperty(name="Strip", description=DESCRIPTIONS["strip"])
    audio_path: StringProperty(name="Audio File", description=DESCRIPTIONS["audio_path"], subtype="FILE_PATH",
                               options=RELATIVE_PATH)
    fit_frame_range: BoolProperty(name="Extend Frame Range", default=True,
                                  description="Extend the scene's end frame to the end of the animation "
                                              "(never shortens it)")


OBJECT_SETTINGS = ("checkpoint", "mode", "strength", "smoothing", "max_error_mm", "axes", "head_scale", "rig_keyset",
                   "rig_keys", "rig_smooth")


def _not_the_head(self, obj):
    return obj is not None and obj.type in ("MESH", "CURVE", "SURFACE", "EMPTY")


class ScanTalkCompanion(bpy.types.PropertyGroup):
    """An object that follows the jaw in Rig mode (lower teeth, tongue)."""

    object: PointerProperty(name="Object", type=bpy.types.Object, poll=_not_the_head,
                            description="Follows the jaw: a rigid transform fitted per frame to the jaw and chin")


class ScanTalkObjectSettings(bpy.types.PropertyGroup):
    """Per object: how this head is animated."""

    checkpoint: StringProperty(name="Checkpoint", description=DESCRIPTIONS["checkpoint"], subtype="FILE_PATH",
                               options=RELATIVE_PATH)
    mode: EnumProperty(name="Mode", items=MODE_ITEMS, default="COMPACT", description=DESCRIPTIONS["mode"])
    strength: FloatProperty(name="Strength", default=1.0, min=0.0, soft_max=2.0, max=10.0,
                            description=DESCRIPTIONS["strength"])
    smoothing: FloatProperty(name="Smoothing", default=0.0, min=0.0, soft_max=3.0, max=20.0,
                             description=DESCRIPTIONS["smoothing"])
    max_error_mm: FloatProperty(name="Max Error (mm)", default=0.1, min=0.001, soft_max=1.0, max=100.0,
                                precision=3, description=DESCRIPTIONS["max_error_mm"])
    axes: EnumProperty(name="Axes", items=AXES_ITEMS, default="AUTO", description=DESCRIPTIONS["axes"])
    head_scale: FloatProperty(name="Head Scale", default=1.0, min=0.1, max=10.0, soft_min=0.25, soft_max=4.0,
                              description=DESCRIPTIONS["head_scale"])
    rig_keyset: EnumProperty(name="Keys", items=KEYSET_ITEMS, default="ALL", description=DESCRIPTIONS["rig_keyset"])
    rig_keys: StringProperty(name="Rig Keys", description=DESCRIPTIONS["rig_keys"])
    rig_smooth: FloatProperty(name="Rig Smoothness", default=0.001, min=0.0, soft_max=0.1, max=100.0, precision=4,
                              description=DESCRIPTIONS["rig_smooth"])
    companions: CollectionProperty(type=ScanTalkCompanion, name="Jaw Followers")
    companion_index: IntProperty(default=0)


def register():
    bpy.utils.register_class(ScanTalkSettings)
    bpy.utils.register_class(ScanTalkCompanion)
    bpy.utils.register_class(ScanTalkObjectSettings)
    bpy.types.Scene.scantalk = PointerProperty(type=ScanTalkSettings)
    bpy.types.Object.scantalk = PointerProperty(type=ScanTalkObjectSettings)


def unregister():
    del bpy.types.Object.scantalk
    del bpy.types.Scene.scantalk
    bpy.utils.unregister_class(ScanTalkObjectSettings)
    bpy.utils.unregister_class(ScanTalkCompanion)
    bpy.utils.unregister_class(ScanTalkSettings)
