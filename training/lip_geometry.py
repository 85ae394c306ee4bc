"""Where the lips meet, on any topology: the inner-lip vertices and the gap between the lips.

Articulation measures (training.articulation) and lip losses need the gap between the upper and
the lower lip, not the lip region's centroid distance (training.metrics.mouth_opening), which moves
little when the lips part. Two ways to find the inner lip, tried in order:

1. The mouth hole. Most face meshes (FLAME, ICT FaceKit, BIWI, our remeshed synthetic heads) have
   an open mouth: a boundary loop of the mouth's width inside the lip mask's box. Its two corners
   (smallest and largest x) cut it into an upper and a lower chain. Every vertex of the region belongs
   to the lip whose chain is nearer along the surface (the two lips are separate surfaces that
   only touch), which also holds where the loop is the back edge of an inner lip that curls into
   the mouth (FLAME) rather than the visible lip line (ICT).
2. No mouth hole (lips fused, or a point cloud): the lip mask split by height at its mean y.

Only the middle of the mouth counts (within 30% of the half-width from the centre in x). The gap
of a frame is the lowest point of the upper lip minus the highest point of the lower lip there:
the actual clearance, whichever vertices form the lip line at that moment (it goes negative when
lips press together). Heights are y (y up, face along +z: the backend's model frame).
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class InnerLip:
    upper: np.ndarray  # vertex indices of the upper lip, middle of the mouth
    lower: np.ndarray  # ... and of the lower lip
    method: str        # "mouth_hole" or "mask_split"


def boundary_loops(faces: np.ndarray) -> list[np.ndarray]:
    """Vertex loops of the mesh boundary (edges used by exactly one triangle), each in order."""
    faces = np.asarray(faces, np.int64).reshape(-1, 3)
    e = np.concatenate([faces[:, [0, 1]], faces[:, [1, 2]], faces[:, [2, 0]]])
    key = np.sort(e, axis=1)
    _, inv, cnt = np.unique(key, axis=0, return_inverse=True, return_counts=True)
    b = e[cnt[inv.ravel()] == 1]
    nxt: dict[int, list[int]] = {}
    for a, c in b:
        nxt.setdefault(int(a), []).append(int(c))
        nxt.setdefault(int(c), []).append(int(a))
    seen: set[int] = set()
    loops = []
    for start in nxt:
        if start in seen:
            continue
        loop, cur = [start], start
        seen.add(start)
        while True:
            nb = [x for x in nxt[cur] if x not in seen]
            if not nb:
                break
            cur = nb[0]
            seen.add(cur)
            loop.append(cur)
        loops.append(np.asarray(loop, np.int64))
    return loops


def _middle(idx: np.ndarray, x: np.ndarray, centre: float, half_width: float, frac: float, least: int):
    """The vertices of idx within frac * half_width of the centre in x (widened to `least`)."""
    d = np.abs(x[idx] - centre)
    keep = idx[d <= frac * half_width]
    if len(keep) < least:
        keep = idx[np.argsort(d)[:least]]
    return keep


def _surface_side(verts, faces, allowed, up_chain, lo_chain) -> np.ndarray:
    """For each allowed vertex, True when its nearest chain along the mesh (edges between allowed
    vertices, Euclidean lengths) is the upper one; unreachable vertices are False."""
    from scipy.sparse import coo_matrix
    from scipy.sparse.csgraph import dijkstra

    f = np.asarray(faces, np.int64)
    e = np.concatenate([f[:, [0, 1]], f[:, [1, 2]], f[:, [2, 0]]])
    e = e[allowed[e[:, 0]] & allowed[e[:, 1]]]
    w = np.linalg.norm(verts[e[:, 0]] - verts[e[:, 1]], axis=1) + 1e-12
    n = len(verts)
    g = coo_matrix((np.r_[w, w], (np.r_[e[:, 0], e[:, 1]], np.r_[e[:, 1], e[:, 0]])), shape=(n, n)).tocsr()
    src = np.r_[up_chain, lo_chain]
    dist, _, origin = dijkstra(g, indices=src, min_only=True, return_predecessors=True)
    is_up = np.isin(origin, up_chain) & np.isfinite(dist)
    return is_up, np.isfinite(dist)


def _mouth_loop(verts, faces, lips):
    """The boundary loop that is the mouth: its centre inside the lip mask's x-y box, as wide as
    a mouth (20% to 120% of the mask's width); the widest such loop. None if there is none."""
    lo, hi = verts[lips].min(0), verts[lips].max(0)
    width = hi[0] - lo[0]
    best = None
    for loop in boundary_loops(faces):
        if len(loop) < 6:
            continue
        c = verts[loop].mean(0)
        w = np.ptp(verts[loop, 0])
        inside = (lo[0] <= c[0] <= hi[0]) and (lo[1] <= c[1] <= hi[1])
        if inside and 0.2 * width <= w <= 1.2 * width and (best is None or w > best[0]):
            best = (w, loop)
    return None if best is None else best[1]


def mouth_width(verts, faces, lips) -> float | None:
    """Corner-to-corner width of the mouth hole (in the mesh's units), None without one: a scale
    check for scans in no usual unit (a human mouth is roughly 40-60 mm wide)."""
    if faces is None or len(faces) == 0:
        return None
    verts = np.asarray(verts, np.float64)
    loop = _mouth_loop(verts, faces, np.unique(np.asarray(lips, np.int64).ravel()))
    return None if loop is None else float(np.ptp(verts[loop, 0]))


def _from_mouth_hole(verts, faces, lips, frac):
    loop = _mouth_loop(verts, faces, lips)
    if loop is None:
        return None
    x = verts[:, 0]
    i0, i1 = int(np.argmin(x[loop])), int(np.argmax(x[loop]))
    a, b = sorted((i0, i1))
    chain1, chain2 = loop[a + 1:b], np.concatenate([loop[b + 1:], loop[:a]])
    if len(chain1) < 2 or len(chain2) < 2:
        return None
    up, lo = (chain1, chain2) if verts[chain1, 1].mean() > verts[chain2, 1].mean() else (chain2, chain1)
    centre = 0.5 * (x[loop].min() + x[loop].max())
    half = 0.5 * (x[loop].max() - x[loop].min())
    # The region: the middle of the mouth (the lips join around the corners, where "nearer chain"
    # fails), within the box of the lip mask and the loop (the mask may stop short of the loop).
    pts = verts[np.r_[lips, loop]]
    box = np.all((verts >= pts.min(0)) & (verts <= pts.max(0)), axis=1)
    allowed = box & (np.abs(x - centre) <= frac * half)
    up, lo = up[allowed[up]], lo[allowed[lo]]
    if len(up) == 0 or len(lo) == 0:
        return None
    is_up, reached = _surface_side(verts, faces, allowed, up, lo)
    mid = np.flatnonzero(allowed & reached)
    upper, lower = mid[is_up[mid]], mid[~is_up[mid]]
    if len(upper) < 2 or len(lower) < 2:
        return None
    return InnerLip(upper, lower, "mouth_hole")


def _from_mask_split(verts, lips, frac):
    x, y = verts[:, 0], verts[:, 1]
    centre = 0.5 * (x[lips].min() + x[lips].max())
    half = 0.5 * (x[lips].max() - x[lips].min())
    mid = _middle(lips, x, centre, half, frac, 6)
    split = y[mid].mean()
    up, lo = mid[y[mid] >= split], mid[y[mid] < split]
    if len(up) == 0 or len(lo) == 0:
        raise ValueError("the lip mask cannot be split into an upper and a lower lip by height")
    return InnerLip(up, lo, "mask_split")


def inner_lip(verts, faces, lips, frac: float = 0.3) -> InnerLip:
    """The inner-lip vertices of a neutral mesh (y up) given its lip mask (vertex indices)."""
    verts = np.asarray(verts, np.float64)
    lips = np.unique(np.asarray(lips, np.int64).ravel())
    if lips.size < 4:
        raise ValueError(f"the lip mask has {lips.size} vertices; at least 4 are needed")
    if lips.min() < 0 or lips.max() >= len(verts):
        raise ValueError(f"the lip mask indexes vertex {lips.max()} of a {len(verts)}-vertex mesh")
    found = None if faces is None or len(faces) == 0 else _from_mouth_hole(verts, faces, lips, frac)
    return found or _from_mask_split(verts, lips, frac)


def lip_gap(verts, lip: InnerLip):
    """Vertical clearance between the lips (lowest upper-lip point minus highest lower-lip point,
    middle of the mouth) of [V, 3] or [T, V, 3] vertices: numpy in, numpy out; torch in, torch out
    (differentiable through the extreme vertices)."""
    if hasattr(verts, "detach"):  # torch
        up = verts[..., lip.upper, 1].amin(dim=-1)
        lo = verts[..., lip.lower, 1].amax(dim=-1)
        return up - lo
    v = np.asarray(verts, np.float64)
    return v[..., lip.upper, 1].min(axis=-1) - v[..., lip.lower, 1].max(axis=-1)
