"""Add-on preferences: the backend's Python, device, PyTorch build, set-up / repair / remove / check buttons.

Operators read them once, where they start (`values(context)`), and pass plain values down."""
import os
from dataclasses import dataclass

import bpy
from bpy.props import EnumProperty, IntProperty, StringProperty

from . import backend_env, runtime

DEVICE_ITEMS = [
    ("auto", "Auto", "CUDA if the backend's PyTorch sees a GPU, else CPU"),
    ("cpu", "CPU", "Always run on the CPU"),
    ("cuda", "CUDA", "Run on the NVIDIA GPU (fails if none is available)"),
]

TORCH_BUILD_ITEMS = [
    ("AUTO", "Automatic", "A CUDA build when an NVIDIA GPU (driver) is found, else CPU"),
    ("CPU", "CPU", "PyTorch for the CPU only (much smaller download; on macOS it uses the GPU through MPS)"),
] + [(b, label, f"PyTorch built for {label} (NVIDIA GPUs; the driver must support {label})")
     for b, label, _ in backend_env.CUDA_BUILDS]


def resolved_build(choice: str) -> tuple[str, str]:
    """(build, why) for a Torch Build preference value (AUTO resolves to the suggestion)."""
    if choice == "AUTO":
        return backend_env.suggested_build()
    return choice, "chosen in the preferences"


class ScanTalkPreferences(bpy.types.AddonPreferences):
    bl_idname = __package__

    python_path: StringProperty(
        name="Backend Python", subtype="FILE_PATH",
        description="Python interpreter (or venv folder) with the ScanTalk backend installed. "
                    "Empty: the venv made by 'Set up backend', else Blender's own Python if it has the backend")
    device: EnumProperty(name="Device", items=DEVICE_ITEMS, default="auto")
    max_basis: IntProperty(name="Max Basis Keys", default=64, min=1, max=512,
                           description="Compact mode: most shape keys the basis may use")
    torch_build: EnumProperty(
        name="PyTorch Build", items=TORCH_BUILD_ITEMS, default="AUTO",
        description="Which PyTorch Set up backend installs. Changing it takes effect with Repair backend")
    pip_args: StringProperty(
        name="Extra pip Arguments",
        description="Added to every 'pip install' of Set up backend, e.g. a mirror (--index-url URL) or "
                    "local wheels (--no-index --find-links \"C:\\My Wheels\"); quote paths with spaces")

    def draw(self, context):
        layout = self.layout
        col = layout.column()
        col.prop(self, "python_path")
        col.prop(self, "device")
        col.prop(self, "max_basis")

        box = layout.box()
        box.label(text="Backend", icon="CONSOLE")
        venv = runtime.venv_dir()
        task = runtime.setup_task
        running = task is not None and task.state == "RUNNING"
        installed = backend_env.venv_python(venv).exists()
        col = box.column()
        col.prop(self, "torch_build")
        build, why = resolved_build(self.torch_build)
        if self.torch_build == "AUTO":
            col.label(text=f"Automatic: {backend_env.build_label(build)} ({why})", icon="BLANK1")
        col.prop(self, "pip_args")
        box.label(text=f"Installs into: {venv} (shared by every Blender version)")
        if installed:
            m = backend_env.read_marker(venv)
            what = (f"PyTorch {m.get('torch') or '?'} ({backend_env.build_label(m.get('torch_build', '?'))}), "
                    f"Python {m.get('python') or '?'}") if m else "made by hand or by an older version"
            box.label(text=f"Installed: {what}", icon="CHECKMARK")
        row = box.row()
        if running:
            row.progress(factor=task.fraction, text=task.message or "Setting up...")
            row.operator("scantalk.cancel_setup", text="", icon="CANCEL")
        else:
            if installed:
                row.operator("scantalk.repair_backend", icon="FILE_REFRESH")
                row.operator("scantalk.remove_backend", icon="TRASH")
            else:
                row.operator("scantalk.setup_backend", icon="IMPORT")
            row.operator("scantalk.check_backend", icon="CHECKMARK")
        if os.path.isfile(backend_env.setup_log_path(venv)):
            row.operator("scantalk.open_setup_log", text="", icon="TEXT")
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
    torch_build: str = "AUTO"


def values(context=None) -> PrefValues:
    """The preferences as plain values (defaults when the add-on is not registered)."""
    p = get(context)
    if p is None:
        return PrefValues()
    py = bpy.path.abspath(p.python_path) if p.python_path else ""
    return PrefValues(python_path=py, device=p.device, max_basis=int(p.max_basis), pip_args=p.pip_args or "",
                      torch_build=p.torch_build)


def get(context=None):
    context = context or bpy.context
    addon = context.preferences.addons.get(__package__)
    return addon.preferences if addon is not None else None


def register():
    bpy.utils.register_class(ScanTalkPreferences)


def unregister():
    bpy.utils.unregister_class(ScanTalkPreferences)
