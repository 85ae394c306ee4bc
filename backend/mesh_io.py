"""Read and write triangle meshes (ply, obj, npz) without touching vertex order.

Quads and n-gons are fan-triangulated: the vertices stay exactly as in the file, so offsets
predicted on the triangulated mesh map one-to-one back to the original vertices.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np

from .errors import MeshError


def triangulate(polygons) -> np.ndarray:
    """Fan-triangulate a list of polygons (each a sequence of >= 3 vertex indices)."""
    if isinstance(polygons, np.ndarray) and polygons.ndim == 2:
        polys = polygons.astype(np.int64)
        if polys.shape[1] == 3:
            return polys
        if polys.shape[1] < 3:
            raise MeshError(f"faces have {polys.shape[1]} corners; a face needs at least 3")
        k = polys.shape[1]
        return np.concatenate([polys[:, [0, i, i + 1]] for i in range(1, k - 1)], axis=0)
    tris = []
    for poly in polygons:
        poly = list(poly)
        if len(poly) < 3:
            continue  # a stray edge or point element carries no surface
        for i in range(1, len(poly) - 1):
            tris.append((poly[0], poly[i], poly[i + 1]))
    return np.asarray(tris, dtype=np.int64).reshape(-1, 3)


def _read_ply(path: Path):
    from plyfile import PlyData

    ply = PlyData.read(str(path))
    if "vertex" not in ply:
        raise MeshError(f"{path.name}: PLY file has no vertex element")
    v = ply["vertex"]
    verts = np.stack([np.asarray(v[c], dtype=np.float64) for c in ("x", "y", "z")], axis=1)
    polys = []
    if "face" in ply:
        f = ply["face"]
        name = "vertex_indices" if "vertex_indices" in f.data.dtype.names else "vertex_index"
        polys = f[name]
    return verts, triangulate(list(polys)) if len(polys) else np.zeros((0, 3), np.int64)


def _read_obj(path: Path):
    verts, polys = [], []
    with open(path, "r", encoding="utf-8", errors="replace") as fh:
        for line in fh:
            if line.startswith("v "):
                verts.append([float(x) for x in line.split()[1:4]])
            elif line.startswith("f "):
                idx = []
                for tok in line.split()[1:]:
                    i = int(tok.split("/")[0])
                    idx.append(i - 1 if i > 0 else len(verts) + i)  # OBJ is 1-based; <0 is relative
                polys.append(idx)
    return np.asarray(verts, dtype=np.float64).reshape(-1, 3), triangulate(polys)


def _read_npz(path: Path):
    with np.load(path, allow_pickle=False) as data:
        if "vertices" not in data:
            raise MeshError(f"{path.name}: npz mesh needs an array 'vertices' [V,3] (and 'faces' [F,3])")
        verts = np.asarray(data["vertices"], dtype=np.float64)
        faces = np.asarray(data["faces"]) if "faces" in data else np.zeros((0, 3), np.int64)
    return verts, triangulate(faces) if faces.size else np.zeros((0, 3), np.int64)


_READERS = {".ply": _read_ply, ".obj": _read_obj, ".npz": _read_npz}


def load_mesh(path) -> tuple[np.ndarray, np.ndarray]:
    """Return (vertices float64 [V,3], faces int64 [F,3]) of a ply, obj or npz file."""
    path = Path(path)
    if not path.is_file():
        raise MeshError(f"mesh file not found: {path}")
    reader = _READERS.get(path.suffix.lower())
    if reader is None:
        raise MeshError(f"{path.name}: unsupported mesh format; use .ply, .obj or .npz")
    try:
        verts, faces = reader(path)
    except MeshError:
        raise
    except Exception as exc:  # a parser's own error says little to a user
        raise MeshError(f"could not read mesh {path.name}: {exc}") from exc
    validate_mesh(verts, faces, name=path.name)
    return verts, faces


def validate_mesh(verts: np.ndarray, faces: np.ndarray, name: str = "mesh") -> None:
    """Reject what no operator can work on, with a message that says what to fix."""
    if verts.ndim != 2 or verts.shape[1] != 3:
        raise MeshError(f"{name}: vertices must be [V,3], got {list(verts.shape)}")
    if len(verts) < 3:
        raise MeshError(f"{name}: has {len(verts)} vertices; a face mesh needs at least 3")
    if not np.isfinite(verts).all():
        bad = int((~np.isfinite(verts)).any(axis=1).sum())
        raise MeshError(f"{name}: {bad} vertices have NaN or infinite coordinates; fix or delete them")
    if faces.size:
        if faces.min() < 0 or faces.max() >= len(verts):
            raise MeshError(f"{name}: faces refer to vertex indices outside 0..{len(verts) - 1}")


def save_mesh_npz(path, verts, faces) -> None:
    np.savez(path, vertices=np.asarray(verts, np.float64), faces=np.asarray(faces, np.int64))


def save_obj(path, verts, faces) -> None:
    with open(path, "w", encoding="utf-8") as fh:
        for v in verts:
            fh.write(f"v {v[0]:.8g} {v[1]:.8g} {v[2]:.8g}\n")
        for f in np.asarray(faces) + 1:
            fh.write(f"f {f[0]} {f[1]} {f[2]}\n")
