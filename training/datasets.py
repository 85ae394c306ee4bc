"""Readers that turn a dataset folder into a list of clips (lazy: listing reads no motion).

Layouts (see ../shared/docs/scantalk-reference.md, "Data format"):

- ``vocaset``: ``wav/<subject>_sentenceNN.wav``, ``vertices_npy/<name>.npy`` stored (T60, 15069)
  at 60 fps (``load_motion`` takes every 2nd frame -> 30 fps and reshapes to (T, 5023, 3)),
  ``templates.pkl`` (dict subject -> (5023, 3), read with a restricted unpickler), faces from a
  FLAME mesh file, lips from ``FLAME_lips_idx.mat`` (1-based).
- ``biwi``: ``wav/``, ``vertices/<name>.npy`` (T, 3895, 3), ``templates/<subject>.obj``, 25 fps;
  names whose 4th character is ``e`` (emotional takes) are skipped.
- ``multiface``: ``wav/``, ``vertices/<name>.npy`` (T, 5471, 3), ``templates/<subject>.ply``, 30 fps.
- ``general`` (synthetic data and users' own data; every subject has its own topology):
  ``meta.json`` (``fps``, ``splits`` {train, val, test: [subjects]}), ``templates/<subject>.npz``
  (vertices, faces), ``masks/<subject>_lips.txt`` and ``masks/<subject>_upper.txt`` (0-based, one
  index per line), ``wav/<subject>_<sentence>.wav``, ``vertices/<subject>_<sentence>.npy``
  float32 [T, V, 3] absolute positions.

Every reader returns a :class:`DatasetListing`: it behaves as the list of :class:`Clip` (iterate,
``len``, index) and also carries the :class:`Subject` of each subject that has clips.
Subject id = clip name minus its last ``_<part>`` (``FaceTalk_170728_03272_TA_sentence01`` ->
``FaceTalk_170728_03272_TA``).
"""
from __future__ import annotations

import json
import pickle
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterable, Sequence

import numpy as np

from backend.errors import MeshError
from backend.mesh_io import load_mesh


class DatasetError(ValueError):
    """A dataset folder, clip or mask is missing or inconsistent; the message says what and where."""


# Official subject splits (ScanTalk / FaceFormer protocol).
VOCASET_SPLITS = {
    "train": [
        "FaceTalk_170728_03272_TA", "FaceTalk_170904_00128_TA", "FaceTalk_170725_00137_TA",
        "FaceTalk_170915_00223_TA", "FaceTalk_170811_03274_TA", "FaceTalk_170913_03279_TA",
        "FaceTalk_170904_03276_TA", "FaceTalk_170912_03278_TA",
    ],
    "val": ["FaceTalk_170811_03275_TA", "FaceTalk_170908_03277_TA"],
    "test": ["FaceTalk_170809_00138_TA", "FaceTalk_170731_00024_TA"],
}
BIWI_SPLITS = {
    "train": ["F1", "F2", "F3", "F4", "F5", "F6", "M1", "M2", "M3", "M4"],
    "val": ["F7", "M5"],
    "test": ["F8", "M6"],
}
MULTIFACE_SPLITS = {
    "train": ["20171024", "20180226", "20180227", "20180406", "20180418", "20180426",
              "20180510", "20180927", "20190529"],
    "val": ["20190828", "20190521"],
    "test": ["20181017", "20180105"],
}
FPS = {"vocaset": 30.0, "biwi": 25.0, "multiface": 30.0}
VERTEX_COUNTS = {"vocaset": 5023, "biwi": 3895, "multiface": 5471}


@dataclass(frozen=True)
class Clip:
    name: str
    subject: str
    wav_path: Path
    vertices_path: Path
    fps: float
    # Frames stored per output frame: 2 for vocaset (60 fps on disk, 30 fps out), else 1.
    frame_step: int = 1


@dataclass
class Subject:
    name: str
    template_vertices: np.ndarray  # float64 [V, 3]
    faces: np.ndarray  # int64 [F, 3]
    lips: np.ndarray | None  # int64, 0-based
    upper: np.ndarray | None = None  # int64, 0-based (upper face, for FDD)

    @property
    def n_vertices(self) -> int:
        return int(self.template_vertices.shape[0])


@dataclass
class DatasetListing:
    """The clips of one split (acts as a list of Clip) plus the subjects they belong to."""

    layout: str
    root: Path
    split: list[str]
    fps: float
    clips: list[Clip]
    subjects: dict[str, Subject] = field(default_factory=dict)

    def __iter__(self):
        return iter(self.clips)

    def __len__(self) -> int:
        return len(self.clips)

    def __getitem__(self, i):
        return self.clips[i]

    def subject_of(self, clip: Clip) -> Subject:
        return self.subjects[clip.subject]


# --------------------------------------------------------------------------- safe pickle

def _numpy_reconstruct():
    try:
        from numpy._core.multiarray import _reconstruct  # numpy >= 2
    except ImportError:  # pragma: no cover - numpy 1.x
        from numpy.core.multiarray import _reconstruct
    return _reconstruct


def _numpy_frombuffer():
    try:
        from numpy._core.numeric import _frombuffer  # numpy >= 2
    except ImportError:  # pragma: no cover - numpy 1.x
        from numpy.core.numeric import _frombuffer
    return _frombuffer


def _codecs_encode(obj, encoding="utf-8", errors="strict"):
    import codecs

    if not isinstance(obj, str):
        raise pickle.UnpicklingError("_codecs.encode called on something other than a string")
    return codecs.encode(obj, encoding, errors)


class _ArrayOnlyUnpickler(pickle.Unpickler):
    """Unpickler that can rebuild dicts/lists of numpy arrays and nothing else.

    Only numpy's array reconstruction (``_reconstruct``, ``_frombuffer``, ``ndarray``, ``dtype``) and
    ``_codecs.encode`` (used by Python 3 pickles to store bytes) may be looked up; any other
    global (os.system, builtins.eval, ...) is refused BEFORE it could be called.
    """

    _ALLOWED = {
        ("numpy.core.multiarray", "_reconstruct"),
        ("numpy._core.multiarray", "_reconstruct"),
        ("numpy.core.numeric", "_frombuffer"),
        ("numpy._core.numeric", "_frombuffer"),
        ("numpy", "ndarray"),
        ("numpy", "dtype"),
        ("_codecs", "encode"),
    }

    def find_class(self, module, name):
        if (module, name) not in self._ALLOWED:
            raise pickle.UnpicklingError(
                f"refusing to load '{module}.{name}': only numpy arrays are allowed in this file")
        if name == "_reconstruct":
            return _numpy_reconstruct()
        if name == "_frombuffer":
            return _numpy_frombuffer()
        if name == "ndarray":
            return np.ndarray
        if name == "dtype":
            return np.dtype
        return _codecs_encode

    def persistent_load(self, pid):
        raise pickle.UnpicklingError("refusing persistent ids: only numpy arrays are allowed")


def load_array_pickle(path, encoding: str = "latin1"):
    """Load a pickle holding only (dicts/lists/tuples of) numpy arrays, without running code."""
    path = Path(path)
    try:
        with open(path, "rb") as fh:
            obj = _ArrayOnlyUnpickler(fh, encoding=encoding).load()
    except FileNotFoundError:
        raise DatasetError(f"file not found: {path}") from None
    except pickle.UnpicklingError as exc:
        raise DatasetError(f"{path.name}: unsafe or invalid pickle: {exc}") from None
    except Exception as exc:  # truncated files and the like
        raise DatasetError(f"{path.name}: could not read pickle: {exc}") from exc
    return obj


def load_vocaset_templates(path) -> dict[str, np.ndarray]:
    """templates.pkl (subject -> (5023, 3) array) read safely; returns float64 [V, 3] arrays."""
    obj = load_array_pickle(path)
    if not isinstance(obj, dict):
        raise DatasetError(f"{Path(path).name}: expected a dict subject -> vertices, got {type(obj).__name__}")
    out = {}
    for key, val in obj.items():
        key = key.decode("latin1") if isinstance(key, bytes) else str(key)
        if not isinstance(val, np.ndarray) or val.dtype.kind not in "fiu" or val.size % 3:
            raise DatasetError(f"{Path(path).name}: template of '{key}' is not a numeric [V,3] array")
        out[key] = np.asarray(val, dtype=np.float64).reshape(-1, 3)
    return out


# --------------------------------------------------------------------------- helpers

def load_index_file(path, one_based: bool = False, mat_key: str | None = None) -> np.ndarray:
    """Vertex indices from .mat (``mat_key`` or the only variable), .npy, or text (commas/whitespace)."""
    path = Path(path)
    if not path.is_file():
        raise DatasetError(f"mask file not found: {path}")
    suffix = path.suffix.lower()
    try:
        if suffix == ".mat":
            from scipy.io import loadmat

            data = {k: v for k, v in loadmat(str(path)).items() if not k.startswith("__")}
            if mat_key is None:
                if len(data) != 1:
                    raise DatasetError(f"{path.name}: name the variable to read (has {sorted(data)})")
                mat_key = next(iter(data))
            if mat_key not in data:
                raise DatasetError(f"{path.name}: no variable '{mat_key}' (has {sorted(data)})")
            idx = np.asarray(data[mat_key])
        elif suffix == ".npy":
            idx = np.load(path, allow_pickle=False)
        else:
            text = path.read_text(encoding="utf-8").replace(",", " ").split()
            idx = np.asarray([int(float(t)) for t in text], dtype=np.int64)
    except DatasetError:
        raise
    except Exception as exc:
        raise DatasetError(f"could not read mask {path.name}: {exc}") from exc
    idx = np.asarray(idx).reshape(-1)
    if idx.dtype.kind == "b":
        idx = np.flatnonzero(idx)
    idx = idx.astype(np.int64)
    if one_based:
        idx = idx - 1
    return idx


def _check_indices(idx: np.ndarray | None, n: int, what: str) -> np.ndarray | None:
    if idx is None:
        return None
    if idx.size == 0:
        raise DatasetError(f"{what}: mask is empty")
    if idx.min() < 0 or idx.max() >= n:
        raise DatasetError(
            f"{what}: mask indices span {idx.min()}..{idx.max()} but the template has {n} vertices "
            f"(valid 0..{n - 1}); is the mask for another mesh, or 1-based?")
    return idx


def _mesh(path: Path, what: str):
    try:
        return load_mesh(path)
    except MeshError as exc:
        raise DatasetError(f"{what}: {exc}") from exc


def subject_of_name(name: str) -> str:
    """Clip name minus its last '_<part>' (the sentence id)."""
    if "_" not in name:
        return name
    return name.rsplit("_", 1)[0]


def resolve_split(split: str | Sequence[str], official: dict[str, list[str]], layout: str) -> list[str]:
    if isinstance(split, str):
        if split == "all":
            return [s for part in ("train", "val", "test") for s in official.get(part, [])]
        if split not in official:
            raise DatasetError(
                f"{layout}: unknown split '{split}'; use one of {sorted(official)} or 'all', "
                "or pass a list of subjects")
        return list(official[split])
    subjects = [str(s) for s in split]
    if not subjects:
        raise DatasetError(f"{layout}: the split is an empty list of subjects")
    return subjects


def _list_clips(root: Path, vert_dir: str, subjects: list[str], fps: float, layout: str,
                frame_step: int = 1, skip=None) -> list[Clip]:
    """Clips of the given subjects: the union of names found in wav/ and <vert_dir>/.

    A clip missing one of its two files is still listed, so that ``check_clip`` reports it.
    """
    wav_dir, v_dir = root / "wav", root / vert_dir
    if not wav_dir.is_dir() and not v_dir.is_dir():
        raise DatasetError(f"{layout}: {root} has neither wav/ nor {vert_dir}/; is this the dataset root?")
    names = set()
    if wav_dir.is_dir():
        names.update(p.stem for p in wav_dir.glob("*.wav"))
    if v_dir.is_dir():
        names.update(p.stem for p in v_dir.glob("*.npy"))
    wanted = set(subjects)
    clips = []
    for name in sorted(names):
        if skip is not None and skip(name):
            continue
        subj = subject_of_name(name)
        if subj not in wanted:
            continue
        clips.append(Clip(name=name, subject=subj, wav_path=wav_dir / f"{name}.wav",
                          vertices_path=v_dir / f"{name}.npy", fps=float(fps), frame_step=frame_step))
    if not clips:
        raise DatasetError(
            f"{layout}: no clips in {root} for subjects {', '.join(subjects)} "
            f"(looked for wav/<subject>_<sentence>.wav and {vert_dir}/<subject>_<sentence>.npy)")
    return clips


def _used_subjects(clips: Iterable[Clip]) -> list[str]:
    return sorted({c.subject for c in clips})


# --------------------------------------------------------------------------- readers

def read_vocaset(root, split: str | Sequence[str] = "train", *, faces_mesh, lips_mask,
                 upper_mask=None, templates: str = "templates.pkl") -> DatasetListing:
    """vocaset layout. ``faces_mesh``: a FLAME mesh (e.g. FLAME_sample.ply) for the faces;
    ``lips_mask``: ``FLAME_lips_idx.mat`` (variable ``lips_idx``, 1-based) or a 0-based .npy/.txt;
    ``upper_mask``: optional 0-based upper-face indices (e.g. ``upper_mask.npy``)."""
    root = Path(root)
    subjects = resolve_split(split, VOCASET_SPLITS, "vocaset")
    clips = _list_clips(root, "vertices_npy", subjects, FPS["vocaset"], "vocaset", frame_step=2)
    tpl_path = root / templates
    if not tpl_path.is_file():
        raise DatasetError(f"vocaset: template file not found: {tpl_path}")
    tpls = load_vocaset_templates(tpl_path)
    _, faces = _mesh(Path(faces_mesh), "vocaset faces mesh")
    lips = _read_mask(lips_mask, "lips_idx")
    upper = _read_mask(upper_mask, None)
    out = {}
    for s in _used_subjects(clips):
        if s not in tpls:
            raise DatasetError(f"vocaset: {tpl_path.name} has no template for subject '{s}'")
        verts = tpls[s]
        if faces.size and faces.max() >= len(verts):
            raise DatasetError(
                f"vocaset: faces of {Path(faces_mesh).name} index vertex {faces.max()} but the "
                f"template of '{s}' has {len(verts)} vertices")
        out[s] = Subject(s, verts, faces, _check_indices(lips, len(verts), f"lips of '{s}'"),
                         _check_indices(upper, len(verts), f"upper face of '{s}'"))
    return DatasetListing("vocaset", root, subjects, FPS["vocaset"], clips, out)


def _read_mask(path, mat_key):
    if path is None:
        return None
    path = Path(path)
    one_based = path.suffix.lower() == ".mat"  # the official .mat masks are MATLAB 1-based
    return load_index_file(path, one_based=one_based, mat_key=mat_key)


def _template(root: Path, subject: str, ext: str, layout: str):
    """templates/<subject><ext> as (vertices, faces), or a DatasetError naming the file."""
    path = root / "templates" / f"{subject}{ext}"
    if not path.is_file():
        raise DatasetError(f"{layout}: template of subject '{subject}' not found: {path}")
    return _mesh(path, f"{layout} template of '{subject}'")


def _read_per_subject_template_layout(root, split, layout, ext, official, lips_mask, upper_mask,
                                      skip=None) -> DatasetListing:
    root = Path(root)
    subjects = resolve_split(split, official, layout)
    clips = _list_clips(root, "vertices", subjects, FPS[layout], layout, skip=skip)
    lips = _read_mask(lips_mask, "lips_idx")
    upper = _read_mask(upper_mask, None)
    out = {}
    for s in _used_subjects(clips):
        verts, faces = _template(root, s, ext, layout)
        out[s] = Subject(s, verts, faces, _check_indices(lips, len(verts), f"lips of '{s}'"),
                         _check_indices(upper, len(verts), f"upper face of '{s}'"))
    return DatasetListing(layout, root, subjects, FPS[layout], clips, out)


def _is_emotional(name: str) -> bool:
    return len(name) > 3 and name[3] == "e"


def read_biwi(root, split: str | Sequence[str] = "train", *, lips_mask=None,
              upper_mask=None) -> DatasetListing:
    """BIWI layout (3,895 vertices, 25 fps); emotional takes (4th character 'e') are skipped."""
    return _read_per_subject_template_layout(root, split, "biwi", ".obj", BIWI_SPLITS,
                                             lips_mask, upper_mask, skip=_is_emotional)


def read_multiface(root, split: str | Sequence[str] = "train", *, lips_mask=None,
                   upper_mask=None) -> DatasetListing:
    """Multiface layout (5,471 vertices, 30 fps)."""
    return _read_per_subject_template_layout(root, split, "multiface", ".ply", MULTIFACE_SPLITS,
                                             lips_mask, upper_mask)


def read_meta(root) -> dict:
    path = Path(root) / "meta.json"
    if not path.is_file():
        raise DatasetError(f"general: {path} not found; the general layout needs meta.json "
                           "with 'fps' and 'splits'")
    try:
        meta = json.loads(path.read_text(encoding="utf-8"))
    except Exception as exc:
        raise DatasetError(f"general: could not read {path}: {exc}") from exc
    if not isinstance(meta, dict) or "fps" not in meta or not isinstance(meta.get("splits"), dict):
        raise DatasetError(f"general: {path} needs keys 'fps' (number) and 'splits' "
                           "({train, val, test: [subjects]})")
    try:
        fps = float(meta["fps"])
    except (TypeError, ValueError):
        raise DatasetError(f"general: {path}: 'fps' must be a number, got {meta['fps']!r}") from None
    if not fps > 0:
        raise DatasetError(f"general: {path}: 'fps' must be positive, got {fps}")
    return meta


def read_clips(path) -> dict[str, dict]:
    """Per-clip records of a generator's clips.json (training.synth: voice, language, phonemes,
    ...) by clip name; {} when the file does not exist (datasets other than ours)."""
    path = Path(path)
    if not path.is_file():
        return {}
    try:
        return json.loads(path.read_text(encoding="utf-8")).get("clips", {})
    except Exception as exc:
        raise DatasetError(f"could not read {path}: {exc}") from exc


def read_general(root, split: str | Sequence[str] = "train") -> DatasetListing:
    """General layout (meta.json, templates/<s>.npz, masks/<s>_lips.txt, masks/<s>_upper.txt,
    wav/, vertices/). Each subject has its own topology. A missing mask file gives None."""
    root = Path(root)
    meta = read_meta(root)
    fps = float(meta["fps"])
    splits = {k: [str(s) for s in v] for k, v in meta["splits"].items()}
    subjects = resolve_split(split, splits, "general")
    clips = _list_clips(root, "vertices", subjects, fps, "general")
    out = {}
    for s in _used_subjects(clips):
        verts, faces = _template(root, s, ".npz", "general")
        masks = {}
        for part in ("lips", "upper"):
            mpath = root / "masks" / f"{s}_{part}.txt"
            idx = load_index_file(mpath) if mpath.is_file() else None
            masks[part] = _check_indices(idx, len(verts), f"{mpath.name}")
        out[s] = Subject(s, verts, faces, masks["lips"], masks["upper"])
    return DatasetListing("general", root, subjects, fps, clips, out)


READERS = {"vocaset": read_vocaset, "biwi": read_biwi, "multiface": read_multiface,
           "general": read_general}


def read_dataset(layout: str, root, split="train", **kwargs) -> DatasetListing:
    if layout not in READERS:
        raise DatasetError(f"unknown layout '{layout}'; use one of {sorted(READERS)}")
    return READERS[layout](root, split, **kwargs)


# --------------------------------------------------------------------------- motion and checks

def load_motion(clip: Clip) -> np.ndarray:
    """Vertex positions float32 [T, V, 3] at ``clip.fps`` (vocaset: every 2nd stored frame)."""
    path = Path(clip.vertices_path)
    if not path.is_file():
        raise DatasetError(f"{clip.name}: vertices file not found: {path}")
    try:
        arr = np.load(path, allow_pickle=False)
    except Exception as exc:
        raise DatasetError(f"{clip.name}: could not read {path.name}: {exc}") from exc
    if arr.ndim == 2:
        if arr.shape[1] % 3:
            raise DatasetError(f"{clip.name}: {path.name} has {arr.shape[1]} columns per frame, "
                               "not a multiple of 3 (x, y, z per vertex)")
        arr = arr.reshape(arr.shape[0], -1, 3)
    elif arr.ndim != 3 or arr.shape[2] != 3:
        raise DatasetError(f"{clip.name}: {path.name} has shape {list(arr.shape)}; "
                           "expected [T, V, 3] or [T, 3V]")
    if clip.frame_step > 1:
        arr = arr[:: clip.frame_step]
    return np.ascontiguousarray(arr, dtype=np.float32)


def audio_duration(path) -> float:
    import soundfile as sf

    try:
        info = sf.info(str(path))
    except Exception as exc:
        raise DatasetError(f"could not read audio {Path(path).name}: {exc}") from exc
    return info.frames / float(info.samplerate)


def check_clip(clip: Clip, subject: Subject, motion: np.ndarray | None = None) -> None:
    """Raise DatasetError if the clip cannot be used: missing files, empty or non-finite motion,
    vertex count unlike the template, audio shorter than the motion (by more than one frame)."""
    missing = [str(p) for p in (clip.wav_path, clip.vertices_path) if not Path(p).is_file()]
    if missing:
        raise DatasetError(f"{clip.name}: missing file(s): {', '.join(missing)}")
    if motion is None:
        motion = load_motion(clip)
    T = motion.shape[0]
    if T == 0:
        raise DatasetError(f"{clip.name}: motion is empty (0 frames) in {Path(clip.vertices_path).name}")
    if motion.shape[1] != subject.n_vertices:
        raise DatasetError(
            f"{clip.name}: motion has {motion.shape[1]} vertices but the template of subject "
            f"'{subject.name}' has {subject.n_vertices}")
    if not np.isfinite(motion).all():
        raise DatasetError(f"{clip.name}: motion has NaN or infinite coordinates")
    dur = audio_duration(clip.wav_path)
    need = (T - 1) / clip.fps - 1.0 / clip.fps
    if dur < need:
        raise DatasetError(
            f"{clip.name}: audio is {dur:.3f} s but the motion has {T} frames at {clip.fps:g} fps "
            f"({(T - 1) / clip.fps:.3f} s); the audio is shorter than the motion")


def check_all(listing: DatasetListing, strict: bool = True) -> list[tuple[Clip, str]]:
    """Check every clip; strict: raise on the first problem, else return [(clip, message)]."""
    problems = []
    for clip in listing:
        try:
            check_clip(clip, listing.subject_of(clip))
        except DatasetError as exc:
            if strict:
                raise
            problems.append((clip, str(exc)))
    return problems
