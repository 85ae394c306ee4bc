"""Small separate parts of a mesh (eyeballs, teeth, a tongue) ride with the skin next to them.

The model learns motion on one connected skin surface. A part that is a separate component (the
eyeballs of FLAME, teeth modelled inside the head) is out of its training distribution, and the
decoder moves it freely: on FLAME_sample the eyeballs moved ~2.5 mm during speech. Here every
component with fewer than `max_fraction` of the largest component's vertices is moved rigidly by
the mean offset of the skin vertices nearest to it: eyeballs stay with the (still) eye sockets,
lower teeth follow the lower lip and chin.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class RidePlan:
    """For each small part: its vertices and the skin vertices whose mean offset it takes."""

    parts: tuple[tuple[np.ndarray, np.ndarray], ...]

    def __bool__(self) -> bool:
        return bool(self.parts)

    def apply(self, offsets: np.ndarray) -> np.ndarray:
        """offsets [T, V, 3] (or [V, 3]) with every small part replaced, in place; returned."""
        for part, anchor in self.parts:
            offsets[..., part, :] = offsets[..., anchor, :].mean(axis=-2, keepdims=True)
        return offsets


def components(n_vertices: int, faces: np.ndarray) -> np.ndarray:
    """Connected-component label of each vertex (vertices in no face get their own labels)."""
    from scipy.sparse import coo_matrix
    from scipy.sparse.csgraph import connected_components

    f = np.asarray(faces, np.int64).reshape(-1, 3)
    i = np.r_[f[:, 0], f[:, 1], f[:, 2]]
    j = np.r_[f[:, 1], f[:, 2], f[:, 0]]
    g = coo_matrix((np.ones(len(i), np.int8), (i, j)), shape=(n_vertices, n_vertices))
    return connected_components(g, directed=False)[1]


def ride_plan(verts: np.ndarray, faces: np.ndarray, max_fraction: float = 0.25, k: int = 8) -> RidePlan:
    """Which parts ride along and on which skin vertices (the k nearest skin vertices of each of
    the part's vertices, pooled). A mesh of one piece, or a point cloud, gets an empty plan."""
    verts = np.asarray(verts, np.float64)
    if faces is None or len(faces) == 0:
        return RidePlan(())
    labels = components(len(verts), faces)
    counts = np.bincount(labels)
    if len(counts) < 2:
        return RidePlan(())
    main = int(np.argmax(counts))
    skin = np.flatnonzero(labels == main)
    small = [c for c in range(len(counts)) if c != main and counts[c] < max_fraction * counts[main]]
    if not small:
        return RidePlan(())
    from scipy.spatial import cKDTree

    tree = cKDTree(verts[skin])
    parts = []
    for c in small:
        part = np.flatnonzero(labels == c)
        _, nn = tree.query(verts[part], k=min(k, len(skin)))
        parts.append((part, np.unique(skin[np.asarray(nn).reshape(-1)])))
    return RidePlan(tuple(parts))
