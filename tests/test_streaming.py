"""Streaming inference: the result file written in chunks and read by frame ranges, the
streaming resampler, bounded memory, cancel and float16 storage."""
import json
import subprocess
import sys
import tracemalloc
import zipfile

import numpy as np
import pytest

from backend.audio_io import save_wav
from backend.inference import Session, StreamResampler, animate, animate_to_file, resample_motion
from backend.result_file import ResultWriter, open_result
from tests.conftest import ROOT, shared_path
from tests.meshes import icosphere

FIX = ("fixtures", "official_scantalk_tiny")


def _write(path, x, chunks=(7,), dtype="float32", fps=24.0, meta=None):
    w = ResultWriter(path, len(x), x.shape[1], dtype)
    a, i = 0, 0
    while a < len(x):
        n = chunks[i % len(chunks)]
        w.write(x[a:a + n])
        a, i = a + n, i + 1
    return w.finish(fps, meta or {"k": [1, 2]})


def test_result_file_round_trip_np_load_and_frame_ranges(tmp_path):
    x = np.random.default_rng(0).normal(size=(53, 11, 3)).astype(np.float32)
    path = _write(tmp_path / "r.npz", x, chunks=(1, 5, 13))
    with np.load(path) as z:  # the documented format: any numpy reads it
        assert np.array_equal(z["offsets"], x) and float(z["fps"]) == 24.0
        assert json.loads(str(z["meta"])) == {"k": [1, 2]}
    with zipfile.ZipFile(path) as z:
        assert z.namelist()[0] == "offsets.npy"
        assert all(i.compress_type == zipfile.ZIP_STORED for i in z.infolist())
    with open_result(path) as r:
        assert (r.fps, r.meta, r.n_frames, r.n_vertices) == (24.0, {"k": [1, 2]}, 53, 11)
        assert isinstance(r.offsets, np.memmap)
        assert np.array_equal(r.frames(10, 20), x[10:20]) and r.frames(10, 20).dtype == np.float32
        assert np.array_equal(r.frames(50, 99), x[50:]) and r.frames(30, 20).shape == (0, 11, 3)
        assert np.array_equal(np.concatenate([b for _, b in r.iter_chunks(8)]), x)
    assert [p.name for p in tmp_path.iterdir()] == ["r.npz"]


def test_result_file_reads_plain_and_compressed_npz(tmp_path):
    x = np.random.default_rng(1).normal(size=(9, 4, 3)).astype(np.float32)
    np.savez(tmp_path / "a.npz", offsets=x, fps=np.float64(30), meta=np.asarray("{}"))
    np.savez_compressed(tmp_path / "b.npz", offsets=x, fps=np.float64(30), meta=np.asarray("{}"))
    for name in ("a.npz", "b.npz"):
        with open_result(tmp_path / name) as r:
            assert r.n_frames == 9 and np.array_equal(r.frames(2, 5), x[2:5])
    np.savez(tmp_path / "c.npz", something=x)
    with pytest.raises(ValueError, match="not a ScanTalk result"):
        open_result(tmp_path / "c.npz")


def test_result_writer_is_atomic_and_checks_shapes(tmp_path):
    w = ResultWriter(tmp_path / "r.npz", 10, 4)
    w.write(np.zeros((3, 4, 3)))
    with pytest.raises(ValueError, match="does not match"):
        w.write(np.zeros((3, 5, 3)))
    with pytest.raises(ValueError, match="3 frames written, 10 announced"):
        w.finish(30, {})
    assert list(tmp_path.iterdir()) == []
    with pytest.raises(RuntimeError):
        with ResultWriter(tmp_path / "r.npz", 10, 4) as w:
            w.write(np.zeros((10, 4, 3)))
            raise RuntimeError("boom")
    assert list(tmp_path.iterdir()) == []


def test_float16_storage_error_is_half_precision(tmp_path):
    x = (np.random.default_rng(2).normal(size=(20, 30, 3)) * 0.01).astype(np.float32)
    path = _write(tmp_path / "h.npz", x, dtype="float16")
    with open_result(path) as r:
        assert r.dtype == np.float16
        err = np.abs(r.frames() - x)
    # round to nearest in float16: relative error <= 2^-11 (normal range)
    assert (err <= np.abs(x) * 2.0 ** -11 + 1e-7).all()
    w = ResultWriter(tmp_path / "big.npz", 1, 1, "float16")
    with pytest.raises(ValueError, match="do not fit float16"):
        w.write(np.full((1, 1, 3), 1e5))
    w.abort()
    assert not (tmp_path / "big.npz").exists()


@pytest.mark.parametrize("fps_in,fps_out,n", [(30, 24, 89), (30, 60, 41), (30, 29.97, 90), (30, 30, 17),
                                               (30, 7, 100), (25, 30, 2)])
def test_stream_resampler_matches_resample_motion(fps_in, fps_out, n):
    rng = np.random.default_rng(n)
    x = rng.normal(size=(n, 5, 3)).astype(np.float32)
    ref = resample_motion(x, fps_in, fps_out)
    for chunks in ([1], [3, 1, 7], [n]):
        rs = StreamResampler(n, fps_in, fps_out)
        out, a, i = [], 0, 0
        while a < n:
            k = chunks[i % len(chunks)]
            out.append(rs.push(x[a:a + k]))
            a, i = a + k, i + 1
        got = np.concatenate(out)
        assert rs.n_out == len(ref) and got.shape == ref.shape
        np.testing.assert_array_equal(got, ref)


def _tiny():
    return shared_path(*FIX, "official_format_tiny.pth.tar"), shared_path(*FIX, "speech_16k.wav")


def test_streamed_file_equals_in_memory_result(tmp_path, monkeypatch):
    import backend.inference as inf

    ckpt, audio = _tiny()
    v, f = icosphere(2)
    v = v * 0.1
    session = Session(cache_dir=tmp_path / "cache")
    ref = animate((v, f), audio, checkpoint=ckpt, session=session, normalize="none")
    monkeypatch.setattr(inf, "WRITE_BLOCK_BYTES", len(v) * 12 * 5)  # many small blocks
    for fps in (None, 24.0):
        res = animate_to_file((v, f), audio, tmp_path / "o.npz", checkpoint=ckpt, fps=fps, session=session,
                              normalize="none")
        with open_result(res.path) as r:
            want = ref.offsets if fps is None else resample_motion(ref.offsets, 30, fps)
            assert r.n_frames == res.frames == len(want)
            assert np.array_equal(r.frames(), want)
            assert r.meta["dtype"] == "float32" and r.meta["frames"] == len(want)


def test_memory_does_not_grow_with_clip_length(tmp_path, monkeypatch):
    """After the audio is encoded, numpy never holds more than a block of frames: the peak of
    traced allocations during decoding and writing stays far below the result's size."""
    import backend.inference as inf

    ckpt, _ = _tiny()
    rng = np.random.default_rng(0)
    save_wav(tmp_path / "a.wav", (0.1 * rng.normal(size=16000 * 40)).astype(np.float32), 16000)
    v, f = icosphere(3)  # 642 vertices, 1201 frames: the result is 9.2 MB
    monkeypatch.setattr(inf, "WRITE_BLOCK_BYTES", 256 * 1024)
    peak = {}

    def progress(stage, fraction, message):
        if stage == "audio":
            tracemalloc.reset_peak()
            peak["base"] = tracemalloc.get_traced_memory()[0]

    tracemalloc.start()
    try:
        res = animate_to_file((v * 0.1, f), tmp_path / "a.wav", tmp_path / "o.npz", checkpoint=ckpt,
                              normalize="none", session=Session(cache_dir=tmp_path / "cache"), progress=progress)
        peak["bytes"] = tracemalloc.get_traced_memory()[1] - peak["base"]
    finally:
        tracemalloc.stop()
    total = res.frames * len(v) * 12
    assert total > 9e6
    assert peak["bytes"] < total / 4, (peak, total)


def test_cancel_during_decode_leaves_no_file(tmp_path):
    from backend.errors import Cancelled

    ckpt, audio = _tiny()
    v, f = icosphere(2)
    seen = []

    def progress(stage, fraction, message):
        seen.append(stage)

    with pytest.raises(Cancelled):
        animate_to_file((v * 0.1, f), audio, tmp_path / "o.npz", checkpoint=ckpt, normalize="none",
                        session=Session(cache_dir=tmp_path / "cache"), progress=progress,
                        cancel=lambda: "audio" in seen)
    assert list(tmp_path.glob("o.npz*")) == []


def test_cli_float16_output(tmp_path):
    import os

    ckpt, audio = _tiny()
    v, f = icosphere(2)
    np.savez(tmp_path / "m.npz", vertices=v * 0.1, faces=f)
    env = dict(os.environ, SCANTALK_CACHE_DIR=str(tmp_path / "cache"), PYTHONPATH=str(ROOT))
    outs = {}
    for dtype in ("float32", "float16"):
        out = tmp_path / f"{dtype}.npz"
        p = subprocess.run([sys.executable, "-m", "backend", "animate", "--mesh", str(tmp_path / "m.npz"),
                            "--audio", str(audio), "--checkpoint", str(ckpt), "--normalize", "none",
                            "--dtype", dtype, "--out", str(out)], env=env, capture_output=True, text=True,
                           timeout=300)
        assert p.returncode == 0, p.stderr
        with np.load(out) as z:
            assert z["offsets"].dtype == np.dtype(dtype)
            outs[dtype] = z["offsets"].astype(np.float32)
    scale = np.abs(outs["float32"]).max()
    assert np.abs(outs["float16"] - outs["float32"]).max() <= scale * 2.0 ** -11 + 1e-8
