"""Dataset readers on tiny fake datasets of every layout (built in tmp_path)."""
from __future__ import annotations

import json
import os
import pickle
import sys
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

from backend.mesh_io import save_mesh_npz, save_obj
from training import datasets as ds
from training.datasets import DatasetError, check_clip, load_motion

SR = 16000


# --------------------------------------------------------------------------- builders

def octahedron(scale=0.05, shift=0.0):
    v = np.array([[1, 0, 0], [-1, 0, 0], [0, 1, 0], [0, -1, 0], [0, 0, 1], [0, 0, -1]],
                 np.float64) * scale + shift
    f = np.array([[0, 2, 4], [2, 1, 4], [1, 3, 4], [3, 0, 4],
                  [2, 0, 5], [1, 2, 5], [3, 1, 5], [0, 3, 5]], np.int64)
    return v, f


def grid_mesh(nx, ny, scale=0.02):
    xs, ys = np.meshgrid(np.arange(nx, dtype=np.float64), np.arange(ny, dtype=np.float64))
    v = np.stack([xs.ravel(), ys.ravel(), np.zeros(nx * ny)], 1) * scale
    f = []
    for j in range(ny - 1):
        for i in range(nx - 1):
            a = j * nx + i
            f += [[a, a + 1, a + nx], [a + 1, a + nx + 1, a + nx]]
    return v, np.asarray(f, np.int64)


def write_wav(path: Path, seconds: float, sr: int = SR):
    path.parent.mkdir(parents=True, exist_ok=True)
    n = int(round(seconds * sr))
    t = np.arange(n) / sr
    sf.write(str(path), (0.1 * np.sin(2 * np.pi * 220 * t)).astype(np.float32), sr)


def write_ply(path: Path, v, f):
    from plyfile import PlyData, PlyElement

    vert = np.array([tuple(x) for x in v], dtype=[("x", "f4"), ("y", "f4"), ("z", "f4")])
    face = np.array([(list(x),) for x in f], dtype=[("vertex_indices", "i4", (3,))])
    PlyData([PlyElement.describe(vert, "vertex"), PlyElement.describe(face, "face")]).write(str(path))


def motion(rng, T, template, amp=0.002):
    return (template[None] + amp * rng.standard_normal((T, *template.shape))).astype(np.float32)


VOCA_TRAIN = "FaceTalk_170728_03272_TA"
VOCA_TRAIN2 = "FaceTalk_170904_00128_TA"
VOCA_VAL = "FaceTalk_170811_03275_TA"
VOCA_TEST = "FaceTalk_170809_00138_TA"


def make_vocaset(root: Path, protocol: int = 2, rng=None):
    """vocaset layout: 60-fps motion stored (T60, 3V), templates.pkl, FLAME-like faces mesh."""
    rng = rng or np.random.default_rng(0)
    v, f = octahedron()
    for d in ("wav", "vertices_npy"):
        (root / d).mkdir(parents=True, exist_ok=True)
    clips = {VOCA_TRAIN: [1, 2], VOCA_TRAIN2: [1], VOCA_VAL: [3], VOCA_TEST: [1]}
    for subj, sentences in clips.items():
        for s in sentences:
            name = f"{subj}_sentence{s:02d}"
            raw = motion(rng, 11, v).reshape(11, -1)  # 11 frames at 60 fps -> 6 at 30 fps
            np.save(root / "vertices_npy" / f"{name}.npy", raw)
            write_wav(root / "wav" / f"{name}.wav", 0.4)
    templates = {s: v + 0.001 * i for i, s in enumerate(clips)}
    with open(root / "templates.pkl", "wb") as fh:
        pickle.dump(templates, fh, protocol=protocol)
    faces_mesh = root / "flame_faces.obj"
    save_obj(faces_mesh, v, f)
    from scipy.io import savemat

    lips = root / "FLAME_lips_idx.mat"
    savemat(str(lips), {"lips_idx": np.array([[1], [3], [4]], np.uint16)})  # 1-based
    upper = root / "upper_mask.npy"
    np.save(upper, np.array([2, 4], np.int64))
    return {"faces_mesh": faces_mesh, "lips_mask": lips, "upper_mask": upper, "templates": templates,
            "faces": f}


def make_biwi(root: Path, rng=None):
    rng = rng or np.random.default_rng(1)
    v, f = octahedron()
    (root / "templates").mkdir(parents=True, exist_ok=True)
    (root / "vertices").mkdir(parents=True, exist_ok=True)
    for subj in ("F1", "M1", "F7", "F8", "M6"):
        save_obj(root / "templates" / f"{subj}.obj", v, f)
    for name in ("F1_01", "F1_02", "F1_e01", "M1_03", "M1_e02", "F7_01", "F8_01", "M6_e01", "M6_05"):
        np.save(root / "vertices" / f"{name}.npy", motion(rng, 5, v))
        write_wav(root / "wav" / f"{name}.wav", 0.3)
    return v, f


def make_multiface(root: Path, rng=None):
    rng = rng or np.random.default_rng(2)
    v, f = octahedron()
    (root / "templates").mkdir(parents=True, exist_ok=True)
    (root / "vertices").mkdir(parents=True, exist_ok=True)
    for subj in ("20171024", "20180226", "20190828", "20181017"):
        write_ply(root / "templates" / f"{subj}.ply", v, f)
    for name in ("20171024_sentence01", "20171024_sentence02", "20180226_sentence07",
                 "20190828_sentence01", "20181017_sentence03"):
        np.save(root / "vertices" / f"{name}.npy", motion(rng, 6, v))
        write_wav(root / "wav" / f"{name}.wav", 0.3)
    return v, f


GENERAL_SUBJECTS = {"train": ["s01", "s02"], "val": ["s03"], "test": ["s04", "s05"]}


def make_general(root: Path, rng=None, T=12, fps=30, clips_per_subject=2, subjects=GENERAL_SUBJECTS):
    """General layout; every subject its own topology (grids of different sizes)."""
    rng = rng or np.random.default_rng(3)
    for d in ("templates", "masks", "wav", "vertices"):
        (root / d).mkdir(parents=True, exist_ok=True)
    (root / "meta.json").write_text(json.dumps({"fps": fps, "splits": subjects}))
    meshes = {}
    all_subj = [s for part in subjects.values() for s in part]
    for k, subj in enumerate(all_subj):
        v, f = grid_mesh(3 + k % 3, 4)
        meshes[subj] = (v, f)
        save_mesh_npz(root / "templates" / f"{subj}.npz", v, f)
        nx = 3 + k % 3
        lips = np.arange(nx, 3 * nx)  # rows y=1 and y=2: split into upper/lower by mean y
        upper = np.arange(3 * nx, 4 * nx)
        (root / "masks" / f"{subj}_lips.txt").write_text("\n".join(map(str, lips)) + "\n")
        (root / "masks" / f"{subj}_upper.txt").write_text("\n".join(map(str, upper)) + "\n")
        for c in range(clips_per_subject):
            name = f"{subj}_sentence{c + 1:02d}"
            np.save(root / "vertices" / f"{name}.npy", motion(rng, T, v))
            write_wav(root / "wav" / f"{name}.wav", (T - 1) / fps + 0.05)
    return meshes


def names(listing):
    return [c.name for c in listing]


# --------------------------------------------------------------------------- vocaset

def test_vocaset_default_split_lists_train_clips(tmp_path):
    info = make_vocaset(tmp_path)
    lst = ds.read_vocaset(tmp_path, faces_mesh=info["faces_mesh"], lips_mask=info["lips_mask"],
                          upper_mask=info["upper_mask"])
    assert names(lst) == [f"{VOCA_TRAIN}_sentence01", f"{VOCA_TRAIN}_sentence02",
                          f"{VOCA_TRAIN2}_sentence01"]
    assert len(lst) == 3 and lst[0].subject == VOCA_TRAIN
    assert all(c.fps == 30.0 for c in lst)
    assert lst[0].wav_path == tmp_path / "wav" / f"{VOCA_TRAIN}_sentence01.wav"
    assert lst[0].vertices_path == tmp_path / "vertices_npy" / f"{VOCA_TRAIN}_sentence01.npy"
    assert sorted(lst.subjects) == [VOCA_TRAIN, VOCA_TRAIN2]
    subj = lst.subjects[VOCA_TRAIN]
    assert subj.template_vertices.dtype == np.float64 and subj.template_vertices.shape == (6, 3)
    np.testing.assert_allclose(subj.template_vertices, info["templates"][VOCA_TRAIN])
    assert subj.faces.dtype == np.int64
    np.testing.assert_array_equal(subj.faces, info["faces"])
    np.testing.assert_array_equal(subj.lips, [0, 2, 3])  # 1-based .mat -> 0-based
    np.testing.assert_array_equal(subj.upper, [2, 4])


@pytest.mark.parametrize("split,expected", [
    ("val", [f"{VOCA_VAL}_sentence03"]),
    ("test", [f"{VOCA_TEST}_sentence01"]),
    ([VOCA_VAL, VOCA_TEST], [f"{VOCA_TEST}_sentence01", f"{VOCA_VAL}_sentence03"]),
])
def test_vocaset_splits(tmp_path, split, expected):
    info = make_vocaset(tmp_path)
    lst = ds.read_vocaset(tmp_path, split, faces_mesh=info["faces_mesh"], lips_mask=info["lips_mask"])
    assert names(lst) == expected
    assert lst.subjects[lst[0].subject].upper is None


def test_vocaset_official_split_lists():
    assert len(ds.VOCASET_SPLITS["train"]) == 8 and len(ds.VOCASET_SPLITS["val"]) == 2
    assert "FaceTalk_170731_00024_TA" in ds.VOCASET_SPLITS["test"]
    assert ds.BIWI_SPLITS["test"] == ["F8", "M6"] and len(ds.BIWI_SPLITS["train"]) == 10
    assert ds.MULTIFACE_SPLITS["val"] == ["20190828", "20190521"]
    assert len(ds.MULTIFACE_SPLITS["train"]) == 9


def test_vocaset_load_motion_subsamples_and_reshapes(tmp_path):
    info = make_vocaset(tmp_path)
    lst = ds.read_vocaset(tmp_path, faces_mesh=info["faces_mesh"], lips_mask=info["lips_mask"])
    clip = lst[0]
    raw = np.load(clip.vertices_path)
    assert raw.shape == (11, 18)
    m = load_motion(clip)
    assert m.shape == (6, 6, 3) and m.dtype == np.float32
    np.testing.assert_array_equal(m, raw[::2].reshape(6, 6, 3))
    np.testing.assert_array_equal(m[1, 2], raw[2, 6:9])  # 30-fps frame 1 = stored frame 2
    check_clip(clip, lst.subject_of(clip))


@pytest.mark.parametrize("protocol", [2, 4, 5])
def test_vocaset_templates_pickle_protocols(tmp_path, protocol):
    info = make_vocaset(tmp_path, protocol=protocol)
    tpl = ds.load_vocaset_templates(tmp_path / "templates.pkl")
    np.testing.assert_allclose(tpl[VOCA_TEST], info["templates"][VOCA_TEST])


class _Evil:
    def __init__(self, cmd):
        self.cmd = cmd

    def __reduce__(self):
        return (os.system, (self.cmd,))


class _EvalEvil:
    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return (eval, (f"open({str(self.marker)!r}, 'w').close()",))


@pytest.mark.parametrize("kind", ["os.system", "eval"])
def test_vocaset_malicious_pickle_is_refused_without_running(tmp_path, kind):
    info = make_vocaset(tmp_path)
    marker = tmp_path / "PWNED"
    evil = _Evil(f"touch {marker}") if kind == "os.system" else _EvalEvil(marker)
    payload = {VOCA_TRAIN: info["templates"][VOCA_TRAIN], "x": evil}
    with open(tmp_path / "templates.pkl", "wb") as fh:
        pickle.dump(payload, fh, protocol=2)
    assert b"system" in (tmp_path / "templates.pkl").read_bytes() or kind == "eval"
    with pytest.raises(DatasetError, match="refusing to load") as exc:
        ds.read_vocaset(tmp_path, faces_mesh=info["faces_mesh"], lips_mask=info["lips_mask"])
    assert "only numpy arrays" in str(exc.value)
    assert not marker.exists()
    with pytest.raises(DatasetError):
        ds.load_array_pickle(tmp_path / "templates.pkl")
    assert not marker.exists()


def test_vocaset_missing_template_for_subject(tmp_path):
    info = make_vocaset(tmp_path)
    with open(tmp_path / "templates.pkl", "wb") as fh:
        pickle.dump({VOCA_TRAIN: info["templates"][VOCA_TRAIN]}, fh, protocol=2)
    with pytest.raises(DatasetError, match=f"no template for subject '{VOCA_TRAIN2}'"):
        ds.read_vocaset(tmp_path, faces_mesh=info["faces_mesh"], lips_mask=info["lips_mask"])
    (tmp_path / "templates.pkl").unlink()
    with pytest.raises(DatasetError, match="template file not found"):
        ds.read_vocaset(tmp_path, faces_mesh=info["faces_mesh"], lips_mask=info["lips_mask"])


def test_vocaset_lips_mask_out_of_range(tmp_path):
    info = make_vocaset(tmp_path)
    bad = tmp_path / "lips.txt"
    bad.write_text("0, 1, 6")  # 0-based text; 6 is past the 6-vertex template
    with pytest.raises(DatasetError, match="valid 0..5"):
        ds.read_vocaset(tmp_path, faces_mesh=info["faces_mesh"], lips_mask=bad)
    with pytest.raises(DatasetError, match="mask file not found"):
        ds.read_vocaset(tmp_path, faces_mesh=info["faces_mesh"], lips_mask=tmp_path / "nope.mat")


def test_vocaset_real_flame_lips_mask():
    mat = Path(__file__).resolve().parents[1] / ".." / "shared" / "data" / "masks" / "vocaset" / "FLAME_lips_idx.mat"
    if not mat.is_file():
        pytest.skip("../shared is absent (the shared reference data is not in a user's clone)")
    idx = ds.load_index_file(mat, one_based=True, mat_key="lips_idx")
    assert idx.shape == (371,) and idx.min() >= 0 and idx.max() < 5023


# --------------------------------------------------------------------------- BIWI, Multiface

def test_biwi_skips_emotional_takes_and_splits(tmp_path):
    v, f = make_biwi(tmp_path)
    lst = ds.read_biwi(tmp_path)
    assert names(lst) == ["F1_01", "F1_02", "M1_03"]
    assert all(c.fps == 25.0 for c in lst)
    assert sorted(lst.subjects) == ["F1", "M1"]
    np.testing.assert_allclose(lst.subjects["F1"].template_vertices, v)
    np.testing.assert_array_equal(lst.subjects["F1"].faces, f)
    assert lst.subjects["F1"].lips is None
    assert names(ds.read_biwi(tmp_path, "test")) == ["F8_01", "M6_05"]
    assert names(ds.read_biwi(tmp_path, "val")) == ["F7_01"]
    assert names(ds.read_biwi(tmp_path, ["M6"])) == ["M6_05"]
    m = load_motion(lst[0])
    assert m.shape == (5, 6, 3) and m.dtype == np.float32
    np.testing.assert_array_equal(m, np.load(lst[0].vertices_path))
    check_clip(lst[0], lst.subject_of(lst[0]))


def test_biwi_masks_passed_in(tmp_path):
    make_biwi(tmp_path)
    (tmp_path / "lve.txt").write_text("0,1,2\n")
    (tmp_path / "fdd.txt").write_text("3,4")
    lst = ds.read_biwi(tmp_path, "test", lips_mask=tmp_path / "lve.txt", upper_mask=tmp_path / "fdd.txt")
    np.testing.assert_array_equal(lst.subjects["F8"].lips, [0, 1, 2])
    np.testing.assert_array_equal(lst.subjects["F8"].upper, [3, 4])


def test_multiface_listing(tmp_path):
    v, f = make_multiface(tmp_path)
    lst = ds.read_multiface(tmp_path)
    assert names(lst) == ["20171024_sentence01", "20171024_sentence02", "20180226_sentence07"]
    assert all(c.fps == 30.0 for c in lst)
    np.testing.assert_allclose(lst.subjects["20171024"].template_vertices, v, atol=1e-7)
    assert lst.subjects["20171024"].faces.shape == (8, 3)
    assert names(ds.read_multiface(tmp_path, "val")) == ["20190828_sentence01"]
    assert names(ds.read_multiface(tmp_path, "test")) == ["20181017_sentence03"]
    assert load_motion(lst[2]).shape == (6, 6, 3)


def test_missing_template_file_is_named(tmp_path):
    make_multiface(tmp_path)
    (tmp_path / "templates" / "20181017.ply").unlink()
    with pytest.raises(DatasetError, match=r"template of subject '20181017' not found: .*20181017\.ply"):
        ds.read_multiface(tmp_path, "test")


# --------------------------------------------------------------------------- general

def test_general_listing_per_subject_topology(tmp_path):
    meshes = make_general(tmp_path)
    lst = ds.read_general(tmp_path)
    assert names(lst) == ["s01_sentence01", "s01_sentence02", "s02_sentence01", "s02_sentence02"]
    assert lst.fps == 30.0 and lst.layout == "general"
    s1, s2 = lst.subjects["s01"], lst.subjects["s02"]
    assert s1.n_vertices == 12 and s2.n_vertices == 16  # different topologies
    np.testing.assert_allclose(s2.template_vertices, meshes["s02"][0])
    np.testing.assert_array_equal(s2.faces, meshes["s02"][1])
    np.testing.assert_array_equal(s1.lips, np.arange(3, 9))
    np.testing.assert_array_equal(s1.upper, np.arange(9, 12))
    for clip in lst:
        m = load_motion(clip)
        assert m.shape == (12, lst.subject_of(clip).n_vertices, 3)
        check_clip(clip, lst.subject_of(clip))
    assert ds.check_all(lst) == []
    assert names(ds.read_general(tmp_path, "test"))[0] == "s04_sentence01"
    assert names(ds.read_general(tmp_path, ["s03"])) == ["s03_sentence01", "s03_sentence02"]
    assert len(ds.read_general(tmp_path, "all")) == 10
    assert len(ds.read_dataset("general", tmp_path, "val")) == 2


def test_general_missing_masks_give_none(tmp_path):
    make_general(tmp_path)
    (tmp_path / "masks" / "s03_upper.txt").unlink()
    (tmp_path / "masks" / "s03_lips.txt").unlink()
    s = ds.read_general(tmp_path, "val").subjects["s03"]
    assert s.lips is None and s.upper is None


def test_general_meta_errors(tmp_path):
    with pytest.raises(DatasetError, match="meta.json"):
        ds.read_general(tmp_path)
    make_general(tmp_path)
    (tmp_path / "meta.json").write_text(json.dumps({"splits": {}}))
    with pytest.raises(DatasetError, match="'fps'"):
        ds.read_general(tmp_path)


def test_unknown_split_name(tmp_path):
    make_general(tmp_path)
    with pytest.raises(DatasetError, match="unknown split 'dev'"):
        ds.read_general(tmp_path, "dev")
    with pytest.raises(DatasetError, match="unknown layout"):
        ds.read_dataset("flame", tmp_path)


# --------------------------------------------------------------------------- errors

def test_no_clips_for_split_names_expected_subjects(tmp_path):
    make_general(tmp_path, subjects={"train": ["s01"], "val": [], "test": ["alice", "bob"]},
                 clips_per_subject=1)
    # alice and bob have templates but no clip files
    for p in list((tmp_path / "wav").glob("alice*")) + list((tmp_path / "wav").glob("bob*")) \
            + list((tmp_path / "vertices").glob("alice*")) + list((tmp_path / "vertices").glob("bob*")):
        p.unlink()
    with pytest.raises(DatasetError, match="no clips .* for subjects alice, bob"):
        ds.read_general(tmp_path, "test")
    make_biwi(tmp_path / "biwi")
    with pytest.raises(DatasetError, match="F2, F3"):
        ds.read_biwi(tmp_path / "biwi", ["F2", "F3"])
    with pytest.raises(DatasetError, match="neither wav/ nor vertices/"):
        ds.read_biwi(tmp_path / "nothing_here")


def test_check_clip_missing_wav_is_named(tmp_path):
    make_general(tmp_path)
    (tmp_path / "wav" / "s01_sentence02.wav").unlink()
    lst = ds.read_general(tmp_path)
    clip = [c for c in lst if c.name == "s01_sentence02"][0]  # still listed, from vertices/
    with pytest.raises(DatasetError, match=r"s01_sentence02: missing file\(s\): .*wav.s01_sentence02\.wav"):
        check_clip(clip, lst.subject_of(clip))
    problems = ds.check_all(lst, strict=False)
    assert [c.name for c, _ in problems] == ["s01_sentence02"]
    with pytest.raises(DatasetError):
        ds.check_all(lst)


def test_check_clip_missing_vertices_is_named(tmp_path):
    make_general(tmp_path)
    (tmp_path / "vertices" / "s02_sentence01.npy").unlink()
    lst = ds.read_general(tmp_path)
    clip = [c for c in lst if c.name == "s02_sentence01"][0]
    with pytest.raises(DatasetError, match=r"missing file\(s\): .*vertices.s02_sentence01\.npy"):
        check_clip(clip, lst.subject_of(clip))
    with pytest.raises(DatasetError, match="vertices file not found"):
        load_motion(clip)


def test_check_clip_vertex_count_mismatch(tmp_path):
    make_general(tmp_path)
    np.save(tmp_path / "vertices" / "s01_sentence01.npy", np.zeros((12, 7, 3), np.float32))
    lst = ds.read_general(tmp_path)
    with pytest.raises(DatasetError, match="motion has 7 vertices but the template of subject 's01' has 12"):
        check_clip(lst[0], lst.subject_of(lst[0]))


def test_check_clip_audio_shorter_than_motion(tmp_path):
    make_general(tmp_path, T=12, fps=30)
    lst = ds.read_general(tmp_path)
    clip = lst[0]
    # the motion spans (12-1)/30 = 0.367 s; one frame of slack allowed: 10/30 = 0.333 s is fine
    write_wav(clip.wav_path, 10 / 30 + 1e-3)
    check_clip(clip, lst.subject_of(clip))
    write_wav(clip.wav_path, 0.2)
    with pytest.raises(DatasetError, match="audio is 0.200 s but the motion has 12 frames at 30 fps"):
        check_clip(clip, lst.subject_of(clip))


def test_check_clip_empty_motion(tmp_path):
    make_general(tmp_path)
    np.save(tmp_path / "vertices" / "s01_sentence01.npy", np.zeros((0, 12, 3), np.float32))
    lst = ds.read_general(tmp_path)
    with pytest.raises(DatasetError, match="motion is empty"):
        check_clip(lst[0], lst.subject_of(lst[0]))


def test_check_clip_bad_array_shape_and_nan(tmp_path):
    make_general(tmp_path)
    np.save(tmp_path / "vertices" / "s01_sentence01.npy", np.zeros((12, 10), np.float32))
    bad = np.zeros((12, 12, 3), np.float32)
    bad[3, 4, 1] = np.nan
    np.save(tmp_path / "vertices" / "s01_sentence02.npy", bad)
    lst = ds.read_general(tmp_path)
    with pytest.raises(DatasetError, match="not a multiple of 3"):
        load_motion(lst[0])
    with pytest.raises(DatasetError, match="NaN"):
        check_clip(lst[1], lst.subject_of(lst[1]))


def test_dataset_error_is_value_error():
    assert issubclass(DatasetError, ValueError)


def test_vertices_are_never_unpickled(tmp_path):
    make_general(tmp_path)
    marker = tmp_path / "PWNED"
    with open(tmp_path / "vertices" / "s01_sentence01.npy", "wb") as fh:
        np.save(fh, np.array([_Evil(f"touch {marker}")], dtype=object), allow_pickle=True)
    lst = ds.read_general(tmp_path)
    with pytest.raises(DatasetError, match="could not read"):
        load_motion(lst[0])
    assert not marker.exists()


if __name__ == "__main__":  # pragma: no cover
    sys.exit(pytest.main([__file__, "-q"]))
