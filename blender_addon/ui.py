"""The ScanTalk sidebar panel (3D View > Sidebar > ScanTalk)."""
import os

import bpy

from . import audio_source, prefs, runtime, writeback


class VIEW3D_PT_scantalk(bpy.types.Panel):
    bl_space_type = "VIEW_3D"
    bl_region_type = "UI"
    bl_category = "ScanTalk"
    bl_label = "ScanTalk"

    def draw(self, context):
        layout = self.layout
        scene = context.scene
        st = scene.scantalk
        obj = context.active_object

        ok, backend_text = runtime.backend_status(prefs.values(context).python_path)
        if ok:
            layout.label(text="Backend ready", icon="CHECKMARK")
        else:
            box = layout.box()
            for i, line in enumerate(_wrap(backend_text)):
                box.label(text=line, icon="ERROR" if i == 0 else "BLANK1")

        col = layout.column(align=True)
        col.prop(st, "source", expand=True)
        if st.source == "STRIP":
            owner = audio_source.strip_scene(scene, audio_source.sequencer_scene(context))
            coll = audio_source.strips_collection_name(owner)
            if coll is None:
                col.label(text="No sequencer strips: add a sound strip", icon="ERROR")
            else:
                col.prop_search(st, "strip", owner.sequence_editor, coll, text="", icon="SOUND")
                if owner != scene:
                    col.label(text=f"Strips of the sequencer scene '{owner.name}'")
                if not st.strip:
                    col.label(text="Empty: the first unmuted sound strip")
        else:
            col.prop(st, "audio_path", text="")
        layout.prop(st, "fit_frame_range")

        if obj is None or obj.type != "MESH":
            layout.label(text="Select the head mesh", icon="INFO")
        else:
            ob = obj.scantalk  # per object: two heads keep their own
            col = layout.column()
            col.label(text=obj.name, icon="MESH_DATA")
            col.prop(ob, "checkpoint")
            col.prop(ob, "mode")
            if ob.mode == "EXACT":
                level, text = _exact_cost(context, obj)
                for i, line in enumerate(_wrap(text, lines=10) if text else ()):
                    col.label(text=line, icon=("ERROR" if level == "ERROR" else "INFO") if i == 0 else "BLANK1")
            if ob.mode == "COMPACT":
                col.prop(ob, "max_error_mm")
            elif ob.mode == "RIG":
                _draw_rig_settings(col, obj, ob)
            col.prop(ob, "strength")
            col.prop(ob, "smoothing")
            col.prop(ob, "axes")
            col.prop(ob, "head_scale")

        run = runtime.active
        if run is not None:
            box = layout.box()
            box.progress(factor=run.fraction, text=run.progress_text)
            for text in run.prep.notices:
                for i, line in enumerate(_wrap(text, lines=10)):
                    box.label(text=line, icon="INFO" if i == 0 else "BLANK1")
            if run.job.message and not run.cancelling and run.phase == "backend":
                box.label(text=run.job.message)
            box.operator("scantalk.cancel", icon="CANCEL")
            box.label(text="Esc over this panel cancels too")
        else:
            layout.operator("scantalk.animate", icon="PLAY_SOUND")  # greyed out with the reason as tooltip
            if runtime.last_message:
                for line in runtime.last_message.splitlines()[:6]:
                    layout.label(text=line)

        tag = writeback.result_info(obj) if obj is not None else None
        if tag:
            box = layout.box()
            box.label(text=f"{tag['mode'].capitalize()}: frames {tag['frame_start']}-{tag['frame_end']}",
                      icon="SHAPEKEY_DATA")
            if tag.get("mode") == "RIG":
                box.label(text=f"{len(tag.get('driven', []))} of your shape keys keyed, {tag.get('audio', '')}")
                fit = tag.get("fit") or {}
                if fit.get("lips_mean_mm") is not None:
                    box.label(text=f"Fit lips: {fit['lips_mean_mm']:.2f} mm mean, {fit['lips_max_mm']:.2f} mm max")
                    box.label(text=f"Fit face: {fit['face_mean_mm']:.2f} mm mean, {fit['face_max_mm']:.2f} mm max")
                for c in tag.get("companions", []):
                    box.label(text=f"'{c['object']}' follows the jaw", icon="LINKED")
            else:
                box.label(text=f"{len(tag['keys'])} shape keys, {tag.get('audio', '')}")
            if tag.get("track"):
                box.label(text=f"NLA track '{tag['track']}' of the shape keys: move the strip to re-time")
            row = box.row(align=True)
            row.operator("scantalk.export_fbx", icon="EXPORT")
            row.operator("scantalk.export_gltf", text="glTF")
            if tag.get("mode") == "RIG":
                row = box.row(align=True)
                row.operator("scantalk.export_rig_csv", text="Live Link CSV")
                row.operator("scantalk.export_rig_json", text="JSON")
            box.operator("scantalk.clear", icon="TRASH")


def _draw_rig_settings(col, obj, ob):
    col.prop(ob, "rig_keyset")
    if ob.rig_keyset == "LIST":
        col.prop(ob, "rig_keys", text="")
    col.prop(ob, "rig_smooth")
    box = col.box()
    row = box.row()
    row.label(text="Jaw Followers", icon="LINKED")
    row.operator("scantalk.companion_add", text="", icon="ADD")
    for i, c in enumerate(ob.companions):
        r = box.row(align=True)
        r.prop(c, "object", text="")
        r.operator("scantalk.companion_remove", text="", icon="X").index = i
    if not len(ob.companions):
        box.label(text="Lower teeth, tongue: + adds the selected objects")


_length_cache: dict = {}


def _exact_cost(context, obj) -> tuple[str, str]:
    """What Exact would cost for the chosen strip or file on this mesh (estimate.exact_check);
    ("", "") when the clip cannot be told without reading audio (lengths of files are cached)."""
    from . import estimate

    st = context.scene.scantalk
    try:
        if st.source == "FILE":
            if not st.audio_path:
                return "", ""
            path = bpy.path.abspath(st.audio_path)
            key = (path, os.path.getmtime(path) if os.path.isfile(path) else None)
            if key not in _length_cache:
                _length_cache.clear()
                _length_cache[key] = audio_source._sound_seconds(path) or estimate.wav_seconds(path)
            seconds = _length_cache[key]
        else:
            owner = audio_source.strip_scene(context.scene, audio_source.sequencer_scene(context))
            strip, _ = audio_source.choose_strip(owner, st.strip or None)
            seconds = audio_source.strip_timing(strip, audio_source.scene_fps(owner))[2]
    except (audio_source.AudioSourceError, OSError):
        return "", ""
    if not seconds:
        return "", ""
    frames = int(seconds * audio_source.scene_fps(context.scene)) + 1
    return estimate.exact_check(frames, len(obj.data.vertices), estimate.physical_memory())


def _wrap(text: str, width: int = 48, lines: int = 6) -> list[str]:
    import textwrap

    return [ln for para in text.splitlines() for ln in textwrap.wrap(para, width)][:lines]


def register():
    bpy.utils.register_class(VIEW3D_PT_scantalk)


def unregister():
    bpy.utils.unregister_class(VIEW3D_PT_scantalk)
