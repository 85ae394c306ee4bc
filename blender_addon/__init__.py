"""ScanTalk for Blender: animate a head mesh from a sequencer sound strip.

The heavy lifting (PyTorch, the ScanTalk model) runs in a separate backend process; this add-on
never imports torch. Modules: worker_client (subprocess + JSON lines), job (modal logic),
backend_env (finding / setting up the backend's Python), audio_source, mesh_export, writeback,
pipeline (prepare a request, apply a result), operators, ui, prefs, properties, runtime.

bpy is imported lazily so that the plain-Python modules can be imported and tested without it.
"""

_modules = ("properties", "prefs", "operators", "ui")


def register():
    import importlib

    for name in _modules:
        importlib.import_module(f".{name}", __package__).register()


def unregister():
    import importlib

    for name in reversed(_modules):
        mod = importlib.import_module(f".{name}", __package__)
        try:
            mod.unregister()
        except Exception as exc:  # keep unregistering the rest
            print(f"ScanTalk: unregister {name}: {exc}")
    from . import runtime

    runtime.shutdown()
