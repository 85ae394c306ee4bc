"""Companion objects (lower teeth, tongue...) that follow the jaw of a Rig-mode result.

    region = jaw_region(names, deltas_model)                 # vertices that move with the jaw
    A = jaw_transforms(neutral_model, deltas_model, W, region, R)   # [T,4,4] rigid, head local space
    curves = object_curves(obj, head, A)                     # bpy: the object's keyed channels

The jaw is fitted per frame with a rigid transform (Kabsch, least squares) to the jaw and chin
region of the rig's own motion (the keyed weights times the keys' deltas), so a companion follows
exactly what the head plays: in silence (all weights 0) the transform is the identity and the
object stays put. Upper teeth and eyes move with the head and are not companions.

The jaw region: the vertices the rig's jawOpen key (any spelling) moves at least half as much as
its most moving vertex (chin, jaw line, lower lip); a rig without jawOpen uses the part of the
face below the mouth (mouth = where the keys move the most), within a chin-sized box.
"""
from __future__ import annotations

import numpy as np

from .rig import normalize_name


def jaw_region(names, deltas_model: np.ndarray, neutral_model: np.ndarray) -> np.ndarray:
    """Vertex indices of the jaw and chin (model frame: y up, face along +z)."""
    jaw = [i for i, n in enumerate(names) if normalize_name(n) == "jawopen"]
    if jaw:
        a = np.linalg.norm(deltas_model[jaw[0]], axis=1)
        if a.max() > 0:
            return np.flatnonzero(a >= 0.5 * a.max())
    act = np.linalg.norm(deltas_model, axis=2).sum(axis=0)
    if not act.max() > 0:
        return np.zeros(0, np.int64)
    top = act >= 0.5 * act.max()
    c = neutral_model[top].mean(axis=0)
    face = act >= 0.05 * act.max()
    h = float(np.ptp(neutral_model[face, 1])) if face.sum() > 1 else 1.0
    p = neutral_model
    box = (p[:, 1] < c[1] - 0.08 * h) & (p[:, 1] > c[1] - 0.45 * h) & (np.abs(p[:, 0] - c[0]) < 0.2 * h) & face
    return np.flatnonzero(box)


def kabsch(P0: np.ndarray, P: np.ndarray) -> np.ndarray:
    """Rigid transforms [T,4,4] taking P0 [n,3] to each P[t] [T,n,3] in the least-squares sense."""
    c0 = P0.mean(axis=0)
    ct = P.mean(axis=1)
    H = np.einsum("ni,tnj->tij", P0 - c0, P - ct[:, None, :])
    U, _, Vt = np.linalg.svd(H)
    d = np.sign(np.linalg.det(np.einsum("tji,tkj->tik", Vt, U)))  # det(V U^T)
    d[d == 0] = 1.0
    Dm = np.zeros((len(P), 3, 3))
    Dm[:, 0, 0] = Dm[:, 1, 1] = 1.0
    Dm[:, 2, 2] = d
    R = np.einsum("tji,tjk,tlk->til", Vt, Dm, U)  # V diag(1,1,d) U^T
    A = np.tile(np.eye(4), (len(P), 1, 1))
    A[:, :3, :3] = R
    A[:, :3, 3] = ct - np.einsum("tij,j->ti", R, c0)
    return A


def jaw_transforms(neutral_model, deltas_model, weights, region, rotation) -> np.ndarray:
    """[T,4,4] rigid transforms of the jaw in the head's LOCAL space (model = rotation @ local)."""
    T = weights.shape[0]
    if len(region) < 3:
        return np.tile(np.eye(4), (T, 1, 1))
    P0 = np.asarray(neutral_model, np.float64)[region]
    P = P0[None] + np.einsum("tk,knc->tnc", np.asarray(weights, np.float64), deltas_model[:, region].astype(np.float64))
    A = kabsch(P0, P)
    Rm = np.eye(4)
    Rm[:3, :3] = rotation
    return np.einsum("ij,tjk,kl->til", Rm.T, A, Rm)  # local = R^T model


def object_curves(obj, head, A_local: np.ndarray, rest: list | None = None) -> tuple[list, list]:
    """(curves, rest): per channel (data_path, index, values [T]) of `obj` following the head-local
    transforms A_local [T,4,4]; rest = the channels' values at rest (keyed either side of the clip;
    given: those of a previous result, else the object's current ones)."""
    from mathutils import Euler, Matrix, Quaternion, Vector

    mode = obj.rotation_mode
    if mode == "AXIS_ANGLE":
        raise ValueError(f"'{obj.name}' uses axis-angle rotation: set its rotation mode to Quaternion or an Euler order")
    rot_path = "rotation_quaternion" if mode == "QUATERNION" else "rotation_euler"
    nrot = 4 if rot_path == "rotation_quaternion" else 3
    if rest is None or len(rest) != 6 + nrot:
        rest = [*obj.location, *(obj.rotation_quaternion if nrot == 4 else obj.rotation_euler), *obj.scale]
    rest = [float(v) for v in rest]
    rot0 = Quaternion(rest[3:7]) if nrot == 4 else Euler(rest[3:6], mode)
    basis0 = Matrix.LocRotScale(Vector(rest[:3]), rot0, Vector(rest[3 + nrot:]))
    to_world = (obj.parent.matrix_world @ obj.matrix_parent_inverse) if obj.parent is not None else Matrix.Identity(4)
    to_basis = to_world.inverted_safe()
    w0 = to_world @ basis0
    hw = head.matrix_world.copy()
    hw_inv = hw.inverted_safe()
    T = len(A_local)
    vals = np.zeros((T, 3 + nrot + 3))
    prev_e = Euler(rest[3:6], mode) if nrot == 3 else None
    prev_q = Quaternion(rest[3:7]) if nrot == 4 else None
    for t in range(T):
        basis = to_basis @ hw @ Matrix(A_local[t].tolist()) @ hw_inv @ w0
        loc, q, sc = basis.decompose()
        if nrot == 3:
            e = q.to_euler(mode, prev_e)
            vals[t, 3:6] = e[:]
            prev_e = e
        else:
            if q.dot(prev_q) < 0:
                q.negate()
            vals[t, 3:7] = q[:]
            prev_q = q
        vals[t, :3] = loc[:]
        vals[t, 3 + nrot:] = sc[:]
    paths = [("location", i) for i in range(3)] + [(rot_path, i) for i in range(nrot)] + [("scale", i) for i in range(3)]
    curves = [(p, i, vals[:, j].astype(np.float32)) for j, (p, i) in enumerate(paths)]
    return curves, rest
