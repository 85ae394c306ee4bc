"""The ScanTalk sidebar panel (3D View > Sidebar > ScanTalk)."""
import bpy

from . import audio_source, runtime, writeback


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

        if obj is None or obj.type != "MESH":
            layout.label(text="Select the head mesh", icon="INFO")
        else:
            layout.label(text=obj.name, icon="MESH_DATA")

        col = layout.column(align=True)
        col.prop(st, "source", expand=True)
        if st.source == "STRIP":
            coll = audio_source.strips_collection_name(scene)
            if coll is None:
                col.label(text="No sequencer strips: add a sound strip", icon="ERROR")
            else:
                col.prop_search(st, "strip", scene.sequence_editor, coll, text="", icon="SOUND")
                if not st.strip:
                    col.label(text="Empty: the first unmuted sound strip")
        else:
            col.prop(st, "audio_path", text="")

        col = layout.column()
        col.prop(st, "checkpoint")
        col.prop(st, "mode")
        if st.mode == "COMPACT":
            col.prop(st, "max_error_mm")
        col.prop(st, "strength")
        col.prop(st, "smoothing")
        col.prop(st, "axes")
        col.prop(st, "fit_frame_range")

        run = runtime.active
        if run is not None:
            box = layout.box()
            job = run.job
            box.progress(factor=job.fraction, text=job.progress_text)
            if job.message and not job.cancelling:
                box.label(text=job.message)
            box.operator("scantalk.cancel", icon="CANCEL")
        else:
            layout.operator("scantalk.animate", icon="PLAY_SOUND")
            if runtime.last_message:
                for line in runtime.last_message.splitlines()[:6]:
                    layout.label(text=line)

        tag = writeback.result_info(obj) if obj is not None else None
        if tag:
            box = layout.box()
            box.label(text=f"{tag['mode'].capitalize()}: frames {tag['frame_start']}-{tag['frame_end']}",
                      icon="SHAPEKEY_DATA")
            box.label(text=f"{len(tag['keys'])} shape keys, {tag.get('audio', '')}")
            row = box.row(align=True)
            row.operator("scantalk.export_fbx", icon="EXPORT")
            row.operator("scantalk.export_gltf", text="glTF")
            box.operator("scantalk.clear", icon="TRASH")


def register():
    bpy.utils.register_class(VIEW3D_PT_scantalk)


def unregister():
    bpy.utils.unregister_class(VIEW3D_PT_scantalk)
