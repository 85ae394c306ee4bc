"""Training pipeline: config, losses, a few training steps, resume, predict, and DDP on 2 CPU processes."""
import hashlib
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from tests.meshes import icosphere
from training import losses
from training.config import ConfigError, load_config

ROOT = Path(__file__).resolve().parents[1]
SR = 16000
FPS = 30.0


# --------------------------------------------------------------------------- a tiny dataset

def make_dataset(root: Path, seconds=(1.0, 1.2), seed=0):
    """General layout: 4 sphere-ish heads (2 train, 1 val, 1 test), each with its own vertex count;
    "speech" = tone bursts; motion = the lip vertices drop with the audio envelope."""
    rng = np.random.default_rng(seed)
    for d in ("templates", "masks", "wav", "vertices"):
        (root / d).mkdir(parents=True, exist_ok=True)
    splits = {"train": ["s01", "s02"], "val": ["s03"], "test": ["s04"]}
    import soundfile as sf

    for i, subj in enumerate(["s01", "s02", "s03", "s04"]):
        v, f = icosphere(2, radius=0.1)
        v = v * np.array([1.0, 1.2 + 0.05 * i, 0.9]) + rng.normal(0, 0.002, 3)
        keep = v[:, 2] > -0.09 + 0.01 * i  # different topology per subject: cut the back off
        idx = -np.ones(len(v), int)
        idx[keep] = np.arange(keep.sum())
        f = f[keep[f].all(1)]
        f = idx[f]
        v = v[keep]
        np.savez(root / "templates" / f"{subj}.npz", vertices=v, faces=f)
        lips = np.flatnonzero((v[:, 2] > 0.05) & (np.abs(v[:, 1] + 0.03) < 0.03))
        upper = np.flatnonzero(v[:, 1] > 0.05)
        (root / "masks" / f"{subj}_lips.txt").write_text("".join(f"{j}\n" for j in lips))
        (root / "masks" / f"{subj}_upper.txt").write_text("".join(f"{j}\n" for j in upper))
        for k, sec in enumerate(seconds):
            n = int(sec * SR)
            t = np.arange(n) / SR
            env = (np.sin(2 * np.pi * (2.0 + k) * t + i) > 0).astype(np.float32)
            wav = (0.5 * env * np.sin(2 * np.pi * 220 * t)).astype(np.float32)
            sf.write(root / "wav" / f"{subj}_sent{k:02d}.wav", wav, SR, subtype="FLOAT")
            T = int(np.floor(sec * FPS + 1e-6)) + 1
            env_f = env[np.minimum((np.arange(T) / FPS * SR).astype(int), n - 1)]
            motion = np.repeat(v[None], T, 0).astype(np.float32)
            motion[:, lips, 1] -= 0.01 * env_f[:, None]
            np.save(root / "vertices" / f"{subj}_sent{k:02d}.npy", motion)
    (root / "meta.json").write_text(json.dumps({"fps": FPS, "splits": splits}))
    return root


TINY = [
    "model.latent=8", "model.width=8", "model.n_blocks=2", "model.lstm_layers=1", "model.k_eig=12",
    "model.audio.config.hidden=16", "model.audio.config.out_dim=8", "model.audio.config.n_mels=20",
    "train.lr=3e-3", "train.warmup_steps=0", "train.min_lr=3e-3", "train.window_frames=10",
    "train.val_every=10", "train.log_every=5", "train.progress=false", "train.threads=1",
    "loss.lip=1.0", "loss.velocity=1.0", "train.device=cpu",
]


def tiny_cfg(data, out, *extra):
    return [f"data.root={data}", f"train.out_dir={out}", f"data.operator_cache={out.parent / 'opcache'}",
            *TINY, *extra]


@pytest.fixture(scope="module")
def dataset(tmp_path_factory):
    return make_dataset(tmp_path_factory.mktemp("tinydata"))


# --------------------------------------------------------------------------- config

def test_config_file_and_overrides(tmp_path):
    cfg = load_config(ROOT / "training" / "configs" / "default.toml",
                      ["train.steps=7", "loss.velocity_axis=vertices", "data.root=/some/where",
                       "model.audio.config.hidden=16", "data.train_split=a,b", "train.lr=2e-4"])
    assert cfg.train.steps == 7 and cfg.loss.velocity_axis == "vertices"
    assert cfg.data.root == "/some/where" and cfg.data.train_split == "a,b"
    assert cfg.model.audio == {"kind": "logmel", "config": {"n_mels": 80, "hidden": 16, "out_dim": 64,
                                                            "n_layers": 2, "kernel": 5}}
    assert cfg.model.log_time is True and cfg.train.lr == 2e-4
    with pytest.raises(ConfigError, match="train.stpes"):
        load_config(None, ["train.stpes=3"])
    with pytest.raises(ConfigError, match="integer"):
        load_config(None, ["train.steps=1.5"])
    with pytest.raises(ConfigError, match="key=value"):
        load_config(None, ["train.steps"])
    off = load_config(ROOT / "training" / "configs" / "official_vocaset.toml")
    assert off.model.audio["kind"] == "hubert" and off.data.layout == "vocaset" and off.model.k_eig == 128


# --------------------------------------------------------------------------- losses

def test_losses_hand_computed():
    # T=3 frames, V=2 vertices; only x moves.
    pred = torch.zeros(3, 2, 3)
    target = torch.zeros(3, 2, 3)
    target[:, 0, 0] = torch.tensor([0.0, 1.0, 3.0])  # vertex 0 moves along time
    target[:, 1, 0] = torch.tensor([2.0, 2.0, 2.0])  # vertex 1 is displaced but still
    # MSE: squares 0,1,9 + 4,4,4 = 22 over 18 entries
    assert losses.mse(pred, target).item() == pytest.approx(22 / 18)
    # lips = vertex 0: 0+1+9 over 9 entries
    assert losses.lip_mse(pred, target, torch.tensor([0])).item() == pytest.approx(10 / 9)
    # along time: target velocities of v0: 1, 2; of v1: 0, 0 -> squares 1+4 over 2*2*3 = 12 entries
    assert losses.velocity_mse(pred, target, "time").item() == pytest.approx(5 / 12)
    # the official bug, along vertices: per frame x1 - x0 = 2, 1, -1 -> 4+1+1 over 3*1*3 = 9 entries
    assert losses.velocity_mse(pred, target, "vertices").item() == pytest.approx(6 / 9)
    # a static offset has no velocity along time but does along vertices
    static = torch.zeros(4, 3, 3)
    static[:, 1] = 1.0
    assert losses.velocity_mse(static, torch.zeros_like(static), "time").item() == 0.0
    assert losses.velocity_mse(static, torch.zeros_like(static), "vertices").item() > 0.0
    with pytest.raises(ValueError):
        losses.velocity_mse(pred, target, "space")


def test_compute_losses_weights_and_scale():
    pred = torch.zeros(3, 2, 3, requires_grad=True)
    target = torch.zeros(3, 2, 3)
    target[:, 0, 0] = torch.tensor([0.0, 1.0, 3.0])
    w = losses.LossWeights(mse=1.0, lip=2.0, velocity=3.0, unit_scale=10.0)
    out = losses.compute_losses(pred, target, w, lips=torch.tensor([0]))
    # scaled by 10 -> squares x100
    assert out["mse"].item() == pytest.approx(100 * 10 / 18)
    assert out["lip"].item() == pytest.approx(100 * 10 / 9)
    assert out["velocity"].item() == pytest.approx(100 * 5 / 12)
    total = 100 * (10 / 18 + 2 * 10 / 9 + 3 * 5 / 12)
    assert out["total"].item() == pytest.approx(total)
    out["total"].backward()
    assert pred.grad.abs().sum() > 0
    nolip = losses.compute_losses(pred, target, losses.LossWeights(), lips=None)
    assert torch.isnan(nolip["lip"]) and nolip["total"].item() == pytest.approx(nolip["mse"].item())
    with pytest.raises(ValueError):
        losses.LossWeights(velocity_axis="frames")


@pytest.mark.parametrize("s", [0.61, 1.07, 1.65])
def test_scaled_operators_match_recomputed(s):
    """Scale augmentation rescales operators analytically; check against recomputing them, over
    the whole range augment_log_scale=0.5 draws from."""
    from backend.diffusionnet import TorchOperators
    from backend.diffusionnet.geometry import compute_operators
    from backend.model import ModelConfig, ScanTalk
    from training.train import scaled_operators

    v, f = icosphere(2, radius=0.1)
    torch.manual_seed(0)
    model = ScanTalk(ModelConfig(audio={"kind": "logmel", "config": {"n_mels": 20, "hidden": 8, "out_dim": 8}},
                                 latent=8, width=8, n_blocks=2, lstm_layers=1, k_eig=12, log_time=True))
    a = TorchOperators.from_numpy(compute_operators(v * s, f, 12))
    b = scaled_operators(TorchOperators.from_numpy(compute_operators(v, f, 12)), s)
    x = torch.from_numpy(v * s).float()
    with torch.no_grad():
        ya, yb = model.encode_geometry(x, a), model.encode_geometry(x, b)
    # equal up to the gradient's small fixed regulariser (not scale-covariant)
    assert (ya - yb).abs().max() < 2e-3 * ya.abs().max()


def test_augment_size_rules():
    """The linear rule replays its old draws; the log rule is symmetric in log size and stays in
    [exp(-a), exp(a)]."""
    from training.config import TrainSection
    from training.train import augment_size

    lin = TrainSection(augment_scale=0.05)
    assert augment_size(lin, np.random.default_rng(3)) == np.random.default_rng(3).uniform(0.95, 1.05)
    log = TrainSection(augment_scale=0.05, augment_log_scale=0.5)
    rng = np.random.default_rng(0)
    sizes = np.array([augment_size(log, rng) for _ in range(4000)])
    assert sizes.min() >= np.exp(-0.5) and sizes.max() <= np.exp(0.5)
    assert sizes.min() < 0.63 and sizes.max() > 1.6  # the whole range, not augment_scale's 5%
    assert abs(np.log(sizes).mean()) < 0.02 and np.mean(sizes > 1) == pytest.approx(0.5, abs=0.03)


def test_losses_at_life_size_do_not_depend_on_the_random_size():
    """A head and its motion scaled by s and shifted, with example_weights(at_life_size), give
    every loss term (the gap weights' closure thresholds included) of the life-size head; without
    it, the squared terms grow by s**2."""
    from training.train import example_weights

    rng = torch.Generator().manual_seed(0)
    T, V = 6, 12
    target = torch.randn(T, V, 3, generator=rng) * 0.01
    pred = target + torch.randn(T, V, 3, generator=rng) * 0.002
    upper, lower = torch.arange(0, 4), torch.arange(4, 8)
    bilabial = torch.tensor([0, 1, 1, 0, 0, 1], dtype=torch.bool)
    w = losses.LossWeights(mse=1.0, mae=30.0, lip=3.0, velocity=2.0, unit_scale=1000.0, gap=2.0,
                           gap_closure_boost=4.0, gap_closure_mm=1.0, gap_bilabial_boost=4.0, lip_closure=3.0)
    g0 = float(losses.lip_gap(target[:1], upper, lower)[0])
    base = losses.compute_losses(pred, target, w, torch.arange(8), losses.GapInputs(upper, lower, g0, bilabial))
    shift = torch.tensor([0.003, -0.002, 0.001])
    for s in (0.61, 1.65):
        args = (pred * s + shift, target * s + shift)
        gap = losses.GapInputs(upper, lower, g0 * s, bilabial)
        life = losses.compute_losses(*args, example_weights(w, s, True), torch.arange(8), gap)
        raw = losses.compute_losses(*args, example_weights(w, s, False), torch.arange(8), gap)
        for k in ("mse", "mae", "lip", "velocity", "gap", "lip_closure", "total"):
            assert life[k].item() == pytest.approx(base[k].item(), rel=1e-4), (s, k)
        assert raw["mse"].item() == pytest.approx(base["mse"].item() * s * s, rel=1e-4)
    assert example_weights(w, 1.3, False) is w


# --------------------------------------------------------------------------- training

def test_train_steps_reduce_loss_checkpoints_resume_predict(dataset, tmp_path):
    from backend.checkpoint import load_model, read_file
    from training import predict, train

    out = tmp_path / "run"
    args = ["train.steps=40", "train.seed=1"]
    # loss at the start: the untrained model returns the neutral face
    res = train.train(load_config(None, tiny_cfg(dataset, out, *args)))
    assert res["step"] == 40
    events = list((out / "tb").glob("events.out.tfevents.*"))
    assert events, "no TensorBoard log"
    best, last = out / "best.pt", out / "last.pt"
    assert best.is_file() and last.is_file()
    model = load_model(best)
    assert model.cfg.log_time and model.cfg.k_eig == 12 and model.cfg.fps == FPS
    assert model.cfg.frame_centre == (0.0, 0.0, 0.0) and model.cfg.frame_size > 0.1
    data = read_file(last)
    assert data["step"] == 40 and "optimizer" in data and "optimizer" not in read_file(best)

    # the training loss went down: compare first and last logged values
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    acc = EventAccumulator(str(out / "tb"))
    acc.Reload()
    vals = [e.value for e in acc.Scalars("train/total")]
    assert len(vals) == 8 and vals[-1] < 0.5 * vals[0], vals
    val = [e.value for e in acc.Scalars("val/total")]
    assert val[-1] < val[0], val

    # resume continues the step count (and keeps the optimizer state)
    res2 = train.train(load_config(None, tiny_cfg(dataset, out, "train.steps=50", "train.seed=1")), resume="auto")
    assert res2["step"] == 50 and read_file(last)["step"] == 50

    # predict: one [T, V, 3] file per test clip, in the data's coordinates
    pred_dir, eval_dir = tmp_path / "pred", tmp_path / "eval"
    rc = predict.main(["--checkpoint", str(best), "--data", str(dataset), "--layout", "general",
                       "--split", "test", "--out", str(pred_dir), "--operator-cache", str(tmp_path / "opc"),
                       "--evaluate", str(eval_dir), "--no-plots"])
    assert rc == 0
    from training.datasets import load_motion, read_general

    test = read_general(dataset, "test")
    for clip in test:
        p = np.load(pred_dir / f"{clip.name}.npy")
        gt = load_motion(clip)
        assert p.shape == gt.shape and p.dtype == np.float32
        assert np.abs(p - gt).max() < 0.05  # near the face, not in another frame
    summary = json.loads((eval_dir / "summary.json").read_text())
    lips = json.loads((eval_dir / "lipsync.json").read_text())
    assert summary["n_sequences"] == len(test) and lips["n_sequences"] == len(test)

    # the no-motion baseline
    base = tmp_path / "base"
    assert predict.main(["--baseline", "neutral", "--data", str(dataset), "--split", "test",
                         "--out", str(base)]) == 0
    clip = test[0]
    b = np.load(base / f"{clip.name}.npy")
    assert b.shape == load_motion(clip).shape
    assert np.allclose(b[0], test.subject_of(clip).template_vertices, atol=1e-6)


def test_weight_average_update_apply_and_restore():
    from training.weight_average import WeightAverage

    model = torch.nn.Linear(2, 1)
    with torch.no_grad():
        model.weight.fill_(1.0), model.bias.fill_(0.0)
    avg = WeightAverage(model, 0.9)
    with torch.no_grad():
        model.weight.fill_(3.0)
    avg.update(model, step=1)  # warm-up: decay min(0.9, 2/11)
    d = 2 / 11
    assert torch.allclose(avg.shadow["weight"], torch.full((1, 2), d * 1.0 + (1 - d) * 3.0))
    assert avg.rate(10**6) == 0.9
    with avg.applied(model):
        assert torch.allclose(model.weight, avg.shadow["weight"])
    assert torch.equal(model.weight, torch.full((1, 2), 3.0))  # its own weights are back
    with pytest.raises(KeyError, match="do not match"):
        avg.load_state_dict({"weight": torch.zeros(1, 2)})
    with pytest.raises(ValueError, match="decay"):
        WeightAverage(model, 1.0)


def test_train_with_a_weight_average_saves_it_and_resumes_it(dataset, tmp_path):
    """train.ema_decay: best.pt and last.pt hold the average (validated as such), last.pt also the
    optimised weights; stopping and resuming gives the same average as running straight through."""
    from backend.checkpoint import load_model, read_file
    from training import train

    args = ["train.ema_decay=0.8", "train.val_every=3", "train.seed=3"]
    straight, split = tmp_path / "straight", tmp_path / "split"
    train.train(load_config(None, tiny_cfg(dataset, straight, *args, "train.steps=6")))
    train.train(load_config(None, tiny_cfg(dataset, split, *args, "train.steps=3")))
    train.train(load_config(None, tiny_cfg(dataset, split, *args, "train.steps=6")), resume="auto")
    a, b = read_file(straight / "last.pt"), read_file(split / "last.pt")
    assert set(a["train_model"]) == set(a["model"])
    moved = [k for k in a["model"] if not torch.equal(a["model"][k], a["train_model"][k])]
    assert moved, "the average is the last weights"
    for key in ("model", "train_model"):
        for k in a[key]:
            assert torch.allclose(a[key][k], b[key][k], atol=1e-6), (key, k)
    assert "train_model" not in read_file(straight / "best.pt")
    load_model(straight / "last.pt")  # the backend loads the average as any model
    # the optimised weights as a model file of their own, to judge beside the average
    from training.weight_average import main as weight_average_main

    assert weight_average_main(["--optimised", str(straight / "last.pt"), str(tmp_path / "opt.pt")]) == 0
    opt = load_model(tmp_path / "opt.pt").state_dict()
    assert all(torch.equal(opt[k], a["train_model"][k]) for k in a["train_model"])
    assert weight_average_main(["--optimised", str(straight / "best.pt"), str(tmp_path / "no.pt")]) == 2
    assert not (tmp_path / "no.pt").exists()


def test_resume_refuses_another_model(dataset, tmp_path):
    from training import train

    out = tmp_path / "run"
    train.train(load_config(None, tiny_cfg(dataset, out, "train.steps=2", "train.val_every=100")))
    with pytest.raises(ConfigError, match="another model config"):
        train.train(load_config(None, tiny_cfg(dataset, out, "train.steps=4", "model.width=12")), resume="auto")


def test_resume_with_other_loss_weights_chooses_best_afresh(dataset, tmp_path, capsys):
    from training import train

    out = tmp_path / "run"
    train.train(load_config(None, tiny_cfg(dataset, out, "train.steps=2", "train.val_every=2")))
    (out / "best.pt").unlink()
    # a heavier MSE weight makes every validation loss larger than the first run's best
    train.train(load_config(None, tiny_cfg(dataset, out, "train.steps=4", "train.val_every=2", "loss.mse=1000")),
                resume="auto")
    assert "best.pt is chosen afresh" in capsys.readouterr().out
    assert torch.load(out / "best.pt", weights_only=True)["step"] in (3, 4)  # written by the resumed run


def test_stretch_latents_trains_the_decoder_on_the_spread_inference_gives(dataset, tmp_path):
    """train.stretch_latents: the decoder reads each clip's latents stretched to the starting
    model's speech spread (over its speech frames), the trained model keeps that spread, resume
    keeps it, and a starting model without one is refused with the command that measures one."""
    from backend.checkpoint import load_model, read_file
    from training import train as T

    base = tmp_path / "base"
    T.train(load_config(None, tiny_cfg(dataset, base, "train.steps=2", "train.val_every=100")))
    with pytest.raises(ConfigError, match="has no speech spread.*training.speech_spread"):
        T.train(load_config(None, tiny_cfg(dataset, tmp_path / "no", "train.steps=1", "train.stretch_latents=true",
                                           f"train.init_from={base / 'last.pt'}")))
    with pytest.raises(ConfigError, match="needs a model to take the speech spread from"):
        T.train(load_config(None, tiny_cfg(dataset, tmp_path / "no", "train.steps=1", "train.stretch_latents=true")))

    # what the decoder reads: the speech frames (not the padded silence) carry the spread
    args = ["train.stretch_latents=true", f"train.init_from={base / 'with_spread.pt'}", "train.val_every=100",
            "train.silence_pad_prob=1.0", "train.silence_pad_max=0.5"]
    cfg = load_config(None, tiny_cfg(dataset, tmp_path / "unused", "train.window_frames=0", *args))
    lst = T.read_split(cfg.data, "train")
    shapes = T.prepare_shapes([lst], 12, 1e-8, str(tmp_path / "opcache"), T.Dist(), torch.device("cpu"))
    ex = T.make_example(lst[0], shapes[lst[0].subject], T.ClipStore(), cfg.train, np.random.default_rng(1),
                        torch.device("cpu"), train=True)
    assert ex.pad0 > 0 and ex.speech.shape == (ex.n_frames,)
    assert not ex.speech[:ex.pad0].any() and ex.speech.sum() >= 8
    with torch.no_grad():
        raw = load_model(base / "last.pt").encode_audio(ex.wav, ex.n_frames)
    data = read_file(base / "last.pt")
    spread = (raw[ex.speech].std(0) * torch.linspace(0.6, 1.8, 8)).tolist()  # within the stretch's bounds
    data["config"]["speech_spread"] = spread
    torch.save(data, base / "with_spread.pt")
    model = load_model(base / "with_spread.pt")
    read = T.stretched(model, raw, ex.speech)
    torch.testing.assert_close(read[ex.speech].std(0), torch.tensor(spread), rtol=1e-4, atol=1e-7)
    torch.testing.assert_close(read[ex.speech].mean(0), raw[ex.speech].mean(0), rtol=1e-4, atol=1e-6)
    assert torch.equal(T.stretched(model, raw, None), raw)  # without the flag: as encoded
    with torch.no_grad():  # the training step decodes the stretched latents
        pred, _ = T.WindowStep(model)(ex.wav, ex.n_frames, 0, ex.n_frames, ex.neutral, ex.ops, speech=ex.speech)
        want = ex.neutral[None] + model.decode(model.encode_geometry(ex.neutral, ex.ops), read, ex.ops)
        plain, _ = T.WindowStep(model)(ex.wav, ex.n_frames, 0, ex.n_frames, ex.neutral, ex.ops)
    torch.testing.assert_close(pred, want)
    assert not torch.allclose(pred, plain)

    out = tmp_path / "st"
    T.train(load_config(None, tiny_cfg(dataset, out, "train.steps=2", *args)))
    assert load_model(out / "last.pt").cfg.speech_spread == pytest.approx(spread)
    T.train(load_config(None, tiny_cfg(dataset, out, "train.steps=3", *args)), resume="auto")
    assert read_file(out / "last.pt")["step"] == 3
    assert load_model(out / "last.pt").cfg.speech_spread == pytest.approx(spread)


def test_train_cli_reports_bad_config(tmp_path, capsys):
    from training import train

    assert train.main(["train.bogus=1"]) == 2
    assert "train.bogus" in capsys.readouterr().err
    assert train.main([f"train.out_dir={tmp_path}"]) == 2  # no data.root
    assert "data.root" in capsys.readouterr().err


def test_ddp_two_cpu_processes_keep_identical_replicas(dataset, tmp_path):
    out = tmp_path / "ddp"
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT)}
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nnodes=1",
           "--nproc_per_node=2", "-m", "training.train",
           *tiny_cfg(dataset, out, "train.steps=6", "train.val_every=3")]
    proc = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    check = json.loads((out / "replica_check.json").read_text())
    assert len(check["hashes"]) == 2 and check["identical"], check
    # and training moved the weights away from the initial ones
    from backend.checkpoint import read_file

    data = read_file(out / "last.pt")
    assert data["step"] == 6
    h = hashlib.sha256(data["model"]["decoder.last_lin.weight"].numpy().tobytes()).hexdigest()
    assert h != hashlib.sha256(np.zeros_like(data["model"]["decoder.last_lin.weight"].numpy()).tobytes()).hexdigest()


# --------------------------------------------------------------------------- lip gap, viseme head, augmentation

def add_phones(root: Path, seconds=(1.0, 1.2)):
    """A clips.json (training.synth's) for the tiny dataset: 'aa' while the tone sounds, 'm' between."""
    meta = json.loads((root / "meta.json").read_text())
    clips = {}
    for i, subj in enumerate(sum(meta["splits"].values(), [])):
        for k, sec in enumerate(seconds):
            t = np.arange(0, sec, 0.01)
            on = np.sin(2 * np.pi * (2.0 + k) * t + i) > 0
            phones, start = [], 0.0
            for j in range(1, len(t) + 1):
                if j == len(t) or on[j] != on[j - 1]:
                    end = sec if j == len(t) else float(t[j])
                    phones.append(["aa" if on[j - 1] else "m", round(start, 4), round(end, 4)])
                    start = end
            clips[f"{subj}_sent{k:02d}"] = {"subject": subj, "phonemes": phones}
    (root / "clips.json").write_text(json.dumps({"generator": "test", "clips": clips}))
    return root


FEATURES = ["loss.gap=0.5", "loss.gap_closure_boost=4.0", "loss.gap_bilabial_boost=2.0", "loss.phone=0.5",
            "augment.gain_prob=0.5", "augment.noise_prob=0.5", "augment.reverb_prob=0.5",
            "augment.lowpass_prob=0.3", "augment.codec_prob=0.3", "augment.speed_prob=0.7"]


@pytest.fixture(scope="module")
def phone_dataset(dataset, tmp_path_factory):
    import shutil

    root = tmp_path_factory.mktemp("phonedata") / "data"
    shutil.copytree(dataset, root)
    return add_phones(root)


def test_viseme_constants_match_the_generator():
    from training.synth.visemes import VISEMES
    from training.train import N_VISEMES, PP_CLASS, frame_visemes

    assert len(VISEMES) == N_VISEMES and VISEMES[PP_CLASS] == "PP"
    phones = [["sil", 0.0, 0.1], ["m", 0.1, 0.2], ["ay", 0.2, 0.4]]
    lab = frame_visemes(phones, np.array([0.05, 0.15, 0.25, 0.35, 0.5]))
    assert [VISEMES[i] for i in lab[:4]] == ["sil", "PP", "aa", "ih"] and lab[4] == -1  # diphthong split


def test_make_example_speed_and_labels_stay_aligned(phone_dataset):
    from backend.model import ModelConfig, ScanTalk
    from training import train as T
    from training.config import load_config

    cfg = load_config(None, tiny_cfg(phone_dataset, phone_dataset.parent / "unused", *FEATURES,
                                     "train.window_frames=0", "augment.speed_prob=1.0"))
    lst = T.read_split(cfg.data, "train")
    shapes = T.prepare_shapes([lst], 12, 1e-5, str(phone_dataset.parent / "opc"), T.Dist(), torch.device("cpu"))
    phones = T.read_phones(cfg.data)
    assert all(c.name in phones for c in lst)
    shape = shapes[lst[0].subject]
    assert shape.upper is not None and len(shape.upper) and len(shape.lower)
    model = ScanTalk(ModelConfig(audio={"kind": "logmel", "config": {"n_mels": 20, "hidden": 8, "out_dim": 8}},
                                 latent=8, width=8, n_blocks=1, lstm_layers=1, k_eig=12))
    store, clip = T.ClipStore(), lst[0]
    T0 = T.ClipStore.motion(clip).shape[0]
    lengths = set()
    for seed in range(6):
        rng = np.random.default_rng(seed)
        ex = T.make_example(clip, shape, store, cfg.train, rng, torch.device("cpu"), train=True,
                            aug=cfg.augment, phones=phones[clip.name])
        n = ex.wav.shape[1]
        assert ex.n_frames == model.num_frames(n) == ex.target.shape[0]  # frames = floor(dur * fps) + 1
        assert ex.visemes.shape == (ex.n_frames,) and ex.gap.bilabial.shape == (ex.n_frames,)
        assert torch.isfinite(ex.wav).all() and ex.wav.abs().max() <= 1.0
        lengths.add(ex.n_frames)
        # determinism for a seed
        ex2 = T.make_example(clip, shape, store, cfg.train, np.random.default_rng(seed), torch.device("cpu"),
                             train=True, aug=cfg.augment, phones=phones[clip.name])
        assert torch.equal(ex.wav, ex2.wav) and torch.equal(ex.target, ex2.target)
    assert len(lengths) > 1 and lengths != {T0}
    # without augmentation (validation): the clip as it is, labels from the phones
    ex = T.make_example(clip, shape, store, cfg.train, np.random.default_rng(0), torch.device("cpu"), train=False,
                        aug=cfg.augment, phones=phones[clip.name], phone_lead=0.0)
    assert ex.n_frames == T0 and torch.equal(ex.wav[0], torch.from_numpy(store.wav(clip)))
    motion = np.asarray(T.ClipStore.motion(clip))
    # the motion's lips drop while the tone sounds ('aa'), and rest during 'm' (PP)
    lip = torch.from_numpy(np.asarray(lst.subject_of(clip).lips))
    drop = (motion[:, lip.numpy(), 1].mean(1) < motion[0, lip.numpy(), 1].mean() - 0.005)
    labels = ex.visemes.numpy()
    assert np.mean((labels == 10) == drop) > 0.85  # 10 = "aa"


def test_train_with_gap_phone_head_and_augmentation(phone_dataset, tmp_path):
    from backend.checkpoint import load_model, read_file
    from training import train

    out = tmp_path / "run"
    args = ["train.steps=6", "train.val_every=3", "train.seed=2", *FEATURES]
    res = train.train(load_config(None, tiny_cfg(phone_dataset, out, *args)))
    assert res["step"] == 6
    val = res["val"]
    for k in ("gap", "phone", "closure_gap_mm", "lve_mm2", "total"):
        assert np.isfinite(val[k]), (k, val)
    assert val["closed_frames"] > 0
    # the viseme head is the trainer's: not in the model, only in last.pt for --resume
    best, last = read_file(out / "best.pt"), read_file(out / "last.pt")
    assert "aux_heads" not in best and not any("phone" in k for k in best["model"])
    assert set(last["aux_heads"]["phone"]) == {"weight", "bias"}
    assert last["aux_heads"]["phone"]["weight"].shape == (15, 8)
    model = load_model(out / "best.pt")  # the backend loads it unchanged
    assert set(model.state_dict()) == set(best["model"])
    res2 = train.train(load_config(None, tiny_cfg(phone_dataset, out, *args, "train.steps=8")), resume="auto")
    assert res2["step"] == 8
    with pytest.raises(ConfigError, match="viseme head"):
        train.train(load_config(None, tiny_cfg(phone_dataset, out, *args, "train.steps=10", "loss.phone=0")),
                    resume="auto")


def test_train_measures_losses_at_life_size(phone_dataset, tmp_path, monkeypatch):
    """loss.at_life_size reaches the training step: each step's losses use unit_scale / the size
    its example was drawn at, and the size is the one the neutral was scaled by."""
    from training import train

    seen = []
    make_example, compute_losses = train.make_example, train.compute_losses

    def recording_make_example(clip, shape, *a, **kw):
        ex = make_example(clip, shape, *a, **kw)
        if kw.get("train", True):
            extent = float((ex.neutral.max(0).values - ex.neutral.min(0).values).norm())
            full = float((shape.neutral.max(0).values - shape.neutral.min(0).values).norm())
            seen.append([ex.size, extent / full])
        return ex

    def recording_compute_losses(pred, target, weights, *a, **kw):
        if torch.is_grad_enabled():
            seen[-1].append(weights.unit_scale)
        return compute_losses(pred, target, weights, *a, **kw)

    monkeypatch.setattr(train, "make_example", recording_make_example)
    monkeypatch.setattr(train, "compute_losses", recording_compute_losses)
    args = ["train.steps=4", "train.val_every=4", "train.augment_log_scale=0.5", "loss.at_life_size=true",
            *FEATURES]
    train.train(load_config(None, tiny_cfg(phone_dataset, tmp_path / "run", *args)))
    assert len(seen) == 4
    sizes = np.array([x[0] for x in seen])
    assert np.ptp(sizes) > 0.05 and (sizes >= np.exp(-0.5)).all() and (sizes <= np.exp(0.5)).all()
    for size, ratio, unit_scale in seen:
        assert ratio == pytest.approx(size, rel=2e-2)  # the shift moves the box a little
        assert unit_scale == pytest.approx(1000.0 / size)


def test_phone_loss_skipped_without_phone_timings(dataset, tmp_path, capsys):
    from backend.checkpoint import read_file
    from training import train

    out = tmp_path / "run"
    res = train.train(load_config(None, tiny_cfg(dataset, out, "train.steps=2", "train.val_every=2", "loss.phone=1.0",
                                                 "loss.gap=0.5")))
    assert res["step"] == 2 and np.isnan(res["val"]["phone"]) and np.isfinite(res["val"]["gap"])
    assert "no viseme head" in capsys.readouterr().out
    assert "aux_heads" not in read_file(out / "last.pt")


def test_default_v2_config():
    from backend.checkpoint import save_model
    from backend.model import ScanTalk

    cfg = load_config(ROOT / "training" / "configs" / "default_v2.toml", ["data.root=/x"])
    base = load_config(ROOT / "training" / "configs" / "default.toml")
    assert cfg.model.width == base.model.width == 32 and cfg.model.n_blocks == base.model.n_blocks
    assert cfg.loss.gap > 0 and cfg.loss.gap_closure_boost > 0 and cfg.loss.phone > 0
    assert cfg.augment.any_audio and cfg.augment.speed_prob > 0
    assert base.loss.gap == 0 and base.loss.phone == 0 and not base.augment.any_audio
    import tempfile

    from training.train import build_model_config

    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "m.pt"
        save_model(path, ScanTalk(build_model_config(cfg, 30.0, 0.35)), val={"total": 1.0}, train_config=cfg.to_dict())
        assert path.stat().st_size < 5 * 2 ** 20


def test_ddp_with_gap_phone_head_and_augmentation(phone_dataset, tmp_path):
    out = tmp_path / "ddp"
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT)}
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nnodes=1",
           "--nproc_per_node=2", "-m", "training.train",
           *tiny_cfg(phone_dataset, out, "train.steps=4", "train.val_every=2", *FEATURES,
                    "train.audio_pretrain_steps=3")]  # its gradients are averaged by hand
    proc = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=180)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    check = json.loads((out / "replica_check.json").read_text())
    assert check["identical"], check
    assert "closure gap error" in proc.stdout
