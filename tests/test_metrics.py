"""Metrics against numbers worked out by hand, and the evaluation CLI end to end."""
from __future__ import annotations

import csv
import json
import math
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from training import metrics as M
from training.datasets import read_general, load_motion
from tests.test_datasets import make_general

REPO = Path(__file__).resolve().parents[1]


def tiny_pair():
    """2 frames, 3 vertices; gt at rest (zeros), pred offset per vertex:
    frame 0: v0 (3,4,0) |5|, v1 (0,0,1) |1|, v2 0      frame 1: v0 (0,0,2) |2|, v1 0, v2 (1,0,0) |1|
    """
    gt = np.zeros((2, 3, 3))
    pred = np.zeros((2, 3, 3))
    pred[0, 0] = [3, 4, 0]
    pred[0, 1] = [0, 0, 1]
    pred[1, 0] = [0, 0, 2]
    pred[1, 2] = [1, 0, 0]
    return gt, pred


def test_mve_by_hand():
    gt, pred = tiny_pair()
    # (5 + 1 + 0 + 2 + 0 + 1) / 6 = 1.5
    assert M.mve(gt, pred) == pytest.approx(1.5)
    assert M.mve(pred, gt) == pytest.approx(1.5)
    assert M.mve(gt, gt) == 0.0


def test_lve_by_hand():
    gt, pred = tiny_pair()
    # lips {0,1}: frame 0 max(25, 1) = 25, frame 1 max(4, 0) = 4 -> (25 + 4) / 2 = 14.5
    assert M.lve(gt, pred, [0, 1]) == pytest.approx(14.5)
    # lips {1,2}: frame 0 max(1, 0) = 1, frame 1 max(0, 1) = 1 -> 1
    assert M.lve(gt, pred, [1, 2]) == pytest.approx(1.0)
    # squared, not plain distance: lips {0}: (25 + 4) / 2
    assert M.lve(gt, pred, np.array([0])) == pytest.approx(14.5)


def test_fdd_by_hand_and_sign():
    template = np.zeros((3, 3))
    gt = np.zeros((2, 3, 3))
    pred = np.zeros((2, 3, 3))
    gt[1, 0] = [2, 0, 0]        # v0: ||v - tpl||^2 = 0, 4 -> std 2
    gt[:, 2] = [1, 0, 0]        # v2: 1, 1 -> std 0            std_gt = (2 + 0) / 2 = 1
    pred[1, 0] = [1, 0, 0]      # v0: 0, 1 -> std 0.5
    pred[:, 2] = [0, 3, 0]      # v2: 9, 9 -> std 0            std_pred = 0.25
    upper = [0, 2]
    assert M.upper_face_dynamics(gt, template, upper) == pytest.approx(1.0)
    assert M.upper_face_dynamics(pred, template, upper) == pytest.approx(0.25)
    assert M.fdd(gt, pred, template, upper) == pytest.approx(0.75)
    assert M.fdd(pred, gt, template, upper) == pytest.approx(-0.75)  # sign kept
    # vertex 1 moves a lot in gt but is not in the upper face: no effect
    gt2 = gt.copy()
    gt2[1, 1] = [5, 5, 5]
    assert M.fdd(gt2, pred, template, upper) == pytest.approx(0.75)


def test_truncation_to_common_length():
    gt, pred = tiny_pair()
    long_gt = np.concatenate([gt, np.full((3, 3, 3), 100.0)])  # 5 frames, extra ones far away
    assert M.mve(long_gt, pred) == pytest.approx(1.5)
    assert M.mve(pred, long_gt) == pytest.approx(1.5)
    assert M.lve(long_gt, pred, [0, 1]) == pytest.approx(14.5)
    row = M.evaluate_sequence(long_gt, pred)
    assert row["n_frames"] == 2 and row["mve"] == pytest.approx(1.5)
    with pytest.raises(ValueError, match="vertices"):
        M.mve(np.zeros((2, 3, 3)), np.zeros((2, 4, 3)))


def test_mouth_opening_and_split_lips():
    tpl = np.array([[-1, 1, 0], [1, 1, 0], [-1, -1, 0], [1, -1, 0], [0, 5, 0]], float)
    up, lo = M.split_lips(tpl, [0, 1, 2, 3])
    np.testing.assert_array_equal(up, [0, 1])
    np.testing.assert_array_equal(lo, [2, 3])
    seq = np.stack([tpl, tpl.copy()])
    seq[1, 2:4, 1] = -2  # lower lip drops by 1
    # centroids (0,1,0) and (0,-1,0): 2; then (0,1,0) and (0,-2,0): 3
    np.testing.assert_allclose(M.mouth_opening(seq, up, lo), [2.0, 3.0])


def test_dtw_by_hand():
    assert M.dtw_distance([0, 1, 2], [0, 1, 2]) == 0.0
    # b repeats its first frame: path (0,0)(0,1)(1,2)(2,3) costs 0
    assert M.dtw_distance([0, 1, 2], [0, 0, 1, 2]) == pytest.approx(0.0)
    # a=[0,2], b=[1]: path (0,0)(1,0), cost 1 + 1 = 2 over 2 steps -> 1
    assert M.dtw_distance([0, 2], [1]) == pytest.approx(1.0)
    # a=[0,1], b=[0,3]: diagonal 0 + 2 = 2 (2 steps) beats 0 + 1 + 2 and 0 + 3 + 2 -> 1
    assert M.dtw_distance([0, 1], [0, 3]) == pytest.approx(1.0)
    # 2-D frames use the Euclidean distance: |(0,0)-(3,4)| = 5 each step
    assert M.dtw_distance(np.zeros((3, 2)), np.tile([3.0, 4.0], (3, 1))) == pytest.approx(5.0)


def test_dtw_self_zero_and_shift_below_l2():
    t = np.linspace(0, 4 * np.pi, 120)
    a = np.stack([np.sin(t), np.cos(0.5 * t)], 1)
    assert M.dtw_distance(a, a) == pytest.approx(0.0, abs=1e-12)
    b = np.stack([np.sin(t - 0.5), np.cos(0.5 * (t - 0.5))], 1)  # time-shifted copy
    l2 = np.linalg.norm(a - b, axis=1).mean()
    d = M.dtw_distance(a, b)
    assert d < 0.5 * l2
    assert M.dtw_distance(a, b) == pytest.approx(M.dtw_distance(b, a))


def test_frechet_by_hand():
    t = np.arange(10, dtype=float)
    a = np.stack([t, np.zeros(10)], 1)
    b = np.stack([t, np.full(10, 0.7)], 1)
    assert M.discrete_frechet(a, b) == pytest.approx(0.7)  # parallel lines: their offset
    assert M.discrete_frechet(a, a) == 0.0
    assert M.discrete_frechet([0, 2], [1]) == pytest.approx(1.0)
    # |a_i - b_j| = [[0,2],[1,1],[2,0]]: best coupling (0,0)(1,0)(2,1) or (0,0)(1,1)(2,1) -> 1
    assert M.discrete_frechet([0, 1, 2], [0, 2]) == pytest.approx(1.0)
    # Frechet >= DTW (max vs mean along the path)
    assert M.discrete_frechet([0, 1], [0, 3]) == pytest.approx(2.0)


def test_evaluate_sequence_and_summarise():
    rng = np.random.default_rng(0)
    tpl = np.array([[-1, 1, 0], [1, 1, 0], [-1, -1, 0], [1, -1, 0], [0, 5, 0]], float) * 0.01
    gt = tpl[None] + 0.001 * rng.standard_normal((10, 5, 3))
    pred = tpl[None] + 0.001 * rng.standard_normal((9, 5, 3))
    row = M.evaluate_sequence(gt, pred, tpl, lips=[0, 1, 2, 3], upper=[4])
    assert row["n_frames"] == 9
    assert row["mve"] == pytest.approx(M.mve(gt[:9], pred))
    assert row["lve"] == pytest.approx(M.lve(gt[:9], pred, [0, 1, 2, 3]))
    assert row["fdd"] == pytest.approx(M.fdd(gt[:9], pred, tpl, [4]))
    mg = M.mouth_opening(gt[:9], [0, 1], [2, 3])
    assert row["dtw"] == pytest.approx(M.dtw_distance(mg, M.mouth_opening(pred, [0, 1], [2, 3])))
    assert row["frechet"] >= row["dtw"]
    bare = M.evaluate_sequence(gt, pred)
    assert math.isnan(bare["lve"]) and math.isnan(bare["fdd"]) and math.isnan(bare["dtw"])

    rows = [{"mve": 1.0, "lve": 2.0, "fdd": 0.5, "dtw": 0.1, "frechet": 0.3},
            {"mve": 3.0, "lve": 4.0, "fdd": -0.25, "dtw": 0.3, "frechet": 0.5},
            {"mve": 2.0, "lve": math.nan, "fdd": math.nan, "dtw": math.nan, "frechet": math.nan}]
    s = M.summarise(rows)
    assert s["n_sequences"] == 3
    assert s["mve"] == pytest.approx(2.0)
    assert s["lve"] == pytest.approx(3.0)        # NaN left out
    assert s["fdd"] == pytest.approx(0.125)      # (0.5 - 0.25) / 2, sign kept
    assert s["fdd_abs"] == pytest.approx(0.375)  # (0.5 + 0.25) / 2
    assert s["dtw"] == pytest.approx(0.2) and s["frechet"] == pytest.approx(0.4)
    assert M.summarise([{"mve": 1.0, "lve": math.nan}])["lve"] is None


def _predictions(root: Path, pred_dir: Path, skip=()):
    lst = read_general(root, "test")
    pred_dir.mkdir()
    rng = np.random.default_rng(7)
    written = []
    for i, clip in enumerate(lst):
        if clip.name in skip:
            continue
        gt = load_motion(clip)
        pred = gt[: len(gt) - i] + 0.001 * rng.standard_normal(gt[: len(gt) - i].shape)
        np.save(pred_dir / f"{clip.name}.npy", pred.astype(np.float32))
        written.append(clip.name)
    return lst, written


def test_cli_end_to_end(tmp_path, capsys):
    root = tmp_path / "data"
    make_general(root)
    lst, written = _predictions(root, tmp_path / "pred", skip={"s05_sentence02"})
    out = tmp_path / "eval"
    rc = M.main(["--pred", str(tmp_path / "pred"), "--data", str(root), "--layout", "general",
                 "--split", "test", "--out", str(out), "--mouth-plots", "2"])
    assert rc == 0
    with open(out / "per_sequence.csv", newline="") as fh:
        rows = list(csv.DictReader(fh))
    assert [r["name"] for r in rows] == written == ["s04_sentence01", "s04_sentence02", "s05_sentence01"]
    assert list(rows[0]) == ["name", "subject", "n_frames", "mve", "lve", "fdd", "dtw", "frechet"]
    assert [r["subject"] for r in rows] == ["s04", "s04", "s05"]
    assert [int(r["n_frames"]) for r in rows] == [12, 11, 10]  # truncated to the common length
    # the CSV numbers are the metric functions' numbers
    clip = lst[1]
    subj = lst.subject_of(clip)
    gt, pred = load_motion(clip), np.load(tmp_path / "pred" / f"{clip.name}.npy")
    assert float(rows[1]["mve"]) == pytest.approx(M.mve(gt, pred), rel=1e-6)
    assert float(rows[1]["lve"]) == pytest.approx(M.lve(gt, pred, subj.lips), rel=1e-6)
    assert float(rows[1]["fdd"]) == pytest.approx(
        M.fdd(gt, pred, subj.template_vertices, subj.upper), rel=1e-6)
    summary = json.loads((out / "summary.json").read_text())
    assert summary["n_sequences"] == 3
    assert summary["missing_predictions"] == ["s05_sentence02"]
    assert summary["mve"] == pytest.approx(np.mean([float(r["mve"]) for r in rows]), rel=1e-6)
    assert summary["fdd_abs"] == pytest.approx(np.mean([abs(float(r["fdd"])) for r in rows]), rel=1e-6)
    for key in ("lve", "fdd", "dtw", "frechet"):
        assert summary[key] is not None
    pngs = sorted(p.name for p in out.glob("*.png"))
    assert pngs == ["mouth_s04_sentence01.png", "mouth_s04_sentence02.png", "per_sequence_errors.png"]
    for p in pngs:
        assert (out / p).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert "n_sequences" in capsys.readouterr().out


def test_cli_module_entry_point_and_errors(tmp_path):
    root = tmp_path / "data"
    make_general(root, subjects={"train": ["a1"], "val": [], "test": ["t1"]}, clips_per_subject=1)
    (tmp_path / "empty").mkdir()
    base = [sys.executable, "-m", "training.metrics", "--data", str(root), "--layout", "general",
            "--split", "test", "--out", str(tmp_path / "o")]
    r = subprocess.run(base + ["--pred", str(tmp_path / "empty")], cwd=REPO, capture_output=True,
                       text=True, timeout=60)
    assert r.returncode == 2 and "no predictions found" in r.stderr
    _predictions(root, tmp_path / "pred")
    r = subprocess.run(base + ["--pred", str(tmp_path / "pred"), "--no-plots"], cwd=REPO,
                       capture_output=True, text=True, timeout=60)
    assert r.returncode == 0, r.stderr
    assert json.loads(r.stdout)["n_sequences"] == 1
    assert (tmp_path / "o" / "per_sequence.csv").is_file() and not list((tmp_path / "o").glob("*.png"))


def test_mouth_r_grouped_by_language(tmp_path):
    from training.predict import by_group, clip_languages

    (tmp_path / "clips.json").write_text(json.dumps({"clips": {
        "a_sentence01": {"language": "de"}, "a_sentence02": {"language": "hu"}, "b_sentence01": {}}}))
    langs = clip_languages(tmp_path / "clips.json")
    assert langs == {"a_sentence01": "de", "a_sentence02": "hu", "b_sentence01": "en"}
    got = by_group({"a_sentence01": 0.9, "a_sentence02": 0.7, "b_sentence01": float("nan"), "x": 0.1}, langs)
    assert got == {"de": {"mouth_r_mean": 0.9, "n": 1}, "hu": {"mouth_r_mean": 0.7, "n": 1}}
    assert clip_languages(tmp_path / "missing.json") == {}
