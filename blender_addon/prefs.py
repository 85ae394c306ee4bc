"""Add-on preferences: the backend's Python, device, set-up and check buttons.

Operators read them once, where they start (`values(context)`), and pass plain values down."""
from dataclasses import dataclass

import bpy
from bpy.props import EnumProperty, IntProperty, StringProperty

from . import runtime

DEVICE_ITEMS = [
    ("auto", "Auto", "CUDA if the backend's PyTorch sees a GPU, else CPU"),
    ("cpu", "CPU", "Always run on the CPU"),
    ("cuda", "CUDA", "Run on the NVIDIA GPU (fails if none is available)"),
]


class ScanTalkPreferences(bpy.types.AddonPreferences):
    bl_idname = __package__

    python_path: StringProperty(
        name="Backend Python", subtype="FILE_PATH",
        description="Python interpreter (or venv folder) with the ScanTalk backend installed. "
                    "Empty: the venv made by 'Set up backend', else Blender's own Python if it has the backend")
    device: EnumProperty(name="Device", items=DEVICE_ITEMS, default="auto")
    max_basis: IntProperty(name="Max Basis Keys", default=64, min=1, max=512,
                           description="Compact mode: most shape keys the basis may use")
    pip_args: StringProperty(
        name="Extra pip Arguments",
        description="Added to 'pip install' by Set up backend, e.g. "
                    "--index-url https://download.pytorch.org/whl/cpu for a CPU-only PyTorch")

    def draw(self, context):
        layout = self.layout
        col = layout.column()
        col.prop(self, "python_path")
        col.prop(self, "device")
        col.prop(self, "max_basis")
        col.prop(self, "pip_args")

        box = layout.box()
        box.label(text="Backend", icon="CONSOLE")
        try:
            box.label(text=f"Set up backend installs into: {runtime.venv_dir()}")
        except Exception:
            pass
        task = runtime.setup_task
        row = box.row()
        if task is not None and task.state == "RUNNING":
            row.progress(factor=task.fraction, text=task.message or "Setting up...")
            row.operator("scantalk.cancel_setup", text="", icon="CANCEL")
        else:
            row.operator("scantalk.setup_backend", icon="IMPORT")
            row.operator("scantalk.check_backend", icon="CHECKMARK")
        if task is not None and task.state in ("ERROR", "DONE", "CANCELLED"):
            icon = "ERROR" if task.state == "ERROR" else "INFO"
            for i, line in enumerate((task.message or "").splitlines()[:8]):
                box.label(text=line, icon=icon if i == 0 else "BLANK1")
        for i, line in enumerate(runtime.doctor_lines[:16]):
            box.label(text=line, icon="INFO" if i == 0 else "BLANK1")


@dataclass(frozen=True)
class PrefValues:
    python_path: str = ""  # absolute, or empty
    device: str = "auto"
    max_basis: int = 64
    pip_args: str = ""


def values(context=None) -> PrefValues:
    """The preferences as plain values (defaults when the add-on is not registered)."""
    p = get(context)
    if p is None:
        return PrefValues()
    py = bpy.path.abspath(p.python_path) if p.python_path else ""
    return PrefValues(python_path=py, device=p.device, max_basis=int(p.max_basis), pip_args=p.pip_args or "")


def get(context=None):
    context = context or bpy.context
    addon = context.preferences.addons.get(__package__)
    return addon.preferences if addon is not None else None


def register():
    bpy.utils.register_class(ScanTalkPreferences)


def unregister():
    bpy.utils.unregister_class(ScanTalkPreferences)
