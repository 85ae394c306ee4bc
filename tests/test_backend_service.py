"""The backend as users drive it: the `animate` CLI, the JSON-lines worker, the operator cache."""
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch

from backend.audio_io import save_wav
from backend.errors import AudioError, NoCheckpoint
from backend.framing import fit_frame, guess_units, metres_per_unit
from backend.inference import Session, animate, resample_motion, resolve_checkpoint
from backend.mesh_io import load_mesh, save_obj
from backend.operator_cache import cache_key, get_operators
from tests.conftest import ROOT, shared_path
from tests.meshes import grid, icosphere

FIX = ("fixtures", "official_scantalk_tiny")


@pytest.fixture()
def env(tmp_path):
    e = dict(os.environ, SCANTALK_CACHE_DIR=str(tmp_path / "cache"), PYTHONPATH=str(ROOT))
    return e


def _expected_offsets(flame_mesh):
    v, _ = flame_mesh
    return np.load(shared_path(*FIX, "expected_vertices.npy")) - v[None].astype(np.float32)


def test_cli_animate_matches_official_prediction_at_24_fps(tmp_path, env, flame_mesh):
    out = tmp_path / "r.npz"
    cmd = [sys.executable, "-m", "backend", "animate", "--mesh", str(shared_path("data", "meshes", "FLAME_sample.ply")),
           "--audio", str(shared_path(*FIX, "speech_16k.wav")), "--checkpoint",
           str(shared_path(*FIX, "official_format_tiny.pth.tar")), "--fps", "24", "--out", str(out)]
    p = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300)
    assert p.returncode == 0, p.stderr
    assert "71 frames at 24 fps" in p.stdout
    with np.load(out) as z:
        offsets, fps, meta = z["offsets"], float(z["fps"]), json.loads(str(z["meta"]))
    assert offsets.dtype == np.float32 and offsets.shape == (71, 5023, 3) and fps == 24.0
    assert meta["native_fps"] == 30 and meta["operators"] == "computed"
    expected = resample_motion(_expected_offsets(flame_mesh), 30, 24)
    assert np.abs(offsets - expected).max() < 1e-4
    # the same job again: operators come from the disk cache
    p = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300)
    assert p.returncode == 0 and "operators disk" in p.stdout


def test_cli_errors_are_readable(tmp_path, env):
    v, f = icosphere(1)
    save_obj(tmp_path / "m.obj", v, f)
    p = subprocess.run([sys.executable, "-m", "backend", "animate", "--mesh", str(tmp_path / "m.obj"),
                        "--audio", str(tmp_path / "nope.wav"), "--out", str(tmp_path / "o.npz")],
                       env=env, capture_output=True, text=True, timeout=120)
    assert p.returncode == 2
    assert "error: audio file not found" in p.stderr and "Traceback" not in p.stderr
    assert not (tmp_path / "o.npz").exists()


def test_missing_default_model_says_how_to_pass_one(monkeypatch, tmp_path):
    import backend.inference as inf

    monkeypatch.setattr(inf, "DEFAULT_CHECKPOINT", tmp_path / "absent.pt")
    with pytest.raises(NoCheckpoint, match="--checkpoint"):
        resolve_checkpoint(None)


def test_units_and_placement_round_trip(tmp_path, flame_mesh):
    """A head in millimetres, moved away from the origin, gets the same motion in millimetres."""
    v, f = flame_mesh
    ckpt = shared_path(*FIX, "official_format_tiny.pth.tar")
    audio = shared_path(*FIX, "speech_16k.wav")
    session = Session(cache_dir=tmp_path)
    metres = animate((v, f), audio, checkpoint=ckpt, session=session)
    mm = animate((v * 1000 + [300.0, -20.0, 55.0], f), audio, checkpoint=ckpt, session=session)
    assert mm.meta["frame"]["units"] == "mm" and metres.meta["frame"]["units"] == "m"
    assert np.abs(mm.offsets / 1000 - metres.offsets).max() < 2e-5
    assert np.abs(metres.offsets - _expected_offsets(flame_mesh)).max() < 1e-4


def test_head_scale_moves_a_larger_than_life_head_in_proportion(tmp_path, flame_mesh):
    """A head sculpted at 2x life size (in metres or mm), with head_scale 2, gets exactly twice the
    life-size head's motion: the model sees the same head at life size."""
    v, f = flame_mesh
    ckpt = shared_path(*FIX, "official_format_tiny.pth.tar")
    audio = shared_path(*FIX, "speech_16k.wav")
    session = Session(cache_dir=tmp_path)
    life = animate((v, f), audio, checkpoint=ckpt, session=session)
    big = animate((v * 2 + [0.1, 0, 0], f), audio, checkpoint=ckpt, session=session, head_scale=2)
    big_mm = animate((v * 2000, f), audio, checkpoint=ckpt, session=session, head_scale="2")
    assert big.meta["frame"]["head_scale"] == 2.0 and big.meta["frame"]["scale"] == 0.5
    assert big_mm.meta["frame"]["units"] == "mm" and big_mm.meta["frame"]["scale"] == pytest.approx(5e-4)
    assert np.abs(big.offsets / 2 - life.offsets).max() < 2e-6
    assert np.abs(big_mm.offsets / 2000 - life.offsets).max() < 2e-5
    unscaled = animate((v * 2, f), audio, checkpoint=ckpt, session=session)  # the model sees 2x
    assert np.abs(unscaled.offsets / 2 - life.offsets).max() > 1e-4


def test_fit_frame_head_scale():
    verts = np.array([[0, 0, 0], [10, 20, 30.0]])
    frame = fit_frame(verts, (1, 2, 3), 0.37, units="cm", head_scale=2.0)
    np.testing.assert_allclose(frame.to_model(np.array([[5, 10, 15.0], [7, 10, 15.0]])), [[1, 2, 3], [1.01, 2, 3]])
    np.testing.assert_allclose(frame.offsets_from_model(np.array([0.01], np.float32)), [2.0])  # 1 cm at life size
    assert frame.to_dict()["head_scale"] == 2.0
    assert fit_frame(verts, (1, 2, 3), 0.37, mode="none", head_scale=4.0).scale == 0.25
    with pytest.raises(ValueError, match="head_scale"):
        fit_frame(verts, (1, 2, 3), 0.37, head_scale=0.0)
    # what Compact and the rig solve read back: a millimetre is in proportion to the head, as-is too
    assert metres_per_unit(frame.to_dict()) == pytest.approx(0.005)
    assert metres_per_unit(fit_frame(verts, (1, 2, 3), 0.37, mode="none", head_scale=4.0).to_dict()) == 0.25
    assert metres_per_unit(None) == 1.0 and metres_per_unit({"scale": 0.3}) == 1.0  # no units recorded


def test_guess_units():
    assert guess_units(0.44, 0.44) == "m"
    assert guess_units(44.0, 0.44) == "cm"
    assert guess_units(440.0, 0.44) == "mm"
    assert guess_units(17.3, 0.44) == "in"
    frame = fit_frame(np.array([[0, 0, 0], [10, 20, 30.0]]), (1, 2, 3), 0.37, units="cm")
    np.testing.assert_allclose(frame.to_model(np.array([[5, 10, 15.0]])), [[1, 2, 3]])


def test_resample_motion_is_linear_in_time():
    t = np.arange(31) / 30.0  # one second at 30 fps
    off = np.stack([t, 2 * t, -t], axis=1)[:, None, :].repeat(4, axis=1).astype(np.float32)
    out = resample_motion(off, 30, 24)
    assert out.shape == (25, 4, 3)
    np.testing.assert_allclose(out[:, 0, 0], np.arange(25) / 24.0, atol=1e-6)
    assert resample_motion(off, 30, 60).shape[0] == 61
    assert resample_motion(off, 30, 29.97).shape[0] == 30  # 1 s at 29.97 fps: frames 0..29


def test_quads_map_back_to_the_original_vertices(tmp_path):
    v, f = grid(6, 5, spacing=0.02)
    v[:, 2] = 0.01 * np.sin(v[:, 0] * 40)
    quads = [[a, a + 5, a + 6, a + 1] for a in range(len(v)) if a % 5 < 4 and a < 25]
    with open(tmp_path / "quads.obj", "w") as fh:
        fh.writelines(f"v {x} {y} {z}\n" for x, y, z in v)
        fh.writelines("f " + " ".join(str(i + 1) for i in q) + "\n" for q in quads)
    verts, faces = load_mesh(tmp_path / "quads.obj")
    assert len(verts) == 30 and len(faces) == 2 * len(quads)
    res = animate(tmp_path / "quads.obj", shared_path(*FIX, "speech_16k.wav"),
                  checkpoint=shared_path(*FIX, "official_format_tiny.pth.tar"), session=Session(cache_dir=tmp_path))
    assert res.offsets.shape == (89, 30, 3) and np.isfinite(res.offsets).all()


def test_operator_cache_hits_and_rejects_corrupt_or_stale_entries(tmp_path):
    v, f = icosphere(2)
    first, hit = get_operators(v, f, 16, cache=tmp_path)
    assert not hit
    again, hit = get_operators(v, f, 16, cache=tmp_path)
    assert hit and np.array_equal(again.evecs, first.evecs) and (again.gradX != first.gradX).nnz == 0
    _, hit = get_operators(v, f, 12, cache=tmp_path)
    assert not hit  # other settings, other entry
    path = tmp_path / f"{cache_key(v, f, 16, 1e-5)}.npz"
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])  # truncated
    ops, hit = get_operators(v, f, 16, cache=tmp_path)
    assert not hit and np.array_equal(ops.evecs, first.evecs)
    with np.load(path) as z:  # a valid file whose content was changed: checksum mismatch
        arrays = {k: z[k] for k in z.files}
    arrays["evecs"] = arrays["evecs"] * 2
    np.savez(path, **arrays)
    ops, hit = get_operators(v, f, 16, cache=tmp_path)
    assert not hit and np.array_equal(ops.evecs, first.evecs)
    assert get_operators(v, f, 16, cache=tmp_path)[1]  # rewritten, trusted again


def test_long_audio_is_windowed_without_drift(tmp_path, flame_mesh):
    """45 s of the same sentence repeated: the encoder runs in windows, and the last repetition
    moves like the first (no drift, no seams growing with length)."""
    import soundfile as sf

    clip, sr = sf.read(shared_path(*FIX, "speech_16k.wav"), dtype="float32")
    clip = np.pad(clip, (0, 3 * sr - len(clip)))  # exactly 3 s: a 90-frame period
    save_wav(tmp_path / "long.wav", np.tile(clip, 15), sr)
    v, f = flame_mesh
    res = animate((v, f), tmp_path / "long.wav", checkpoint=shared_path(*FIX, "official_format_tiny.pth.tar"),
                  session=Session(cache_dir=tmp_path))
    off = res.offsets
    assert off.shape[0] == 1349  # int(N50 / 50 × 30) for 45 s
    per = 90  # 3 s at 30 fps
    ref = off[per:2 * per]
    gap = [np.abs(off[k * per:(k + 1) * per] - ref).max() for k in range(2, 14)]
    # The same sentence late in the clip is no further from the early one than mid-clip ones are:
    # windows keep timing and features anchored (a single pass over 45 s drifts steadily).
    assert max(gap[-4:]) <= 1.1 * max(gap[:4]) + 1e-6
    speed = np.linalg.norm(np.diff(off, axis=0), axis=2).max(axis=1)
    assert speed[600:].max() < 2.0 * speed[:600].max()  # no jumps at window seams later on


def test_a_long_pause_of_room_tone_keeps_the_lips_still(flame_mesh, monkeypatch):
    """Speech, 30 s of room tone, speech: past the window length the encoder runs in windows, and
    a window holding only the pause must read as it does in a single pass over the whole clip
    (normalised alone, room tone is scaled up to the level of speech: the lips mumbled through it,
    3.9 mm open mid-pause)."""
    import soundfile as sf

    import backend.inference as inference

    speech, sr = sf.read(shared_path(*FIX, "speech_16k.wav"), dtype="float32")
    tone = 1e-3 * np.random.default_rng(0).standard_normal(30 * sr)  # -60 dBFS: a quiet room
    wav = np.concatenate([speech, speech, tone, speech]).astype(np.float32)
    assert len(wav) / sr > inference.WINDOW_SECONDS + inference.OVERLAP_SECONDS  # windowed
    session = Session()
    res = animate(flame_mesh, wav, session=session)
    off, fps = res.offsets, res.fps
    talk_end = 2 * len(speech) / sr
    motion = np.linalg.norm(np.diff(off, axis=0), axis=2).max(axis=1) * 1000  # mm per frame
    pause = motion[int((talk_end + 1) * fps):int((talk_end + 29) * fps)]
    assert pause.mean() < 0.2 * motion[:int(talk_end * fps)].mean()
    assert np.abs(off[int((talk_end + 15) * fps)]).max() * 1000 < 2.0  # near rest mid-pause

    model, _ = session.model(resolve_checkpoint(None), torch.device("cpu"))
    x = torch.from_numpy(wav)[None]
    n = model.num_frames(x.shape[1])
    with torch.inference_mode():
        windowed = inference.raw_latents(model, x, n, model.cfg.fps)
        monkeypatch.setattr(inference, "WINDOW_SECONDS", 1000.0)
        single = inference.raw_latents(model, x, n, model.cfg.fps)
    # In the pause the windows read as one pass (normalised alone: 0.73 of the spread away). Not
    # compared in speech: a single pass's frames drift up to a frame late by the clip's end.
    spread = single.std(dim=0).mean()
    p0, p1 = int((talk_end + 1) * fps), int((talk_end + 29) * fps)
    assert (windowed - single)[p0:p1].abs().mean() < 0.2 * spread


def test_a_silent_clip_leaves_the_face_at_rest_and_says_so(flame_mesh):
    """Digital silence and a hiss far below speech give zero offsets and a warning that says why
    (the model alone held the mouth 3 mm open on silence and mumbled on hiss); the same speech
    recorded 30 dB quieter than the fixture still animates as it does at its own level."""
    import soundfile as sf

    from backend.inference import SILENT_DBFS

    speech, sr = sf.read(shared_path(*FIX, "speech_16k.wav"), dtype="float32")
    session = Session()
    hiss = 10 ** (-75 / 20) * np.random.default_rng(0).standard_normal(3 * sr)
    for wav in (np.zeros(3 * sr), hiss):
        res = animate(flame_mesh, wav.astype(np.float32), session=session)
        assert res.offsets.shape == (91, len(flame_mesh[0]), 3)
        assert not res.offsets.any()
        assert [w for w in res.meta["warnings"] if "silent" in w] == res.meta["warnings"]
        assert f"below {SILENT_DBFS:.0f}" in res.meta["warnings"][0]
    loud = animate(flame_mesh, speech, session=session)
    quiet = animate(flame_mesh, speech * 10 ** (-30 / 20), session=session)
    assert not any("silent" in w for w in loud.meta["warnings"] + quiet.meta["warnings"])
    assert np.abs(quiet.offsets - loud.offsets).max() < 0.05 * np.abs(loud.offsets).max()


# ---- the worker, driven through its protocol ------------------------------------------------


class Worker:
    def __init__(self, env):
        self.p = subprocess.Popen([sys.executable, "-m", "backend", "serve"], env=env, text=True,
                                  stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE)

    def send(self, **req):
        self.p.stdin.write(json.dumps(req) + "\n")
        self.p.stdin.flush()

    def read(self):
        line = self.p.stdout.readline()
        assert line, f"worker exited: {self.p.stderr.read()[-2000:]}"
        return json.loads(line)  # every stdout line must be JSON

    def until(self, rid, events=("result", "error", "cancelled"), seen=None):
        while True:
            ev = self.read()
            if seen is not None:
                seen.append(ev)
            if ev.get("id") == rid and ev["event"] in events:
                return ev


def test_worker_protocol_end_to_end(tmp_path, env, flame_mesh):
    v, f = flame_mesh
    mesh = tmp_path / "head.npz"
    np.savez(mesh, vertices=v, faces=f)
    biwi = tmp_path / "biwi.npz"
    bv, bf = load_mesh(shared_path("data", "meshes", "BIWI.ply"))
    np.savez(biwi, vertices=bv, faces=bf)
    ckpt = str(shared_path(*FIX, "official_format_tiny.pth.tar"))
    audio = str(shared_path(*FIX, "speech_16k.wav"))
    w = Worker(env)
    try:
        ready = w.read()
        assert ready["event"] == "ready" and ready["pid"] == w.p.pid
        w.send(id="p", cmd="ping")
        assert w.read() == {"event": "pong", "id": "p", "version": ready["version"]}
        w.send(id="d", cmd="doctor")
        doc = w.read()
        assert doc["event"] == "result" and doc["cuda_available"] in (False, True) and "cache_dir" in doc

        seen = []
        w.send(id="a1", cmd="animate", mesh=str(mesh), audio=audio, out=str(tmp_path / "a1.npz"),
               checkpoint=ckpt, fps=25)
        res = w.until("a1", seen=seen)
        assert res["event"] == "result", res
        stages = [e["stage"] for e in seen if e["event"] == "progress"]
        assert stages[0] == "load_mesh" and "operators" in stages and stages[-1] == "write"
        fr = [e["fraction"] for e in seen if e["event"] == "progress"]
        assert fr == sorted(fr) and fr[-1] == 1.0
        with np.load(res["out"]) as z:
            assert z["offsets"].shape == (res["frames"], 5023, 3) and float(z["fps"]) == 25.0
        assert res["meta"]["operators"] == "computed" and not res["meta"]["model_warm"]

        t = time.perf_counter()
        w.send(id="a2", cmd="animate", mesh=str(mesh), audio=audio, out=str(tmp_path / "a2.npz"), checkpoint=ckpt)
        res2 = w.until("a2")
        warm_seconds = time.perf_counter() - t
        assert res2["meta"]["operators"] == "memory" and res2["meta"]["model_warm"]
        assert warm_seconds < res["timings"]["total"] + 5

        w.send(id="bad", cmd="animate", mesh=str(mesh), audio=str(tmp_path / "missing.wav"),
               out=str(tmp_path / "bad.npz"), checkpoint=ckpt)
        err = w.until("bad")
        assert err["event"] == "error" and err["code"] == "bad_audio" and "not found" in err["message"]
        w.send(id="bad2", cmd="animate", mesh=str(mesh), audio=audio, out=str(tmp_path / "b2.npz"),
               checkpoint=str(tmp_path / "missing.pt"))
        err = w.until("bad2")
        assert err["code"] == "bad_checkpoint" and "not found" in err["message"]

        # cancel a long job (23k vertices, operators not cached) while it runs
        w.send(id="long", cmd="animate", mesh=str(biwi), audio=audio, out=str(tmp_path / "long.npz"),
               checkpoint=ckpt, normalize="none")
        while True:
            ev = w.read()
            if ev.get("id") == "long" and ev["event"] == "progress" and ev["stage"] == "load_model":
                break
        w.send(id="c", cmd="cancel", target="long")
        events = []
        w.until("long", seen=events)
        assert any(e == {"event": "result", "id": "c", "cancelled": True} for e in events) or \
            w.until("c")["cancelled"] is True
        assert events[-1]["event"] == "cancelled"
        assert not (tmp_path / "long.npz").exists() and not list(tmp_path.glob("*.tmp"))

        w.p.stdin.write("this is not json\n")
        w.p.stdin.flush()
        assert w.read()["code"] == "bad_request"
        w.send(id="u", cmd="dance")
        assert "unknown cmd" in w.read()["message"]
        w.send(id="s", cmd="shutdown")
        assert w.read() == {"event": "result", "id": "s", "shutdown": True}
        assert w.p.wait(timeout=60) == 0
    finally:
        if w.p.poll() is None:
            w.p.kill()


def test_input_warnings_for_odd_sizes_and_huge_meshes():
    from backend.inference import input_warnings

    head = np.array([[0, 0, 0], [0.2, 0.3, 0.2]])
    assert input_warnings(head, 0.44, 5000) == []
    diag = np.linalg.norm(head[1])
    assert "3.4x the size" in input_warnings(head * 3.4 * 0.44 / diag, 0.44, 5000)[0]
    # past the largest training head (1.5x the mean): a larger-than-life head, told what to set
    assert input_warnings(head * 1.5 * 0.44 / diag, 0.44, 5000) == []
    big = input_warnings(head * 1.8 * 0.44 / diag, 0.44, 5000)
    assert len(big) == 1 and "1.8x the size" in big[0] and "larger than life" in big[0]
    assert "--head-scale" in big[0]
    assert "smaller than life" in input_warnings(head * 0.45 * 0.44 / diag, 0.44, 5000)[0]
    assert "decimated" in input_warnings(head, 0.44, 200_000)[0]


def test_preview_contact_sheet_is_a_png_and_picks_moving_frames(tmp_path):
    from backend.preview import contact_sheet, pick_frames

    v, f = icosphere(2)
    t = np.arange(40)
    offsets = np.zeros((40, len(v), 3), np.float32)
    offsets[:, :10, 1] = (0.01 * np.sin(t / 3.0) ** 2)[:, None]
    mag = np.linalg.norm(offsets - np.median(offsets, axis=0), axis=2)
    frames = pick_frames(mag, 4)
    assert len(frames) == 4 and mag[frames[0]].max() == mag.max(axis=1).min()
    out = contact_sheet(v, f, offsets, 30.0, tmp_path / "p.png", n_frames=4)
    assert out.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


# ---- every number is validated ---------------------------------------------------------------

BAD_OPTIONS = [
    ({"fps": -5}, "fps must be at least 1"), ({"fps": 0}, "fps must be at least 1"),
    ({"fps": float("nan")}, "finite"), ({"fps": float("inf")}, "finite"), ({"fps": 5000}, "at most 1000"),
    ({"fps": "abc"}, "must be a number"), ({"fps": True}, "must be a number"),
    ({"start": float("nan")}, "finite"), ({"start": 1e9}, "start must be at most"),
    ({"start": -1e9}, "start must be at least"),
    ({"duration": 0}, "duration must be at least 0.1"), ({"duration": -2}, "duration must be at least"),
    ({"duration": float("inf")}, "finite"), ({"duration": 1e7}, "duration must be at most"),
    ({"device": "gpu"}, "device must be one of"), ({"normalize": "yes"}, "normalize must be one of"),
    ({"units": "km"}, "units must be one of"), ({"dtype": "int8"}, "dtype must be one of"),
    ({"head_scale": 0}, "head_scale must be at least 0.1"), ({"head_scale": 20}, "head_scale must be at most 10"),
    ({"head_scale": "big"}, "head_scale must be a number"),
]


@pytest.mark.parametrize("kw,msg", BAD_OPTIONS)
def test_animate_options_refuse_bad_values(kw, msg):
    from backend.errors import BadRequest
    from backend.options import animate_options

    with pytest.raises(BadRequest, match=msg):
        animate_options(**kw)


def test_animate_options_accept_good_values():
    from backend.options import animate_options

    o = animate_options(fps="24", start=-1.5, duration=3, device="cuda:1", units="mm", dtype="float16")
    assert o == {"fps": 24.0, "start": -1.5, "duration": 3.0, "device": "cuda:1", "normalize": "auto",
                 "units": "mm", "dtype": "float16", "head_scale": 1.0}
    assert animate_options(head_scale="2.5")["head_scale"] == 2.5
    assert animate_options()["fps"] is None  # None: the model's native rate


@pytest.mark.parametrize("args,msg", [
    (["--fps", "-5"], "fps must be at least 1"), (["--fps", "0"], "fps must be at least 1"),
    (["--fps", "nan"], "finite"), (["--fps", "1e6"], "at most 1000"),
    (["--start", "inf"], "finite"), (["--duration", "0"], "duration must be at least"),
    (["--duration", "-3"], "duration must be at least"), (["--head-scale", "0"], "head_scale must be at least"),
])
def test_cli_refuses_bad_numbers_with_exit_code_2(tmp_path, env, args, msg):
    cmd = [sys.executable, "-m", "backend", "animate", "--mesh", "m.obj", "--audio", "a.wav",
           "--out", str(tmp_path / "o.npz"), *args]
    p = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=120)
    assert p.returncode == 2, (p.returncode, p.stderr)
    assert msg in p.stderr and "Traceback" not in p.stderr
    assert not list(tmp_path.glob("o.npz*"))


def test_library_animate_refuses_fps_zero(tmp_path):
    from backend.errors import BadRequest

    with pytest.raises(BadRequest, match="fps"):
        animate(tmp_path / "m.obj", tmp_path / "a.wav", fps=0)


def test_library_animate_takes_samples_in_memory_as_it_takes_a_file():
    """Callers that already hold the audio (evaluation tools, other programs) pass the samples:
    the same window of the same audio animates the same, on the bundled model."""
    from backend.audio_io import load_audio

    wav = shared_path("data", "speech", "sense_and_sensibility_01_austen_64kb-0870.wav")
    mesh = ROOT / "backend" / "assets" / "demo_head.obj"
    session = Session()
    from_file = animate(mesh, wav, start=0.5, duration=1.0, device="cpu", session=session)
    from_memory = animate(mesh, load_audio(wav), start=0.5, duration=1.0, device="cpu", session=session)
    assert from_file.offsets.shape[0] == 31 and np.abs(from_file.offsets).max() > 1e-4
    np.testing.assert_array_equal(from_memory.offsets, from_file.offsets)
    with pytest.raises(AudioError, match="1-D float"):
        animate(mesh, np.zeros((16000, 2), np.float32), device="cpu", session=session)


def test_worker_answers_bad_numbers_with_error_events(tmp_path, env):
    w = Worker(env)
    try:
        assert w.read()["event"] == "ready"
        base = dict(cmd="animate", mesh=str(tmp_path / "m.npz"), audio=str(tmp_path / "a.wav"),
                    out=str(tmp_path / "o.npz"))
        for i, (kw, msg) in enumerate(BAD_OPTIONS):
            if any(isinstance(v, float) and not np.isfinite(v) for v in kw.values()):
                kw = {k: str(v) for k, v in kw.items()}  # JSON has no NaN/inf: sent as strings
            w.send(id=f"b{i}", **{**base, **kw})
            ev = w.until(f"b{i}")
            assert ev["event"] == "error" and ev["code"] == "bad_request", ev
            assert msg in ev["message"] or "finite" in ev["message"], (kw, ev)
        w.send(id="m", cmd="animate", audio="a.wav", out="o.npz")
        ev = w.until("m")
        assert ev["code"] == "bad_request" and "'mesh' is required" in ev["message"]
        w.send(id="s", cmd="shutdown")
        w.until("s")
        assert w.p.wait(timeout=60) == 0
        assert not list(tmp_path.glob("o.npz*"))
    finally:
        if w.p.poll() is None:
            w.p.kill()
