"""Mesh files: formats, polygons, and errors."""
import numpy as np
import pytest

from backend.errors import MeshError
from backend.mesh_io import load_mesh, save_obj, triangulate


def test_fan_triangulation_keeps_vertices():
    tris = triangulate([[0, 1, 2, 3], [3, 4, 5], [5, 6, 7, 8, 9], [1, 2]])
    assert tris.tolist() == [[0, 1, 2], [0, 2, 3], [3, 4, 5], [5, 6, 7], [5, 7, 8], [5, 8, 9]]
    assert triangulate(np.array([[0, 1, 2, 3]])).tolist() == [[0, 1, 2], [0, 2, 3]]


def test_ascii_ply_with_quads_and_extra_properties(tmp_path):
    p = tmp_path / "q.ply"
    p.write_text("ply\nformat ascii 1.0\nelement vertex 5\nproperty float x\nproperty float y\n"
                 "property float z\nproperty uchar red\nelement face 2\nproperty list uchar int vertex_indices\n"
                 "end_header\n0 0 0 1\n1 0 0 1\n1 1 0 1\n0 1 0 1\n2 2 2 1\n4 0 1 2 3\n3 1 4 2\n")
    v, f = load_mesh(p)
    assert v.shape == (5, 3) and f.tolist() == [[0, 1, 2], [0, 2, 3], [1, 4, 2]]


def test_obj_with_uvs_normals_and_negative_indices(tmp_path):
    p = tmp_path / "m.obj"
    p.write_text("v 0 0 0\nv 1 0 0\nv 1 1 0\nv 0 1 0\nvt 0 0\nvn 0 0 1\n"
                 "f 1/1/1 2/1/1 3/1/1 4/1/1\nf -4 -3 -1\n")
    v, f = load_mesh(p)
    assert v.shape == (4, 3) and f.tolist() == [[0, 1, 2], [0, 2, 3], [0, 1, 3]]
    save_obj(tmp_path / "again.obj", v, f)
    v2, f2 = load_mesh(tmp_path / "again.obj")
    assert np.allclose(v, v2) and np.array_equal(f, f2)


def test_npz_mesh(tmp_path):
    np.savez(tmp_path / "m.npz", vertices=np.eye(3), faces=np.array([[0, 1, 2]]))
    v, f = load_mesh(tmp_path / "m.npz")
    assert v.shape == (3, 3) and f.shape == (1, 3)
    np.savez(tmp_path / "bad.npz", verts=np.eye(3))
    with pytest.raises(MeshError, match="'vertices'"):
        load_mesh(tmp_path / "bad.npz")


@pytest.mark.parametrize("name,content,words", [
    ("m.stl", "solid", "unsupported mesh format"),
    ("m.ply", "not a ply", "could not read"),
    ("m.obj", "v 0 0 0\nv nan 0 0\nv 0 1 0\nf 1 2 3\n", "NaN"),
    ("m.obj", "v 0 0 0\nv 1 0 0\nv 0 1 0\nf 1 2 9\n", "outside"),
    ("m.obj", "v 0 0 0\n", "at least 3"),
])
def test_bad_meshes_get_clear_errors(tmp_path, name, content, words):
    (tmp_path / name).write_text(content)
    with pytest.raises(MeshError, match=words):
        load_mesh(tmp_path / name)
    with pytest.raises(MeshError, match="not found"):
        load_mesh(tmp_path / "missing.obj")
