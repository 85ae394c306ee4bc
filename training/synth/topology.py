"""ICT FaceKit identities, topology families, motion transfer and masks.

Every subject gets its own mesh. Native families cut the ICT mesh (its face regions are vertex
prefixes: every face of the face region uses only indices < face_vertex_count). Derived families
(quadric decimation, isotropic remeshing) are built on a MOUTH-OPEN copy of the identity and tied
to the ICT vertices by closest-point barycentric coordinates computed on that same open copy, so no
triangle bridges the lips. The result is a sparse linear map B (new vertices x ICT vertices):
template = B @ ict_template and every expression shape = B @ ict_shape.
"""
from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from scipy import sparse
from scipy.spatial import cKDTree

from .visemes import EXPRESSIONS, MOUTH_EXPRESSIONS

ICT_FILE = "ict_facekit_face_head_neck.npz"
N_IDENTITY_MODES = 30

# family -> short description (written to meta.json)
FAMILIES = {
    "ict_full": "ICT FaceKit face + head + neck, native topology (11248 vertices)",
    "ict_face": "ICT face region (face_vertex_count prefix, 9409 vertices)",
    "ict_narrow": "ICT narrow face region (narrow_face_vertex_count prefix, 6706 vertices)",
    "remeshed": "isotropic remesh (gpytoolbox remesh_botsch) of the full/face/narrow region, 2k-9k vertices",
    "decimated": "quadric decimation (fast-simplification) of the full/face/narrow region, 2k-8k vertices",
}
NATIVE = {"ict_full": "full", "ict_face": "face", "ict_narrow": "narrow"}
FAMILY_REQUIRES = {"decimated": "fast_simplification", "remeshed": "gpytoolbox"}


def available_families() -> list[str]:
    """Families whose optional Python package (fast-simplification, gpytoolbox) is installed."""
    import importlib.util

    return [f for f in FAMILIES if f not in FAMILY_REQUIRES or importlib.util.find_spec(FAMILY_REQUIRES[f])]


def default_ict_path() -> Path:
    env = os.environ.get("SCANTALK_ICT_NPZ")
    if env:
        return Path(env)
    repo = Path(__file__).resolve().parents[2]
    return repo.parent / "shared" / "data" / "ict_facekit" / ICT_FILE


@dataclass
class ICT:
    neutral: np.ndarray          # float64 [V, 3] metres
    faces: np.ndarray            # int64 [F, 3]
    expr: np.ndarray             # float64 [K, V, 3] metres, K = len(EXPRESSIONS)
    bias: dict                   # name -> float64 [V, 3] (smile, brows: baked into templates)
    open_shape: np.ndarray       # float64 [V, 3] mouth-open offset (0.6 jawOpen + 0.4 mouthLowerDown)
    identity: np.ndarray         # float64 [M, V, 3] metres
    landmarks68: np.ndarray
    region_count: dict           # "full"/"face"/"narrow" -> vertex count
    lips: np.ndarray = field(default=None)   # ICT vertex indices
    upper: np.ndarray = field(default=None)

    def region_faces(self, region: str) -> np.ndarray:
        n = self.region_count[region]
        return self.faces[(self.faces < n).all(axis=1)]


def load_ict(path=None, n_modes: int = N_IDENTITY_MODES) -> ICT:
    path = Path(path) if path else default_ict_path()
    if not path.is_file():
        raise FileNotFoundError(
            f"ICT FaceKit file not found: {path}. Pass --ict PATH (or set SCANTALK_ICT_NPZ) to "
            f"{ICT_FILE} (MIT, from the team's ../shared/data/ict_facekit/).")
    with np.load(path, allow_pickle=False) as d:
        names = [str(n) for n in d["expression_names"]]
        deltas = d["expression_deltas"]
        idx = {n: i for i, n in enumerate(names)}

        def shape(n):
            return deltas[idx[n]].astype(np.float64) * 0.01

        expr = np.stack([shape(n) for n in EXPRESSIONS])
        bias = {"smile": shape("mouthSmile_L") + shape("mouthSmile_R"),
                "brows": shape("browInnerUp_L") + shape("browInnerUp_R")}
        open_shape = 0.6 * shape("jawOpen") + 0.4 * (shape("mouthLowerDown_L") + shape("mouthLowerDown_R"))
        nv = d["neutral"].shape[0]
        ict = ICT(
            neutral=d["neutral"].astype(np.float64) * 0.01,
            faces=d["faces"].astype(np.int64),
            expr=expr, bias=bias, open_shape=open_shape,
            identity=d["identity_deltas"][:n_modes].astype(np.float64) * 0.01,
            landmarks68=d["landmarks68"].astype(np.int64),
            region_count={"full": nv, "face": int(d["face_vertex_count"]),
                          "narrow": int(d["narrow_face_vertex_count"])},
        )
    ict.lips, ict.upper = ict_masks(ict)
    return ict


# --------------------------------------------------------------------------- masks on ICT

def _dist_to_polygon_2d(pts: np.ndarray, poly: np.ndarray) -> np.ndarray:
    """Distance of 2-D points to a closed polygon's area (0 inside)."""
    a, b = poly, np.roll(poly, -1, axis=0)
    ab = b - a
    t = np.clip(((pts[:, None] - a[None]) * ab[None]).sum(-1) / (ab * ab).sum(-1)[None], 0, 1)
    d = np.linalg.norm(pts[:, None] - (a[None] + t[..., None] * ab[None]), axis=-1).min(axis=1)
    # even-odd rule for inside
    x, y = pts[:, 0:1], pts[:, 1:2]
    ya, yb, xa, xb = a[None, :, 1], b[None, :, 1], a[None, :, 0], b[None, :, 0]
    cross = ((ya > y) != (yb > y)) & (x < (xb - xa) * (y - ya) / np.where(yb == ya, 1e-12, yb - ya) + xa)
    inside = cross.sum(axis=1) % 2 == 1
    return np.where(inside, 0.0, d)


def ict_masks(ict: ICT, lip_margin: float = 0.007, still: float = 5e-4):
    """(lips, upper) vertex indices of the ICT mesh.

    lips: front-facing vertices within ``lip_margin`` (x-y plane) of the outer lip contour
    (landmarks 48-59), lips and the skin around them like the FLAME lip mask.
    upper: face-region vertices above the nose tip (landmark 30), in front of the ears' plane,
    that no mouth expression moves by more than ``still`` metres.
    """
    v = ict.neutral
    lm = ict.landmarks68
    outer = v[lm[48:60]]
    d = _dist_to_polygon_2d(v[:, :2], outer[:, :2])
    zmin = outer[:, 2].min() - 0.01
    lips = np.flatnonzero((d < lip_margin) & (v[:, 2] > zmin))
    mouth_cols = [EXPRESSIONS.index(n) for n in MOUTH_EXPRESSIONS]
    moved = np.linalg.norm(ict.expr[mouth_cols], axis=-1).max(axis=0)
    nface = ict.region_count["face"]
    upper = np.flatnonzero((np.arange(len(v)) < nface) & (v[:, 1] > v[lm[30], 1]) &
                           (v[:, 2] > 0.0) & (moved < still))
    return lips.astype(np.int64), upper.astype(np.int64)


# --------------------------------------------------------------------------- closest points

def _closest_on_triangles(p, a, b, c):
    """Barycentric coordinates [..., 3] of the closest point to p on triangles (a, b, c) (Ericson)."""
    ab, ac = b - a, c - a
    ap, bp, cp = p - a, p - b, p - c
    d1, d2 = (ab * ap).sum(-1), (ac * ap).sum(-1)
    d3, d4 = (ab * bp).sum(-1), (ac * bp).sum(-1)
    d5, d6 = (ab * cp).sum(-1), (ac * cp).sum(-1)
    va, vb, vc = d3 * d6 - d5 * d4, d5 * d2 - d1 * d6, d1 * d4 - d3 * d2
    with np.errstate(divide="ignore", invalid="ignore"):
        den = va + vb + vc
        v_in = np.where(den != 0, vb / den, 1 / 3)
        w_in = np.where(den != 0, vc / den, 1 / 3)
        u = 1 - v_in - w_in
        bary = np.stack([u, v_in, w_in], axis=-1)

        def put(mask, bu, bv, bw):
            nonlocal bary
            bary = np.where(mask[..., None], np.stack(np.broadcast_arrays(bu, bv, bw), -1), bary)

        # Ericson tests the regions in the order A, B, AB, C, AC, BC, interior: apply in reverse.
        e = (d4 - d3) + (d5 - d6)
        t = np.where(e != 0, (d4 - d3) / e, 0.0)
        put((va <= 0) & ((d4 - d3) >= 0) & ((d5 - d6) >= 0), 0.0, 1 - t, t)
        t = np.where((d2 - d6) != 0, d2 / (d2 - d6), 0.0)
        put((vb <= 0) & (d2 >= 0) & (d6 <= 0), 1 - t, 0.0, t)
        put((d6 >= 0) & (d5 <= d6), 0.0, 0.0, 1.0)
        t = np.where((d1 - d3) != 0, d1 / (d1 - d3), 0.0)
        put((vc <= 0) & (d1 >= 0) & (d3 <= 0), 1 - t, t, 0.0)
        put((d3 >= 0) & (d4 <= d3), 0.0, 1.0, 0.0)
        put((d1 <= 0) & (d2 <= 0), 1.0, 0.0, 0.0)
    return bary


def closest_point_barycentric(points, verts, faces, k: int = 24, chunk: int = 1024):
    """For each point the nearest triangle (index) and barycentric coordinates on it.

    Candidates are the triangles around the k nearest mesh vertices (exact for points on or near a
    reasonably even surface, which is what the derived families give).
    """
    points = np.asarray(points, np.float64)
    verts = np.asarray(verts, np.float64)
    faces = np.asarray(faces, np.int64)
    nv = len(verts)
    flat = faces.ravel()
    owner = np.repeat(np.arange(len(faces)), 3)
    order = np.argsort(flat, kind="stable")
    counts = np.bincount(flat, minlength=nv)
    start = np.concatenate([[0], np.cumsum(counts)[:-1]])
    adj = np.full((nv, max(int(counts.max()), 1)), -1, np.int64)
    rows = flat[order]
    adj[rows, np.arange(len(order)) - start[rows]] = owner[order]
    _, nn = cKDTree(verts).query(points, k=min(k, nv))
    nn = nn.reshape(len(points), -1)
    tri_out = np.empty(len(points), np.int64)
    bary_out = np.empty((len(points), 3))
    for s in range(0, len(points), chunk):
        p = points[s:s + chunk]
        cand = adj[nn[s:s + chunk]].reshape(len(p), -1)
        valid = cand >= 0
        cand_c = np.where(valid, cand, 0)
        tri = faces[cand_c]                                   # [P, C, 3]
        a, b, c = verts[tri[..., 0]], verts[tri[..., 1]], verts[tri[..., 2]]
        bary = _closest_on_triangles(p[:, None], a, b, c)     # [P, C, 3]
        q = bary[..., :1] * a + bary[..., 1:2] * b + bary[..., 2:] * c
        d = ((q - p[:, None]) ** 2).sum(-1)
        d = np.where(valid, d, np.inf)
        best = d.argmin(axis=1)
        r = np.arange(len(p))
        tri_out[s:s + chunk] = cand_c[r, best]
        bary_out[s:s + chunk] = bary[r, best]
    bary_out = np.clip(bary_out, 0.0, 1.0)
    bary_out /= bary_out.sum(axis=1, keepdims=True)
    return tri_out, bary_out


def barycentric_matrix(tri, bary, faces, n_src) -> sparse.csr_matrix:
    rows = np.repeat(np.arange(len(tri)), 3)
    cols = faces[tri].ravel()
    return sparse.csr_matrix((bary.ravel(), (rows, cols)), shape=(len(tri), n_src))


def _compact(verts, faces):
    """Drop unreferenced vertices and degenerate faces; keep the order of the rest."""
    faces = np.asarray(faces, np.int64)
    faces = faces[(faces[:, 0] != faces[:, 1]) & (faces[:, 1] != faces[:, 2]) & (faces[:, 0] != faces[:, 2])]
    used = np.unique(faces)
    remap = np.full(len(verts), -1, np.int64)
    remap[used] = np.arange(len(used))
    return np.asarray(verts)[used], remap[faces]


# --------------------------------------------------------------------------- subjects

@dataclass
class SubjectMesh:
    family: str
    region: str
    template: np.ndarray   # float64 [V, 3] metres (identity + style bias, mouth closed)
    faces: np.ndarray      # int32 [F, 3]
    basis: np.ndarray      # float64 [K, V, 3] expression shapes (EXPRESSIONS order)
    lips: np.ndarray
    upper: np.ndarray
    info: dict


def identity_template(ict: ICT, coeffs: np.ndarray, smile: float = 0.0, brows: float = 0.0) -> np.ndarray:
    t = ict.neutral + np.tensordot(coeffs, ict.identity[:len(coeffs)], axes=1)
    return t + smile * ict.bias["smile"] + brows * ict.bias["brows"]


def _area(v, f):
    return 0.5 * np.linalg.norm(np.cross(v[f[:, 1]] - v[f[:, 0]], v[f[:, 2]] - v[f[:, 0]]), axis=1).sum()


def build_subject_mesh(ict: ICT, family: str, template_src: np.ndarray, rng: np.random.Generator) -> SubjectMesh:
    """Mesh, template, expression basis and masks of one subject in ``family``."""
    if family in NATIVE:
        region = NATIVE[family]
        n = ict.region_count[region]
        faces = ict.region_faces(region)
        lips, upper = ict.lips[ict.lips < n], ict.upper[ict.upper < n]
        return SubjectMesh(family, region, template_src[:n].copy(), faces.astype(np.int32),
                           ict.expr[:, :n].copy(), lips, upper, {"source_vertices": n})
    if family not in FAMILIES:
        raise ValueError(f"unknown topology family '{family}'; use one of {sorted(FAMILIES)}")
    region = str(rng.choice(["full", "face", "narrow"]))
    n = ict.region_count[region]
    rf = ict.region_faces(region)
    open_v = (template_src + ict.open_shape)[:n]
    if family == "decimated":
        import fast_simplification

        target = int(rng.uniform(2000, min(8000, 0.8 * n)))
        reduction = 1.0 - target / n
        new_v, new_f = fast_simplification.simplify(open_v.astype(np.float64), rf.astype(np.int64),
                                                    target_reduction=reduction)
        info = {"target_reduction": round(reduction, 4)}
    else:  # remeshed
        import gpytoolbox

        target = int(rng.uniform(2000, 9000 if region == "full" else 7000))
        h = float(np.sqrt(2 * _area(open_v, rf) / (np.sqrt(3) * target)))
        new_v, new_f = gpytoolbox.remesh_botsch(open_v, rf.astype(np.int32), i=10, h=h, project=True)
        info = {"edge_length_m": round(h, 6)}
    new_v, new_f = _compact(new_v, new_f)
    tri, bary = closest_point_barycentric(new_v, open_v, rf)
    B = barycentric_matrix(tri, bary, rf, len(template_src))
    template = B @ template_src
    basis = np.stack([B @ e for e in ict.expr])
    ind = np.zeros((2, len(template_src)))
    ind[0, ict.lips] = 1.0
    ind[1, ict.upper] = 1.0
    carried = (B @ ind.T).T
    lips = np.flatnonzero(carried[0] >= 0.5)
    upper = np.flatnonzero(carried[1] >= 0.5)
    info.update({"source_vertices": n, "target_vertices": target})
    return SubjectMesh(family, region, template, new_f.astype(np.int32), basis, lips, upper, info)
