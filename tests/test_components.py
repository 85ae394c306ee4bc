"""Small separate parts ride with the nearest skin (backend.components)."""
import numpy as np
import pytest

from backend.components import components, ride_plan


def grid(n=10, z=0.0, offset=(0.0, 0.0)):
    xs = np.linspace(0, 1, n)
    X, Y = np.meshgrid(xs + offset[0], xs + offset[1])
    v = np.stack([X.ravel(), Y.ravel(), np.full(n * n, z)], 1)
    f = []
    for i in range(n - 1):
        for j in range(n - 1):
            a = i * n + j
            f += [(a, a + 1, a + n + 1), (a, a + n + 1, a + n)]
    return v, np.array(f)


def test_a_small_part_moves_rigidly_with_the_skin_next_to_it():
    skin, fs = grid(10)
    blob, fb = grid(3, z=0.05, offset=(0.0, 0.0))
    blob = blob * 0.1  # a small patch hovering near the skin's corner (0, 0)
    verts = np.r_[skin, blob]
    faces = np.r_[fs, fb + len(skin)]
    labels = components(len(verts), faces)
    assert len(np.unique(labels)) == 2
    plan = ride_plan(verts, faces)
    assert plan and len(plan.parts) == 1
    part, anchor = plan.parts[0]
    assert set(part) == set(range(100, 109)) and (verts[anchor, 0] < 0.35).all()  # the near corner
    T = 4
    offsets = np.zeros((T, len(verts), 3))
    offsets[:, :100, 1] = np.arange(T)[:, None] * verts[:100, 0]  # skin moves more to the right
    offsets[:, 100:] = 9.0  # the decoder's free motion of the part
    out = plan.apply(offsets.copy())
    np.testing.assert_allclose(out[:, :100], offsets[:, :100])  # skin untouched
    expect = offsets[:, anchor].mean(axis=1)
    for v in range(100, 109):
        np.testing.assert_allclose(out[:, v], expect)  # one rigid translation per frame
    assert out[:, 100:, 1].max() < 0.35 * (T - 1)


def test_one_piece_meshes_and_point_clouds_are_left_alone():
    v, f = grid(6)
    assert not ride_plan(v, f)
    assert not ride_plan(v, None)
    big, fb = grid(6, z=1.0)  # a second part as large as the first: not "small"
    assert not ride_plan(np.r_[v, big], np.r_[f, fb + len(v)])


def test_flame_eyeballs_ride_with_the_eye_sockets(flame_mesh):
    verts, faces = flame_mesh
    plan = ride_plan(verts, faces)
    assert len(plan.parts) == 2 and sorted(len(p) for p, _ in plan.parts) == [546, 546]
    for part, anchor in plan.parts:
        assert anchor.max() < 3931  # skin vertices only
        assert np.linalg.norm(verts[anchor].mean(0) - verts[part].mean(0)) < 0.02  # around that eye


@pytest.mark.parametrize("mode", ["ride", "model"])
def test_animate_moves_flame_eyeballs_with_their_sockets_only_for_ride_models(tmp_path, flame_mesh, mode):
    """End to end through backend.inference: a model whose config says separate_parts = "ride"
    moves each FLAME eyeball rigidly with its socket; "model" (official weights) keeps the
    decoder's own motion, which is not rigid."""
    import torch

    from backend.audio_io import save_wav
    from backend.checkpoint import save_model
    from backend.inference import animate
    from backend.model import ModelConfig, ScanTalk

    torch.manual_seed(0)
    cfg = ModelConfig(audio={"kind": "logmel", "config": {"n_mels": 16, "hidden": 16, "out_dim": 16}},
                      latent=8, width=8, n_blocks=2, lstm_layers=2, k_eig=16, log_time=True, fps=30.0,
                      frame_size=0.35, name="tiny", separate_parts=mode)
    model = ScanTalk(cfg).eval()
    torch.nn.init.normal_(model.decoder.last_lin.weight, std=0.1)
    save_model(tmp_path / "m.pt", model, epoch=0)
    save_wav(tmp_path / "a.wav", np.random.default_rng(0).normal(0, 0.1, 8000).astype(np.float32), 16000)
    res = animate(flame_mesh, tmp_path / "a.wav", checkpoint=tmp_path / "m.pt", device="cpu")
    eye = res.offsets[:, 3931:3931 + 546]
    spread = float(np.abs(eye - eye[:, :1]).max())
    if mode == "ride":
        assert spread < 1e-6 and res.meta["riding_parts"] == [546, 546]
    else:
        assert spread > 1e-4 and res.meta["riding_parts"] == []
    with pytest.raises(ValueError, match="separate_parts"):
        ModelConfig(separate_parts="glue")
