"""Long results in Blender: Exact keys written from the result file a chunk of frames at a time
(the same keys as the in-memory write), Compact keys from the backend's basis (the offsets are
never read in Blender), and the warning before a job whose Exact result would be huge."""
import importlib
import math
import wave

import numpy as np
import pytest

bpy = pytest.importorskip("bpy", reason="bpy is not importable: run these tests with a bpy venv's python")

from tests.blender import helpers as H  # noqa: E402
from tests.blender.conftest import PKG  # noqa: E402
from tests.blender.test_end_to_end import WAV, e2e  # noqa: E402,F401


def mod(name):
    return importlib.import_module(f"{PKG}.{name}")


def key_coords(obj) -> dict:
    out = {}
    for kb in obj.data.shape_keys.key_blocks:
        if kb.name.startswith("ST_"):
            a = np.empty(len(kb.data) * 3, np.float32)
            kb.data.foreach_get("co", a)
            out[kb.name] = a
    return out


class CountingReader:
    """The add-on's result reader, recording the largest block of frames asked for at once."""

    def __init__(self, path, log):
        self.r, self.log = mod("result_file").open_result(path), log

    def frames(self, a, b):
        self.log.append(b - a)
        return self.r.frames(a, b)

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.r.close()


def test_exact_from_a_file_in_chunks_writes_the_same_keys(scene, addon, tmp_path):
    wb, basis, rf, mexp = mod("writeback"), mod("basis"), mod("result_file"), mod("mesh_export")
    T, start, strength, sigma = 150, 11, 0.7, 1.5
    a = H.sphere_head("A", subdiv=2)
    V = len(a.data.vertices)
    off_local = H.synthetic_offsets(V, T)
    wb.write_result(a, off_local, start, mode="EXACT", strength=strength, smoothing=sigma)  # all in memory

    R = mexp.rotation_for("Z_UP")  # the file holds model-frame offsets, as the backend writes them
    w = rf.ResultWriter(tmp_path / "r.npz", T, V)
    for i in range(0, T, 40):
        w.write(off_local[i:i + 40] @ R.T.astype(np.float32))
    w.finish(24.0, {})
    b = H.sphere_head("B", subdiv=2)
    reads = []
    info = mexp.ExportInfo(path="", axes="Z_UP", rotation=R, neutral_local=H.coords(b), stats={})
    source = basis.FrameSource(open=lambda: CountingReader(tmp_path / "r.npz", reads), n_frames=T, n_vertices=V,
                               to_local=info.offsets_to_local, strength=strength, smoothing=sigma)
    tag = wb.write_plan(b, basis.exact_plan(source, start))

    assert tag["frames"] == T and tag["frame_start"] == start
    ka, kb = key_coords(a), key_coords(b)
    assert list(ka) == list(kb) and len(ka) == T
    worst = max(float(np.abs(ka[n] - kb[n]).max()) for n in ka)
    assert worst < 1e-7, worst  # the same keys, up to float32 rounding of the rotation
    # never more than a chunk and the smoothing's reach either side at once
    assert max(reads) <= 64 + 2 * math.ceil(3 * sigma) < T and sum(reads) < 2 * T


def test_compact_and_exact_read_the_result_in_parts(e2e, scene, monkeypatch):  # noqa: F811
    """Through the operator and a real worker: Compact never reads the offsets in Blender (only the
    backend's K x V basis and T x K weights), its keyed weights are in [0, 1] and its error within
    Max Error; Exact reads them a chunk of frames at a time."""
    rf, wb, pl = mod("result_file"), mod("writeback"), mod("pipeline")
    obj = H.test_head("Head")
    real_frames = rf.ResultFile.frames
    asked = []

    def no_offsets(self, a=0, b=None):
        raise AssertionError("Compact read the offsets in Blender")

    monkeypatch.setattr(rf.ResultFile, "frames", no_offsets)
    assert bpy.ops.scantalk.animate(audio_path=str(WAV), mode="COMPACT", checkpoint=e2e, max_error_mm=0.1) == {"FINISHED"}
    tag = wb.result_info(obj)
    assert tag["mode"] == "COMPACT" and 1 <= tag["basis_size"] <= 64
    assert tag["max_error"] * tag["metres_per_unit"] * 1000 <= 0.1 * (1 + 1e-6)
    for name in tag["keys"]:
        k = H.keyframes(H.our_fcurves(obj)['key_blocks["%s"].value' % name])
        assert k[:, 1].min() >= 0.0 and k[:, 1].max() <= 1.0

    def counting(self, a=0, b=None):
        out = real_frames(self, a, b)
        asked.append(len(out))
        return out

    monkeypatch.setattr(rf.ResultFile, "frames", counting)
    assert bpy.ops.scantalk.animate(audio_path=str(WAV), mode="EXACT", checkpoint=e2e) == {"FINISHED"}
    tag = wb.result_info(obj)
    assert tag["mode"] == "EXACT" and max(asked) <= pl.EXACT_CHUNK < tag["frames"]


def silence(path, seconds):
    with wave.open(str(path), "wb") as w:
        w.setnchannels(1)
        w.setsampwidth(2)
        w.setframerate(8000)
        w.writeframes(b"\0\0" * int(seconds * 8000))
    return path


def test_exact_that_would_be_huge_is_announced_before_the_job(scene, addon, tmp_path, monkeypatch):
    pl, est = mod("pipeline"), mod("estimate")
    obj = H.sphere_head(subdiv=6)  # 10,242 vertices
    before = H.snapshot(obj)
    clip = silence(tmp_path / "long.wav", 120.0)  # 2,881 frames at 24 fps: 354 MB of keys
    s = pl.Settings(audio_path=str(clip), mode="EXACT")
    prep = pl.prepare(bpy.context, s)
    try:
        assert len(prep.notices) == 1
        text = prep.notices[0]
        assert "2,881 shape keys of 10,242 vertices" in text and "354.1 MB" in text
        assert "slow down scrubbing" in text and "Compact mode stores the same motion within Max Error" in text
    finally:
        prep.cleanup()
    assert not pl.prepare(bpy.context, pl.Settings(audio_path=str(clip), mode="COMPACT")).notices

    # the panel says it too, as soon as Exact is chosen
    from tests.blender.test_ui import draw_panel

    scene.scantalk.source, scene.scantalk.audio_path = "FILE", str(clip)
    obj.scantalk.mode = "EXACT"
    assert any("2,881 shape keys" in t for t in draw_panel().texts("label"))
    obj.scantalk.mode = "COMPACT"
    assert not any("shape keys of" in t for t in draw_panel().texts("label"))

    # more than memory can hold: refused before the job, with the way out; nothing touched
    monkeypatch.setattr(est, "physical_memory", lambda: 512 * 2**20)
    with pytest.raises(RuntimeError, match="more than this computer's 536.9 MB can hold. Use Compact"):
        bpy.ops.scantalk.animate(audio_path=str(clip), mode="EXACT")
    H.assert_same_user_data(before, H.snapshot(obj))
    assert obj.data.shape_keys is None and len(bpy.data.actions) == 0
