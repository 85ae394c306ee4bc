"""On-disk cache of DiffusionNet operators, keyed by geometry and operator settings.

An entry is trusted only if it reads back whole, was written by this code version for exactly
this key, and its checksum matches; anything else is recomputed and overwritten.
"""
from __future__ import annotations

import hashlib
import logging
import os
import tempfile
from pathlib import Path

import numpy as np
import scipy.sparse as sp

from .diffusionnet.geometry import GRAD_EPS, Operators, compute_operators

log = logging.getLogger(__name__)

# Bump when the operator definitions change: old entries then miss instead of being trusted.
OPERATOR_VERSION = "ops-1"
_SPARSE = ("L", "gradX", "gradY")
_DENSE = ("frames", "mass", "evals", "evecs")


def cache_dir(override=None) -> Path:
    """The folder for cached operators: explicit override, $SCANTALK_CACHE_DIR, or the user cache."""
    if override:
        return Path(override)
    env = os.environ.get("SCANTALK_CACHE_DIR")
    if env:
        return Path(env)
    import platformdirs

    return Path(platformdirs.user_cache_dir("scantalk", appauthor=False)) / "operators"


def cache_key(verts: np.ndarray, faces: np.ndarray, k_eig: int, grad_eps: float) -> str:
    h = hashlib.sha256()
    h.update(OPERATOR_VERSION.encode())
    h.update(f"|k={int(k_eig)}|eps={float(grad_eps)!r}|".encode())
    v = np.ascontiguousarray(verts, dtype=np.float64)
    f = np.ascontiguousarray(faces, dtype=np.int64)
    h.update(str(v.shape).encode() + v.tobytes())
    h.update(str(f.shape).encode() + f.tobytes())
    return h.hexdigest()[:40]


def _checksum(arrays: dict) -> str:
    h = hashlib.sha256()
    for name in sorted(arrays):
        a = np.ascontiguousarray(arrays[name])
        h.update(name.encode() + str(a.dtype).encode() + str(a.shape).encode() + a.tobytes())
    return h.hexdigest()


def _to_arrays(ops: Operators) -> dict:
    out = {name: getattr(ops, name) for name in _DENSE}
    for name in _SPARSE:
        m = getattr(ops, name).tocsr()
        out[f"{name}_data"], out[f"{name}_indices"], out[f"{name}_indptr"] = m.data, m.indices, m.indptr
        out[f"{name}_shape"] = np.asarray(m.shape)
    out["laplacian_kind"] = np.asarray(ops.laplacian_kind)
    return out


def _from_arrays(a: dict) -> Operators:
    kw = {name: a[name] for name in _DENSE}
    for name in _SPARSE:
        kw[name] = sp.csr_matrix((a[f"{name}_data"], a[f"{name}_indices"], a[f"{name}_indptr"]),
                                 shape=tuple(a[f"{name}_shape"]))
    return Operators(laplacian_kind=str(a["laplacian_kind"]), **kw)


def _read(path: Path, key: str) -> Operators | None:
    try:
        with np.load(path, allow_pickle=False) as z:
            arrays = {k: z[k] for k in z.files}
    except FileNotFoundError:
        return None
    except Exception as exc:  # truncated zip, bad header, ...: recompute
        log.warning("operator cache entry %s is unreadable (%s); recomputing", path.name, exc)
        return None
    meta_key = str(arrays.pop("_key", ""))
    meta_sum = str(arrays.pop("_checksum", ""))
    if meta_key != key or meta_sum != _checksum(arrays):
        log.warning("operator cache entry %s is stale or corrupt; recomputing", path.name)
        return None
    try:
        return _from_arrays(arrays)
    except Exception as exc:
        log.warning("operator cache entry %s is incomplete (%s); recomputing", path.name, exc)
        return None


def _write(path: Path, key: str, ops: Operators) -> None:
    arrays = _to_arrays(ops)
    arrays["_checksum"] = np.asarray(_checksum(arrays))
    arrays["_key"] = np.asarray(key)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as fh:
            np.savez(fh, **arrays)
        os.replace(tmp, path)  # atomic: a reader never sees half a file
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def get_operators(verts, faces, k_eig: int = 128, grad_eps: float = GRAD_EPS,
                  cache: str | os.PathLike | None = None, use_cache: bool = True) -> tuple[Operators, bool]:
    """Operators for a shape, from the cache when possible. Returns (operators, cache_hit)."""
    verts = np.asarray(verts, dtype=np.float64)
    faces = np.asarray(faces, dtype=np.int64).reshape(-1, 3)
    if not use_cache:
        return compute_operators(verts, faces, k_eig, grad_eps), False
    key = cache_key(verts, faces, k_eig, grad_eps)
    path = cache_dir(cache) / f"{key}.npz"
    ops = _read(path, key)
    if ops is not None:
        return ops, True
    ops = compute_operators(verts, faces, k_eig, grad_eps)
    try:
        _write(path, key, ops)
    except OSError as exc:  # a read-only or full disk must not fail the animation
        log.warning("could not write operator cache %s: %s", path, exc)
    return ops, False


def cache_usage(cache=None) -> tuple[Path, int, int]:
    """(folder, number of entries, total bytes)."""
    d = cache_dir(cache)
    files = list(d.glob("*.npz")) if d.is_dir() else []
    return d, len(files), sum(f.stat().st_size for f in files)
