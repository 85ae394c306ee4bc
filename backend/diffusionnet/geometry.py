"""DiffusionNet operators of a triangle mesh or point cloud, computed in float64 with numpy/scipy.

The definitions follow the DiffusionNet reference (Sharp et al. 2022) exactly, including its
epsilons, because released ScanTalk weights were trained on those operators: see
docs in ../shared/docs/diffusionnet-facts.md. What differs is speed: the gradient operator is
built with vectorised numpy instead of a per-vertex Python loop (same matrices), and nothing is
ever densified.
"""
from __future__ import annotations

import logging
from dataclasses import dataclass

import numpy as np
import scipy.sparse as sp
import scipy.sparse.linalg as sla

from ..errors import MeshError

log = logging.getLogger(__name__)

EIG_EPS = 1e-8
GRAD_EPS = 1e-5
NORMAL_EPS = 1e-6
CLOUD_NEIGHBOURS = 30


@dataclass
class Operators:
    """Everything a DiffusionNet needs about one shape (numpy, float32 except where noted)."""

    frames: np.ndarray  # [V, 3, 3] tangent X, tangent Y, normal (float64)
    mass: np.ndarray  # [V] lumped mass
    L: sp.csr_matrix  # [V, V] cotangent Laplacian (positive semi-definite)
    evals: np.ndarray  # [K]
    evecs: np.ndarray  # [V, K]
    gradX: sp.csr_matrix  # [V, V] real part of the complex gradient
    gradY: sp.csr_matrix  # [V, V] imaginary part
    laplacian_kind: str = "cotan"  # "cotan", "intrinsic" (robust fallback) or "cloud"

    @property
    def num_vertices(self) -> int:
        return self.mass.shape[0]


def _normalize(x: np.ndarray, eps: float = NORMAL_EPS) -> np.ndarray:
    # The reference divides by (norm + eps) everywhere; on millimetre-sized faces this turns face
    # normals into area weights, and released weights depend on that (see facts doc).
    return x / (np.linalg.norm(x, axis=-1, keepdims=True) + eps)


def _mesh_vertex_normals(verts: np.ndarray, faces: np.ndarray) -> np.ndarray:
    tri = verts[faces]
    face_n = _normalize(np.cross(tri[:, 1] - tri[:, 0], tri[:, 2] - tri[:, 0]))
    normals = np.zeros_like(verts)
    for i in range(3):
        np.add.at(normals, faces[:, i], face_n)
    with np.errstate(invalid="ignore", divide="ignore"):
        return normals / np.linalg.norm(normals, axis=-1, keepdims=True)


def _cloud_normals(verts: np.ndarray, k: int = CLOUD_NEIGHBOURS) -> np.ndarray:
    from scipy.spatial import cKDTree

    k = min(k, len(verts))
    _, nbr = cKDTree(verts).query(verts, k=k)
    pts = verts[nbr] - verts[nbr].mean(axis=1, keepdims=True)
    _, _, vt = np.linalg.svd(pts, full_matrices=False)
    return vt[:, -1, :]  # direction of least variance


def vertex_normals(verts: np.ndarray, faces: np.ndarray) -> np.ndarray:
    """Unit vertex normals; NaN ones (isolated or degenerate vertices) are fixed deterministically."""
    if faces.size == 0:
        return _cloud_normals(verts)
    normals = _mesh_vertex_normals(verts, faces)
    bad = np.isnan(normals).any(axis=1, keepdims=True)
    if bad.any():
        scale = np.linalg.norm(verts.max(0) - verts.min(0)) * 1e-4
        wiggle = (np.random.RandomState(seed=777).rand(*verts.shape) - 0.5) * scale
        normals = _mesh_vertex_normals(verts + bad * wiggle, faces)
    bad = np.isnan(normals).any(axis=1)
    if bad.any():  # unreferenced vertices: any fixed direction will do
        normals[bad] = (np.random.RandomState(seed=777).rand(*verts.shape) - 0.5)[bad]
        normals[bad] /= np.linalg.norm(normals[bad], axis=-1, keepdims=True)
    return normals


def tangent_frames(verts: np.ndarray, faces: np.ndarray, normals: np.ndarray | None = None) -> np.ndarray:
    """[V, 3, 3] frames (X, Y, N); X is world x projected to the tangent plane (world y near x)."""
    n = vertex_normals(verts, faces) if normals is None else normals
    cand = np.where((np.abs(n[:, 0]) < 0.9)[:, None], np.array([1.0, 0, 0]), np.array([0, 1.0, 0]))
    bx = _normalize(cand - n * np.sum(cand * n, axis=-1, keepdims=True))
    by = np.cross(n, bx)
    return np.stack([bx, by, n], axis=1)


def gradient_operators(verts: np.ndarray, edges: np.ndarray, frames: np.ndarray, eps: float = GRAD_EPS):
    """Least-squares tangent gradient from outgoing edges, as (gradX, gradY) sparse matrices.

    `edges` [2, E] are (tail, tip) pairs; self loops are ignored. For vertex i with edge vectors
    e_j in its tangent frame, grad f(i) = (EᵀE + eps I)⁻¹ Σ_j e_j (f_j - f_i): the vectorised
    form of the reference's per-vertex loop.
    """
    tail, tip = edges
    keep = tail != tip
    tail, tip = tail[keep], tip[keep]
    n = len(verts)
    vec = verts[tip] - verts[tail]
    e2 = np.stack([np.sum(vec * frames[tail, 0], -1), np.sum(vec * frames[tail, 1], -1)], -1)
    ete = np.zeros((n, 2, 2))
    np.add.at(ete, tail, e2[:, :, None] * e2[:, None, :])
    ete += eps * np.eye(2)
    inv = np.linalg.inv(ete)
    w = np.einsum("eij,ej->ei", inv[tail], e2)  # coefficient of f_tip for each edge
    self_w = np.zeros((n, 2))
    np.add.at(self_w, tail, -w)
    rows = np.concatenate([tail, np.arange(n)])
    cols = np.concatenate([tip, np.arange(n)])
    gx = sp.csr_matrix((np.concatenate([w[:, 0], self_w[:, 0]]), (rows, cols)), shape=(n, n))
    gy = sp.csr_matrix((np.concatenate([w[:, 1], self_w[:, 1]]), (rows, cols)), shape=(n, n))
    return gx, gy


def _cotan_laplacian(verts, faces):
    import potpourri3d as pp3d

    L = pp3d.cotan_laplacian(verts, faces, denom_eps=1e-10)
    mass = pp3d.vertex_areas(verts, faces)
    mass = mass + 1e-8 * np.mean(mass)
    return sp.csr_matrix(L), mass


def _intrinsic_laplacian(verts, faces):
    import robust_laplacian

    L, M = robust_laplacian.mesh_laplacian(verts, faces, mollify_factor=1e-5)
    mass = M.diagonal()
    return sp.csr_matrix(L), mass + 1e-8 * np.mean(mass)


def _cloud_laplacian(verts):
    import robust_laplacian

    L, M = robust_laplacian.point_cloud_laplacian(verts, mollify_factor=1e-5, n_neighbors=CLOUD_NEIGHBOURS)
    return sp.csr_matrix(L), M.diagonal().copy()


def _cholesky_shift_invert(A: sp.spmatrix, M: sp.spmatrix, sigma: float):
    """(A - σM)⁻¹ as a LinearOperator backed by a sparse Cholesky factor (cholespy).

    Measured here at k=128: 1.35x faster eigensolve than scipy's SuperLU at 100k vertices,
    1.6x at 25k, same eigenvalues to 1e-7. Returns None where cholespy is missing."""
    try:
        from cholespy import CholeskySolverD, MatrixType
    except ImportError:
        return None
    n = A.shape[0]
    S = (A - sigma * M).tocsr()
    solver = CholeskySolverD(n, S.indptr.astype(np.int32), S.indices.astype(np.int32),
                             S.data.astype(np.float64), MatrixType.CSR)

    def solve(b):
        b = np.ascontiguousarray(b, dtype=np.float64).reshape(n, -1)
        x = np.zeros_like(b)
        solver.solve(b, x)
        if not np.isfinite(x).all():  # not positive definite: let the caller fall back
            raise RuntimeError("Cholesky solve produced non-finite values")
        return x.reshape(-1) if x.shape[1] == 1 else x

    return sla.LinearOperator((n, n), matvec=solve, dtype=np.float64)


def eigenpairs(L: sp.spmatrix, mass: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """k smallest pairs of (L + eps I) φ = λ M φ by shift-invert, with the reference's retries."""
    n = L.shape[0]
    k = min(k, n - 2)  # ARPACK needs k < n - 1
    if k <= 0:
        return np.zeros(0), np.zeros((n, 0))
    eye = sp.identity(n, format="csc")
    A = (L + EIG_EPS * eye).tocsc()
    M = sp.diags(mass, format="csc")
    v0 = np.ones(n) / np.sqrt(n)  # a fixed start makes results (and eigenvector signs) reproducible
    use_cholesky = n >= 2000  # below that, factorisation cost is noise either way
    for attempt in range(5):
        try:
            opinv = _cholesky_shift_invert(A, M, EIG_EPS) if use_cholesky else None
            evals, evecs = sla.eigsh(A, k=k, M=M, sigma=EIG_EPS, OPinv=opinv, v0=v0)
            order = np.argsort(evals)
            return np.clip(evals[order], 0.0, None), evecs[:, order]
        except (RuntimeError, ValueError, sla.ArpackError, sla.ArpackNoConvergence) as exc:
            if use_cholesky:
                use_cholesky = False  # retry the same problem with SuperLU before regularising
                continue
            log.warning("eigensolve failed (%s); regularising and retrying", exc)
            A = A + EIG_EPS * 10**attempt * eye
    raise MeshError("the eigen-decomposition of this mesh failed; check for degenerate geometry")


def triangle_quality_ok(verts: np.ndarray, faces: np.ndarray) -> bool:
    """False where cotangent weights are meaningless: non-manifold edges or degenerate faces."""
    if faces.size == 0:
        return False
    tri = verts[faces]
    area2 = np.linalg.norm(np.cross(tri[:, 1] - tri[:, 0], tri[:, 2] - tri[:, 0]), axis=-1)
    scale = np.mean(np.linalg.norm(tri[:, 1] - tri[:, 0], axis=-1)) ** 2
    if (area2 < 1e-12 * max(scale, 1e-300)).any():
        return False
    e = np.sort(np.concatenate([faces[:, [0, 1]], faces[:, [1, 2]], faces[:, [2, 0]]]), axis=1)
    _, counts = np.unique(e, axis=0, return_counts=True)
    return bool((counts <= 2).all())


def compute_operators(verts, faces, k_eig: int = 128, grad_eps: float = GRAD_EPS) -> Operators:
    """All operators of one shape. Meshes with faces use the cotangent Laplacian when the mesh is
    manifold and well shaped, robust-laplacian's intrinsic one otherwise; no faces = point cloud."""
    verts = np.asarray(verts, dtype=np.float64)
    faces = np.asarray(faces, dtype=np.int64).reshape(-1, 3)
    if verts.ndim != 2 or verts.shape[1] != 3 or len(verts) < 3:
        raise MeshError(f"need at least 3 points with xyz coordinates, got shape {list(verts.shape)}")
    if not np.isfinite(verts).all():
        raise MeshError("the mesh has NaN or infinite vertex coordinates; fix or delete those vertices")
    if faces.size and (faces.min() < 0 or faces.max() >= len(verts)):
        raise MeshError("faces refer to vertices that do not exist")
    if faces.size:
        faces = faces[(faces[:, 0] != faces[:, 1]) & (faces[:, 1] != faces[:, 2]) & (faces[:, 2] != faces[:, 0])]

    frames = tangent_frames(verts, faces)
    if faces.size == 0:
        kind = "cloud"
        L, mass = _cloud_laplacian(verts)
    elif triangle_quality_ok(verts, faces):
        kind = "cotan"
        L, mass = _cotan_laplacian(verts, faces)
    else:
        kind = "intrinsic"
        L, mass = _intrinsic_laplacian(verts, faces)
    if not (np.isfinite(L.data).all() and np.isfinite(mass).all()):
        kind = "intrinsic"
        L, mass = _intrinsic_laplacian(verts, faces)

    try:
        evals, evecs = eigenpairs(L, mass, k_eig)
    except MeshError:
        if kind != "cotan":
            raise
        log.warning("cotangent Laplacian failed; using robust-laplacian's intrinsic Laplacian")
        kind = "intrinsic"
        L, mass = _intrinsic_laplacian(verts, faces)
        evals, evecs = eigenpairs(L, mass, k_eig)

    if kind == "cloud":
        from scipy.spatial import cKDTree

        _, nbr = cKDTree(verts).query(verts, k=min(CLOUD_NEIGHBOURS, len(verts)))
        edges = np.stack([np.repeat(np.arange(len(verts)), nbr.shape[1]), nbr.reshape(-1)])
    else:
        coo = L.tocoo()
        edges = np.stack([coo.row, coo.col])
    gx, gy = gradient_operators(verts, edges, frames, grad_eps)
    return Operators(
        frames=frames,
        mass=mass.astype(np.float32),
        L=L.astype(np.float32),
        evals=evals.astype(np.float32),
        evecs=evecs.astype(np.float32),
        gradX=gx.astype(np.float32),
        gradY=gy.astype(np.float32),
        laplacian_kind=kind,
    )
