"""`python -m backend batch`: many rows, one warm model, resumable, failures reported, torchrun."""
import json
import os
import shutil
import subprocess
import sys

import numpy as np
import pytest

from backend.result_file import open_result
from tests.conftest import ROOT, shared_path
from tests.meshes import icosphere

FIX = ("fixtures", "official_scantalk_tiny")


@pytest.fixture()
def setup(tmp_path):
    ckpt = shared_path(*FIX, "official_format_tiny.pth.tar")
    audio = shared_path(*FIX, "speech_16k.wav")
    data = tmp_path / "data"
    data.mkdir()
    shutil.copy(audio, data / "voice.wav")
    for name, level in (("a", 1), ("b", 2)):
        v, f = icosphere(level)
        np.savez(data / f"{name}.npz", vertices=v * 0.1, faces=f)
    env = dict(os.environ, SCANTALK_CACHE_DIR=str(tmp_path / "cache"), PYTHONPATH=str(ROOT), OMP_NUM_THREADS="1")
    return tmp_path, data, ckpt, env


def _batch(manifest, out, ckpt, env, *extra, launcher=(sys.executable, "-m", "backend")):
    cmd = [*launcher, "batch", str(manifest), "--out", str(out), "--checkpoint", str(ckpt), "--normalize", "none",
           *extra]
    return subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=600)


def test_batch_with_a_bad_row_then_resume(setup):
    tmp, data, ckpt, env = setup
    manifest = data / "rows.csv"
    manifest.write_text("mesh,audio,fps,out\n"
                        "a.npz,voice.wav,,first\n"
                        "b.npz,missing.wav,,\n"
                        "b.npz,voice.wav,24,\n")
    out = tmp / "out"
    p = _batch(manifest, out, ckpt, env)
    assert p.returncode == 1, p.stderr
    summary = json.loads((out / "batch_summary.json").read_text())
    assert (summary["rows"], summary["done"], summary["failed"], summary["skipped"]) == (3, 2, 1, 0)
    assert summary["failures"][0]["row"] == 2 and "not found" in summary["failures"][0]["error"]
    assert "row 2 failed" in p.stderr and "ETA" in p.stderr
    assert "2 done, 0 skipped (already finished), 1 failed" in p.stdout
    with open_result(out / "first.npz") as r:
        assert r.n_frames == 89 and r.n_vertices == 42
    third = [r for r in summary["results"] if r["row"] == 3][0]
    with open_result(third["out"]) as r:
        assert r.fps == 24.0 and r.n_vertices == 162
    mtimes = {p.name: p.stat().st_mtime_ns for p in out.glob("*.npz")}
    assert len(mtimes) == 2 and not list(out.glob("*.tmp"))

    # resume: finished rows are skipped, the bad one is still reported
    p = _batch(manifest, out, ckpt, env)
    assert p.returncode == 1
    summary = json.loads((out / "batch_summary.json").read_text())
    assert (summary["done"], summary["skipped"], summary["failed"]) == (0, 2, 1)
    assert {p.name: p.stat().st_mtime_ns for p in out.glob("*.npz")} == mtimes

    # the fixed manifest (JSON lines) finishes with exit code 0; bad numbers are a failed row
    manifest = data / "rows.jsonl"
    manifest.write_text('{"mesh": "a.npz", "audio": "voice.wav", "out": "first"}\n# a comment\n\n'
                        '{"mesh": "a.npz", "audio": "voice.wav", "fps": -5}\n'
                        '{"mesh": "a.npz", "audio": "voice.wav", "head_scale": 20}\n'
                        '{"mesh": "a.npz", "audio": "voice.wav", "head_scale": 2, "out": "twice"}\n')
    p = _batch(manifest, out, ckpt, env)
    assert p.returncode == 1
    summary = json.loads((out / "batch_summary.json").read_text())
    assert summary["skipped"] == 1 and summary["done"] == 1
    errors = [f["error"] for f in summary["failures"]]
    assert "fps must be at least 1" in errors[0] and "head_scale must be at most 10" in errors[1]
    with open_result(out / "twice.npz") as r, open_result(out / "first.npz") as first:
        assert r.meta["frame"]["head_scale"] == 2.0
        # the same head said to be twice life size: the model sees half of it, motion comes back 2x
        assert not np.allclose(r.frames(0, 5), first.frames(0, 5))


def test_default_head_scale_keeps_output_names(tmp_path):
    """Rows that do not set head_scale are named as before the option existed, so a batch begun
    with an older version resumes instead of starting over."""
    import hashlib

    from backend.batch import plan
    from backend.options import animate_options

    (tmp_path / "rows.csv").write_text("mesh,audio\na.npz,voice.wav\n")
    row = plan(tmp_path / "rows.csv", tmp_path / "out", {"checkpoint": "c.pt"})[0]
    old = animate_options()
    old.pop("device"), old.pop("head_scale")
    key = json.dumps([str(tmp_path / "a.npz"), str(tmp_path / "voice.wav"), "c.pt", old], sort_keys=True)
    assert row.out == str(tmp_path / "out" / f"a_voice_{hashlib.sha1(key.encode()).hexdigest()[:8]}.npz")


def test_batch_manifest_errors_exit_2(setup):
    tmp, data, ckpt, env = setup
    (data / "bad.csv").write_text("mesh,audio,speed\na.npz,voice.wav,2\n")
    p = _batch(data / "bad.csv", tmp / "o", ckpt, env)
    assert p.returncode == 2 and "unknown column" in p.stderr and "Traceback" not in p.stderr
    p = _batch(data / "missing.csv", tmp / "o", ckpt, env)
    assert p.returncode == 2 and "manifest not found" in p.stderr


def test_batch_under_torchrun_splits_rows(setup):
    tmp, data, ckpt, env = setup
    manifest = data / "rows.jsonl"
    manifest.write_text("".join(json.dumps({"mesh": m, "audio": "voice.wav", "duration": 1.0 + i / 10}) + "\n"
                                for i, m in enumerate(["a.npz", "a.npz", "b.npz", "b.npz"])))
    out = tmp / "out"
    torchrun = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nnodes=1", "--nproc_per_node=2"]
    p = _batch(manifest, out, ckpt, env, "--device", "cpu", launcher=(*torchrun, "-m", "backend"))
    assert p.returncode == 0, p.stderr[-3000:]
    summary = json.loads((out / "batch_summary.json").read_text())
    assert summary["processes"] == 2 and summary["done"] == 4
    ranks = {r["row"]: r["rank"] for r in summary["results"]}
    assert ranks == {1: 0, 2: 0, 3: 1, 4: 1}  # mesh-grouped halves: each mesh on one rank
    assert [r["operators"] for r in sorted(summary["results"], key=lambda r: r["row"])] == \
        ["computed", "memory", "computed", "memory"]
    assert p.stdout.count("batch: 4 rows") == 1  # rank 0 prints the gathered summary
