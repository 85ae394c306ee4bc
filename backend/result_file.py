"""The result file (`.npz`): written in chunks of frames, read by frame ranges.

numpy + the standard library only: the Blender add-on carries a byte-identical copy
(blender_addon/result_file.py; a test and build_addon.py check that they agree).

The file is an ordinary `.npz` (`np.load` reads it): a ZIP archive, members stored uncompressed,
`offsets.npy` first, then `fps.npy` and `meta.npy`. Because `offsets.npy` is stored, its bytes
sit contiguously in the archive: the writer puts the .npy header for the final shape
[T, V, 3] and then appends frames as they are decoded (ZIP64, so any size), and the reader maps
reads only the frames asked for (plain file reads; `.offsets` is a memory map for scripts).

    with open_result("out.npz") as r:
        r.fps, r.meta, r.n_frames, r.n_vertices
        block = r.frames(0, 100)        # float32 [100, V, 3], whatever the stored dtype
        r.array("compact_weights")      # any other (small) member, read whole

Files written by other means (compressed members, e.g. `np.savez_compressed`) still open; their
offsets are then read into memory whole.
"""
from __future__ import annotations

import json
import os
import struct
import tempfile
import zipfile
from pathlib import Path

import numpy as np

OFFSETS = "offsets.npy"
DTYPES = {"float32": np.dtype("<f4"), "float16": np.dtype("<f2")}
FLOAT16_MAX = 65504.0


def _npy_header(dtype: np.dtype, shape: tuple) -> bytes:
    """The bytes np.save writes before the data of a C-ordered array (format 1.0 or 2.0)."""
    import io

    d = {"descr": np.lib.format.dtype_to_descr(dtype), "fortran_order": False, "shape": tuple(shape)}
    buf = io.BytesIO()
    try:
        np.lib.format.write_array_header_1_0(buf, d)
    except ValueError:  # header too long for 1.0 (never for 3 dims, but be safe)
        buf = io.BytesIO()
        np.lib.format.write_array_header_2_0(buf, d)
    return buf.getvalue()


class ResultWriter:
    """Write offsets [n_frames, n_vertices, 3] chunk by chunk, then fps and meta.

    The archive is built under a temporary name beside `path` and renamed over it by `finish`;
    `abort` (or an exception inside a `with` block) removes it: no partial file is ever visible.
    """

    def __init__(self, path, n_frames: int, n_vertices: int, dtype: str = "float32"):
        if dtype not in DTYPES:
            raise ValueError(f"dtype must be one of {', '.join(DTYPES)}, not {dtype!r}")
        self.path = Path(path)
        self.n_frames, self.n_vertices = int(n_frames), int(n_vertices)
        self.dtype = DTYPES[dtype]
        self.dtype_name = dtype
        self.written = 0
        self.max_abs = 0.0
        self.path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=self.path.parent, prefix=self.path.name + ".", suffix=".tmp")
        self.tmp = Path(tmp)
        self._fh = os.fdopen(fd, "w+b")
        try:
            self._zip = zipfile.ZipFile(self._fh, "w", compression=zipfile.ZIP_STORED, allowZip64=True)
            self._member = self._zip.open(OFFSETS, "w", force_zip64=True)
            self._member.write(_npy_header(self.dtype, (self.n_frames, self.n_vertices, 3)))
        except BaseException:
            self.abort()
            raise

    def write(self, chunk) -> None:
        """Append frames: float array [t, n_vertices, 3]."""
        chunk = np.asarray(chunk)
        if chunk.ndim != 3 or chunk.shape[1:] != (self.n_vertices, 3):
            raise ValueError(f"chunk shape {chunk.shape} does not match [t, {self.n_vertices}, 3]")
        if self.written + len(chunk) > self.n_frames:
            raise ValueError(f"too many frames: {self.written + len(chunk)} > {self.n_frames}")
        if len(chunk) and self.dtype == DTYPES["float16"]:
            self.max_abs = max(self.max_abs, float(np.abs(chunk).max()))
            if self.max_abs > FLOAT16_MAX:
                raise ValueError(f"offsets up to {self.max_abs:g} do not fit float16 (max {FLOAT16_MAX:g}); "
                                 f"use float32")
        self._member.write(np.ascontiguousarray(chunk, dtype=self.dtype).tobytes())
        self.written += len(chunk)

    def finish(self, fps: float, meta: dict) -> Path:
        if self.written != self.n_frames:
            self.abort()
            raise ValueError(f"{self.written} frames written, {self.n_frames} announced")
        try:
            self._member.close()
            for name, arr in (("fps", np.float64(fps)), ("meta", np.asarray(json.dumps(meta)))):
                with self._zip.open(name + ".npy", "w") as m:
                    np.lib.format.write_array(m, np.asanyarray(arr), allow_pickle=False)
            self._zip.close()
            self._fh.flush()
            os.fsync(self._fh.fileno())
            self._fh.close()
            umask = os.umask(0)
            os.umask(umask)
            os.chmod(self.tmp, 0o666 & ~umask)  # mkstemp makes 0600; the result is a user file
            os.replace(self.tmp, self.path)
        except BaseException:
            self.abort()
            raise
        return self.path

    def abort(self) -> None:
        for close in (getattr(self, "_member", None), getattr(self, "_zip", None), self._fh):
            try:
                if close is not None:
                    close.close()
            except Exception:
                pass
        self.tmp.unlink(missing_ok=True)

    def __enter__(self):
        return self

    def __exit__(self, exc_type, exc, tb):
        if exc_type is not None:
            self.abort()


def _member_data_offset(fh, info: zipfile.ZipInfo) -> int:
    """Where a member's bytes start: after its local header (whose extra field may differ in
    length from the central directory's)."""
    fh.seek(info.header_offset)
    local = fh.read(30)
    if local[:4] != b"PK\x03\x04":
        raise ValueError("bad local file header")
    name_len, extra_len = struct.unpack("<HH", local[26:30])
    return info.header_offset + 30 + name_len + extra_len


class ResultFile:
    """A result `.npz` opened for reading by frame ranges (see `open_result`)."""

    def __init__(self, path):
        self.path = Path(path)
        self._offsets = None
        self._fh = None
        with zipfile.ZipFile(self.path) as z:
            names = set(z.namelist())
            for need in (OFFSETS, "fps.npy", "meta.npy"):
                if need not in names:
                    raise ValueError(f"{self.path.name} is not a ScanTalk result: no {need[:-4]!r} in it")
            with z.open("fps.npy") as m:
                self.fps = float(np.lib.format.read_array(m, allow_pickle=False))
            with z.open("meta.npy") as m:
                self.meta = json.loads(str(np.lib.format.read_array(m, allow_pickle=False)))
            info = z.getinfo(OFFSETS)
            with z.open(OFFSETS) as m:
                version = np.lib.format.read_magic(m)
                read_header = (np.lib.format.read_array_header_1_0 if version == (1, 0)
                               else np.lib.format.read_array_header_2_0)
                shape, fortran, dtype = read_header(m)
                header_len = m.tell() if info.compress_type == zipfile.ZIP_STORED else None
            if len(shape) != 3 or shape[2] != 3:
                raise ValueError(f"offsets have shape {shape}, expected [T, V, 3]")
            self.n_frames, self.n_vertices = int(shape[0]), int(shape[1])
            self.dtype = np.dtype(dtype)
            self._shape = tuple(shape)
            self._members = {n[:-4]: n for n in names if n.endswith(".npy")}
            self._start = None
            if info.compress_type == zipfile.ZIP_STORED and not fortran and info.file_size > 0:
                with open(self.path, "rb") as fh:
                    self._start = _member_data_offset(fh, info) + header_len
            elif info.file_size > 0:  # compressed or Fortran-ordered: no random access, load it whole
                with z.open(OFFSETS) as m:
                    self._offsets = np.lib.format.read_array(m, allow_pickle=False)
            else:
                self._offsets = np.zeros(shape, self.dtype)
        # frames are read with plain file reads, not through a memory map: pages of a map count
        # in the process's resident memory until the kernel drops them, so reading a 10 GB
        # result through one makes Blender or the worker look (and, under pressure, act) huge;
        # an open map also keeps Windows from deleting the file.
        self._fh = open(self.path, "rb") if self._start is not None else None

    @property
    def names(self) -> list[str]:
        """The arrays in the file (`offsets`, `fps`, `meta`, and any appended: `rig_*`, `compact_*`)."""
        return list(self._members)

    def has(self, name: str) -> bool:
        return name in self._members

    def array(self, name: str) -> np.ndarray:
        """A whole member other than the offsets (small ones: weights, a basis, a report)."""
        if name not in self._members:
            raise KeyError(f"{self.path.name} has no {name!r}")
        with zipfile.ZipFile(self.path) as z, z.open(self._members[name]) as m:
            return np.lib.format.read_array(m, allow_pickle=False)

    @property
    def offsets(self) -> np.ndarray:
        """All offsets as a read-only [T, V, 3] array in the stored dtype, memory-mapped when
        possible (for scripts; `frames` and `iter_chunks` read without a map)."""
        if self._offsets is None and self._start is not None:
            if not self.n_frames:
                return np.zeros(self._shape, self.dtype)
            self._offsets = np.memmap(self.path, dtype=self.dtype, mode="r", offset=self._start, shape=self._shape)
        return self._offsets

    def frames(self, a: int = 0, b: int | None = None) -> np.ndarray:
        """Frames a..b-1 as a float32 [b - a, V, 3] array in memory (Python slice rules)."""
        a, b, _ = slice(a, b).indices(self.n_frames)
        b = max(a, b)
        if self._start is None:
            return np.array(self._offsets[a:b], dtype=np.float32)
        frame_bytes = self.n_vertices * 3 * self.dtype.itemsize
        out = np.empty((b - a, self.n_vertices, 3), self.dtype)
        self._fh.seek(self._start + a * frame_bytes)
        view = memoryview(out.reshape(-1).view(np.uint8))
        got = 0
        while got < len(view):
            n = self._fh.readinto(view[got:])
            if not n:
                raise ValueError(f"{self.path.name} is truncated: frames {a}..{b - 1} are not all there")
            got += n
        return out if out.dtype == np.float32 else out.astype(np.float32)

    def iter_chunks(self, frames_per_chunk: int = 256):
        """(start, float32 block) pairs covering the clip in order."""
        for a in range(0, self.n_frames, frames_per_chunk):
            yield a, self.frames(a, a + frames_per_chunk)

    def close(self) -> None:
        if self._fh is not None:
            self._fh.close()
            self._fh = None
        mm = getattr(self._offsets, "_mmap", None)
        self._offsets = None
        if mm is not None:
            try:
                mm.close()
            except (BufferError, ValueError):  # a caller still holds a view: let GC close it
                pass

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()


def open_result(path) -> ResultFile:
    """Open a result `.npz`: `.fps`, `.meta`, `.n_frames`, `.n_vertices`, `.dtype`,
    `.frames(a, b)` (float32), `.offsets` (memory-mapped), `.iter_chunks(n)`, `.array(name)`."""
    return ResultFile(path)
