"""Read the base mesh (not evaluated: modifiers are ignored), triangulate it keeping vertex
indices, map it from the object's local axes into the model's frame and write the npz the backend
reads (`vertices` [V,3], `faces` [F,3]; y up, face looking along +z).

The map is a pure rotation R (model = R @ local), so offsets come back into local space with
R.T and no scale or centre is involved here: the backend's `normalize="auto"` finds units and
centre and returns offsets in the units it was given.
"""
from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

AXES_ITEMS = [
    ("AUTO", "Auto", "Choose from the object's orientation in the scene (world Z is up)"),
    ("Z_UP", "Z up, faces -Y", "Blender's convention: modelled Z-up, the face looking along -Y"),
    ("Y_UP", "Y up, faces +Z", "FLAME/OBJ convention: modelled Y-up, the face looking along +Z "
                               "(files imported without axis conversion)"),
]

# model = R @ local
_R = {
    "Z_UP": np.array([[1.0, 0.0, 0.0], [0.0, 0.0, 1.0], [0.0, -1.0, 0.0]]),
    "Y_UP": np.eye(3),
}

LARGE_MESH = 150_000


class MeshExportError(ValueError):
    pass


def rotation_for(axes: str) -> np.ndarray:
    try:
        return _R[axes].copy()
    except KeyError:
        raise MeshExportError(f"unknown axes '{axes}': use AUTO, Z_UP or Y_UP") from None


def detect_axes(matrix_world, verts: np.ndarray | None = None) -> tuple[str, str]:
    """Which convention the mesh data uses: Z_UP (Blender) or Y_UP (FLAME/OBJ files imported
    without conversion). Returns (axes, note); note is empty unless worth telling the user.

    X is the left-right axis in both, so the question is whether local Y or local Z is up. A head
    (or a face) is taller than it is deep, so the longer of the two bounding-box extents is up;
    when they are within 10% the object's orientation in the scene decides (world Z is up)."""
    world = _world_up_axes(matrix_world)
    if verts is not None and len(verts):
        ext = np.ptp(np.asarray(verts, np.float64), axis=0)
        ratio = ext[1] / max(ext[2], 1e-12)
        geo = "Y_UP" if ratio > 1.1 else "Z_UP" if ratio < 1 / 1.1 else None
        if geo is not None:
            note = ""
            if world[0] in ("Z_UP", "Y_UP") and world[0] != geo and not world[1]:
                note = (f"the head's shape says it is modelled {geo.replace('_', ' ').lower()}, although it "
                        "lies on its side in the scene; set Axes in the ScanTalk panel if the result looks wrong")
            return geo, note
    return world


def _world_up_axes(matrix_world) -> tuple[str, str]:
    m = np.array([[matrix_world[i][j] for j in range(3)] for i in range(3)], dtype=np.float64)
    try:
        up = np.linalg.solve(m, np.array([0.0, 0.0, 1.0]))
    except np.linalg.LinAlgError:
        return "Z_UP", "the object's scale is zero on some axis; assumed Z up"
    up /= max(np.linalg.norm(up), 1e-12)
    i = int(np.argmax(np.abs(up)))
    if i == 2 and up[2] > 0:
        return "Z_UP", ""
    if i == 1 and up[1] > 0:
        return "Y_UP", ""
    axis = "-+"[int(up[i] > 0)] + "XYZ"[i]
    return "Z_UP", (f"the object's local {axis} axis points up in the scene; assumed the head is modelled "
                    "Z-up facing -Y (set Axes in the ScanTalk panel if the result looks wrong)")


def read_base_mesh(mesh) -> tuple[np.ndarray, np.ndarray, dict]:
    """(vertices float64 [V,3] in local space, triangles int64 [F,3], stats) of the BASE mesh.

    With shape keys the neutral is the reference key (Basis), which is what our keys are relative
    to; the user's other keys are not mixed in."""
    n = len(mesh.vertices)
    co = np.empty(n * 3, dtype=np.float32)
    key = mesh.shape_keys
    if key is not None and key.reference_key is not None and len(key.reference_key.data) == n:
        _points(key.reference_key).foreach_get("co", co)
    else:
        mesh.vertices.foreach_get("co", co)
    verts = co.reshape(n, 3).astype(np.float64)

    mesh.calc_loop_triangles()
    nt = len(mesh.loop_triangles)
    tris = np.empty(nt * 3, dtype=np.int32)
    if nt:
        mesh.loop_triangles.foreach_get("vertices", tris)
    tris = tris.reshape(nt, 3).astype(np.int64)

    npoly = len(mesh.polygons)
    totals = np.empty(npoly, dtype=np.int32)
    if npoly:
        mesh.polygons.foreach_get("loop_total", totals)
    stats = {
        "vertices": n,
        "polygons": npoly,
        "triangles": nt,
        "quads": int((totals == 4).sum()),
        "ngons": int((totals > 4).sum()),
        "loose_vertices": int(n - np.unique(tris).size) if nt else n,
    }
    return verts, tris, stats


def _points(key_block):
    # ShapeKey.points (4.1+) is the fast foreach path; .data is the generic one.
    return getattr(key_block, "points", None) or key_block.data


@dataclass
class ExportInfo:
    path: str
    axes: str
    rotation: np.ndarray  # model = R @ local
    neutral_local: np.ndarray  # float64 [V,3], the base coordinates the offsets apply to
    stats: dict
    warnings: list = field(default_factory=list)

    def offsets_to_local(self, offsets_model: np.ndarray) -> np.ndarray:
        """[T,V,3] offsets in the model frame -> object local space (row vectors: o @ R)."""
        return np.asarray(offsets_model, dtype=np.float32) @ self.rotation.astype(np.float32)


def export_mesh(obj, path: str, axes: str = "AUTO") -> ExportInfo:
    if obj is None or getattr(obj, "type", None) != "MESH":
        kind = "nothing" if obj is None else f"a {obj.type.lower()}"
        raise MeshExportError(f"ScanTalk animates a mesh object; the active object is {kind}. "
                              "Select the head mesh and try again.")
    mesh = obj.data
    if mesh.shape_keys is not None and not mesh.shape_keys.use_relative:
        raise MeshExportError(f"'{obj.name}' uses absolute shape keys; ScanTalk needs relative shape keys "
                              "(Shape Keys panel: enable Relative).")
    verts, tris, stats = read_base_mesh(mesh)
    if stats["vertices"] < 3 or stats["triangles"] == 0:
        raise MeshExportError(f"'{obj.name}' has no faces; ScanTalk needs a surface mesh of a head.")
    warnings = []
    note = ""
    if axes == "AUTO":
        axes, note = detect_axes(obj.matrix_world, verts)
    if note:
        warnings.append(note)
    if stats["vertices"] > LARGE_MESH:
        warnings.append(f"'{obj.name}' has {stats['vertices']:,} vertices: this will be slow and use a lot "
                        "of memory; a decimated copy animates faster")
    R = rotation_for(axes)
    model = verts @ R.T
    np.savez(path, vertices=model, faces=tris)
    return ExportInfo(path=str(path), axes=axes, rotation=R, neutral_local=verts, stats=stats, warnings=warnings)
