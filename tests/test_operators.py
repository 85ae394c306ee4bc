"""DiffusionNet operators against closed-form facts and on awkward meshes."""
import numpy as np
import pytest

from backend.diffusionnet.geometry import compute_operators, gradient_operators, tangent_frames
from backend.errors import MeshError
from tests.meshes import grid, icosphere


def test_laplacian_annihilates_constants_and_mass_sums_to_area():
    v, f = icosphere(2, radius=2.0)
    ops = compute_operators(v, f, k_eig=16)
    assert ops.laplacian_kind == "cotan"
    assert np.abs(ops.L @ np.ones(len(v))).max() < 1e-5
    tri = v[f]
    area = 0.5 * np.linalg.norm(np.cross(tri[:, 1] - tri[:, 0], tri[:, 2] - tri[:, 0]), axis=1).sum()
    assert ops.mass.sum() == pytest.approx(area, rel=1e-6)
    assert area == pytest.approx(4 * np.pi * 4, rel=0.02)  # close to the true sphere


def test_sphere_spectrum_multiplicities():
    # Unit sphere: λ = l(l+1) with multiplicity 2l+1 → 0, 2×3, 6×5, 12×7.
    v, f = icosphere(3)
    ops = compute_operators(v, f, k_eig=16)
    ev = ops.evals
    assert ev[0] < 1e-4
    np.testing.assert_allclose(ev[1:4], 2.0, rtol=0.01)
    np.testing.assert_allclose(ev[4:9], 6.0, rtol=0.02)
    np.testing.assert_allclose(ev[9:16], 12.0, rtol=0.03)
    # M-orthonormal eigenvectors
    gram = ops.evecs.T @ (ops.mass[:, None] * ops.evecs)
    np.testing.assert_allclose(gram, np.eye(16), atol=1e-4)


def test_gradient_of_linear_function_is_exact_on_flat_grid():
    v, f = grid(8, 9)
    ops = compute_operators(v, f, k_eig=8)
    fn = 2.0 * v[:, 0] - 3.0 * v[:, 1] + 5.0
    gx, gy = ops.gradX @ fn, ops.gradY @ fn
    # frames on a z=0 plane: X = world x, Y = n × X = ±world y (normal orientation by winding)
    sign_y = np.sign(ops.frames[0, 1, 1])
    np.testing.assert_allclose(gx, 2.0, rtol=1e-4)
    np.testing.assert_allclose(gy, -3.0 * sign_y, rtol=1e-4)


def _reference_gradient_loop(verts, edges, frames, eps=1e-5):
    """The DiffusionNet definition written out per vertex, as a slow oracle."""
    n = len(verts)
    gx, gy = np.zeros((n, n)), np.zeros((n, n))
    for i in range(n):
        out = [j for t, j in zip(*edges) if t == i and j != i]
        E = np.array([[np.dot(verts[j] - verts[i], frames[i, 0]), np.dot(verts[j] - verts[i], frames[i, 1])]
                      for j in out]).reshape(-1, 2)
        rhs = np.zeros((len(out), len(out) + 1))
        rhs[:, 0] = -1
        rhs[np.arange(len(out)), np.arange(len(out)) + 1] = 1
        sol = np.linalg.inv(E.T @ E + eps * np.eye(2)) @ E.T @ rhs
        for c, j in enumerate([i] + out):
            gx[i, j] += sol[0, c]
            gy[i, j] += sol[1, c]
    return gx, gy


def test_vectorised_gradient_equals_per_vertex_definition():
    v, f = icosphere(1)
    v = v * np.array([1.0, 0.7, 1.3])  # not a sphere: frames and weights vary
    ops = compute_operators(v, f, k_eig=8)
    coo = ops.L.tocoo()
    edges = np.stack([coo.row, coo.col])
    frames = tangent_frames(v, f)
    gx, gy = gradient_operators(v, edges, frames)
    rx, ry = _reference_gradient_loop(v, edges, frames)
    np.testing.assert_allclose(gx.toarray(), rx, atol=1e-12)
    np.testing.assert_allclose(gy.toarray(), ry, atol=1e-12)


def _finite(ops):
    return all(np.isfinite(a).all() for a in (ops.mass, ops.evals, ops.evecs, ops.gradX.data, ops.gradY.data))


def test_several_components_give_one_near_zero_eigenvalue_each():
    a, fa = icosphere(2)
    b, fb = icosphere(1, radius=0.3)
    c, fc = icosphere(1, radius=0.3)
    v = np.concatenate([a, b + [2, 0, 0], c + [-2, 0, 0]])
    f = np.concatenate([fa, fb + len(a), fc + len(a) + len(b)])
    ops = compute_operators(v, f, k_eig=10)
    assert _finite(ops)
    assert (ops.evals[:3] < 1e-3).all() and ops.evals[3] > 0.1


def test_open_boundary_duplicate_and_unreferenced_vertices():
    v, f = grid(6, 6)
    v = np.concatenate([v, v[:3], [[50.0, 50.0, 50.0]]])  # duplicates and one stray vertex
    ops = compute_operators(v, f, k_eig=8)
    assert _finite(ops) and ops.num_vertices == len(v)


def test_non_manifold_edge_and_zero_area_faces_use_the_robust_laplacian():
    v, f = grid(5, 5)
    v = np.concatenate([v, [[0.5, 0.5, 1.0], [1.5, 1.5, 0.0]]])
    fin = np.concatenate([f, [[0, 1, 25]], [[0, 6, 26]]])  # edge 0-1 now in 3 faces; collinear face
    ops = compute_operators(v, fin, k_eig=8)
    assert ops.laplacian_kind == "intrinsic"
    assert _finite(ops)


def test_point_cloud():
    v, _ = icosphere(2)
    ops = compute_operators(v, np.zeros((0, 3), int), k_eig=8)
    assert ops.laplacian_kind == "cloud" and _finite(ops)
    np.testing.assert_allclose(ops.evals[1:4], ops.evals[1:4].mean(), rtol=0.1)  # still a sphere


@pytest.mark.parametrize("verts,faces,words", [
    (np.array([[0, 0, 0], [1, 0, 0], [np.nan, 0, 0]]), np.array([[0, 1, 2]]), "NaN"),
    (np.array([[0, 0, 0], [1, 0, 0]]), np.zeros((0, 3), int), "at least 3"),
    (np.array([[0, 0, 0], [1, 0, 0], [0, 1, 0]]), np.array([[0, 1, 7]]), "do not exist"),
])
def test_unusable_input_gets_a_clear_error(verts, faces, words):
    with pytest.raises(MeshError, match=words):
        compute_operators(verts, faces, k_eig=4)


def test_flame_operators_match_reference_facts(flame_mesh):
    v, f = flame_mesh
    ops = compute_operators(v, f, k_eig=128)
    assert ops.evecs.shape == (5023, 128)
    # three components (face + two eyeballs) → three near-zero eigenvalues
    assert (ops.evals[:3] < 0.01).all() and ops.evals[3] > 1.0
