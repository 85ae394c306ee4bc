"""Audio-path pre-training and fine-tuning from a checkpoint (training/audio_pretrain.py, train.init_from)."""
import json
from pathlib import Path

import numpy as np
import pytest
import torch

from tests.test_training import FEATURES, add_phones, make_dataset, tiny_cfg
from training.config import ConfigError, load_config


@pytest.fixture(scope="module")
def phone_data(tmp_path_factory):
    return add_phones(make_dataset(tmp_path_factory.mktemp("pretrain") / "data"))


def tiny_model():
    from backend.model import ModelConfig, ScanTalk

    torch.manual_seed(0)
    return ScanTalk(ModelConfig(audio={"kind": "logmel", "config": {"n_mels": 20, "hidden": 16, "out_dim": 8}},
                                latent=8, width=8, n_blocks=1, lstm_layers=1, k_eig=12))


def test_pretrain_audio_learns_visemes_and_leaves_the_geometry_alone(phone_data):
    from training import train as T
    from training.audio_pretrain import audio_parameters, pretrain_audio

    cfg = load_config(None, tiny_cfg(phone_data, phone_data.parent / "unused"))
    clips = list(T.read_split(cfg.data, "train"))
    phones, store = T.read_phones(cfg.data), T.ClipStore()

    def labels_of(clip):
        n = store.motion(clip).shape[0]
        return torch.from_numpy(T.frame_visemes(phones[clip.name], np.arange(n) / clip.fps))

    model, head = tiny_model(), torch.nn.Linear(8, T.N_VISEMES)
    geometry = {k: v.clone() for k, v in model.state_dict().items() if k.startswith(("encoder.", "decoder."))}
    audio_before = [p.detach().clone() for p in audio_parameters(model)]
    logs = []
    res = pretrain_audio(model, head, clips, store.wav, labels_of, steps=60, lr=1e-2, grad_clip=1.0,
                         aug=None, seed=0, d=T.Dist(), log=logs.append, val_clips=clips, log_every=20)
    # tone ('aa') against silence ('m'): two classes a working audio path separates
    assert res["before"]["acc"] < 0.6 and res["after"]["acc"] > 0.9, res
    assert res["after"]["ce"] < res["before"]["ce"]
    assert res["after"]["frames"] == sum(int((labels_of(c) >= 0).sum()) for c in clips)
    assert sum("audio pre-training step" in m for m in logs) == 3
    state = model.state_dict()
    assert all(torch.equal(state[k], v) for k, v in geometry.items())
    assert all(not torch.equal(p, q) for p, q in zip(audio_parameters(model), audio_before))


def test_fine_tune_keeps_geometry_restarts_audio_and_scales_its_rate(phone_data, tmp_path, capsys):
    from backend.checkpoint import read_file
    from training import train

    base = tmp_path / "base"
    train.train(load_config(None, tiny_cfg(phone_data, base, "train.steps=3", "train.val_every=3", *FEATURES)))
    src = read_file(base / "last.pt")["model"]

    tuned = tmp_path / "tuned"
    args = [*FEATURES, f"train.init_from={base / 'last.pt'}", "train.init_fresh_audio=true",
            "train.audio_pretrain_steps=4", "train.audio_lr_scale=0.5", "model.name=tuned"]
    res = train.train(load_config(None, tiny_cfg(phone_data, tuned, *args, "train.steps=0")))
    assert res["step"] == 0
    out = capsys.readouterr().out
    assert "geometry encoder and decoder only" in out and "audio pre-training done" in out
    got = read_file(tuned / "last.pt")
    for k, v in src.items():  # geometry as the checkpoint had it; the audio path retrained from scratch
        same = torch.equal(got["model"][k], v)
        assert same == k.startswith(("encoder.", "decoder.")), k
    groups = got["optimizer"]["param_groups"]
    assert [g.get("lr_scale", 1.0) for g in groups] == [1.0, 0.5]

    # joint training: the audio group at half the rate; resuming keeps the two groups
    res = train.train(load_config(None, tiny_cfg(phone_data, tuned, *args, "train.steps=2", "train.val_every=2")),
                      resume="auto")
    groups = read_file(tuned / "last.pt")["optimizer"]["param_groups"]
    assert res["step"] == 2 and groups[1]["lr"] == pytest.approx(0.5 * groups[0]["lr"])
    assert "audio pre-training" not in capsys.readouterr().out  # a resumed run does not pre-train again


def test_init_from_refuses_another_model_and_pretraining_needs_phones(phone_data, tmp_path):
    from training import train

    base = tmp_path / "base"
    train.train(load_config(None, tiny_cfg(phone_data, base, "train.steps=1", "train.val_every=1")))
    with pytest.raises(ConfigError, match="another model config"):
        train.train(load_config(None, tiny_cfg(phone_data, tmp_path / "b", "model.width=12", "train.steps=1",
                                               f"train.init_from={base / 'last.pt'}")))
    with pytest.raises(ConfigError, match="needs the viseme head"):
        train.train(load_config(None, tiny_cfg(phone_data, tmp_path / "c", "train.steps=1",
                                               "train.audio_pretrain_steps=2")))
    # another audio encoder config: only with a fresh audio path, which takes the geometry alone
    from backend.checkpoint import read_file

    other_audio = ["model.audio.config.norm=bin", "train.steps=0", f"train.init_from={base / 'last.pt'}"]
    with pytest.raises(ConfigError, match="another model config"):
        train.train(load_config(None, tiny_cfg(phone_data, tmp_path / "d", *other_audio)))
    train.train(load_config(None, tiny_cfg(phone_data, tmp_path / "e", *other_audio, "train.init_fresh_audio=true")))
    got, src = read_file(tmp_path / "e" / "last.pt"), read_file(base / "last.pt")
    assert got["config"]["audio"]["config"]["norm"] == "bin"
    assert all(torch.equal(got["model"][k], v) for k, v in src["model"].items() if k.startswith(("encoder.", "decoder.")))


SPEECH = Path(__file__).resolve().parents[2] / "shared" / "data" / "speech"


@pytest.fixture(scope="module")
def phone_run(phone_data, tmp_path_factory):
    """A one-step trainer run with a viseme head: last.pt has it, best.pt (a model file) has not."""
    from training import train

    run = tmp_path_factory.mktemp("phone_run") / "run"
    train.train(load_config(None, tiny_cfg(phone_data, run, "train.steps=1", "train.val_every=1", *FEATURES)))
    return run


@pytest.mark.skipif(not (SPEECH / "transcription").is_file(), reason="needs ../shared speech")
def test_real_speech_scores_of_a_checkpoint(phone_run, tmp_path, capsys):
    pytest.importorskip("pocketsphinx", reason="pip install pocketsphinx")
    import shutil

    from backend.audio_io import load_audio
    from training import audio_pretrain

    speech = tmp_path / "speech"
    speech.mkdir()
    wav = sorted(SPEECH.glob("*.wav"))[1]
    shutil.copy(wav, speech / wav.name)
    line = next(ln for ln in (SPEECH / "transcription").read_text().splitlines() if wav.stem in ln)
    import soundfile as sf

    sf.write(str(speech / "blip.wav"), np.zeros(4800, np.float32), 16000)  # too short for its text
    (speech / "transcription").write_text(line + "\nhad he married a more amiable woman (blip)\n")
    assert audio_pretrain.main(["--checkpoint", str(phone_run / "last.pt"), "--speech-dir", str(speech),
                                "--json", str(tmp_path / "s.json")]) == 0
    res = json.loads((tmp_path / "s.json").read_text())
    # a clip the aligner cannot place is skipped with its reason, as training.articulation does
    assert list(res["skipped"]) == ["blip"] and "could not align" in res["skipped"]["blip"]
    printed = capsys.readouterr()
    assert list(res["clips"]) == [wav.stem] and "blip: skipped" in printed.err
    n = int(np.floor(len(load_audio(wav)) / 16000 * 30 + 1e-6)) + 1
    s = res["clips"][wav.stem]
    assert 0.8 * n < s["frames"] <= n and 0.0 <= s["acc"] <= 1.0 and s["ce"] > 0  # aligned phones cover the speech
    assert res["pooled"] == s and f"all: accuracy {s['acc']:.3f}" in printed.out
    # the model file has no viseme head: a clear refusal
    assert audio_pretrain.main(["--checkpoint", str(phone_run / "best.pt"), "--speech-dir", str(speech)]) == 2
    assert "no viseme head" in capsys.readouterr().err


def test_synthetic_split_scores_of_a_checkpoint(phone_data, phone_run, tmp_path, capsys):
    from training import audio_pretrain
    from training import train as T

    out = tmp_path / "syn.json"
    assert audio_pretrain.main(["--checkpoint", str(phone_run / "last.pt"), "--data", str(phone_data),
                                "--split", "train", "--json", str(out), "--quiet"]) == 0
    res = json.loads(out.read_text())
    data = load_config(None, [f"data.root={phone_data}"]).data
    clips, phones = list(T.read_split(data, "train")), T.read_phones(data)
    assert sorted(res["clips"]) == sorted(c.name for c in clips)
    # every frame a generator phone covers (shifted by the run's lead) is scored, and only those
    lead = load_config(None, FEATURES).loss.phone_lead
    labelled = sum(int((T.viseme_labels(phones[c.name], T.ClipStore.motion(c).shape[0], c.fps, lead) >= 0).sum())
                   for c in clips)
    assert res["pooled"]["frames"] == labelled > 0 and 0.0 <= res["pooled"]["acc"] <= 1.0
    conf = np.array(res["confusion"])  # rows: the label; the diagonal: the right guesses
    assert conf.shape == (T.N_VISEMES, T.N_VISEMES) and conf.sum() == labelled
    assert np.trace(conf) / conf.sum() == pytest.approx(res["pooled"]["acc"])
    assert set(np.flatnonzero(conf.sum(1))) <= {res["visemes"].index("aa"), res["visemes"].index("PP")}  # 'aa' and 'm'
    # the same head on the same clip scores the same through the API, alone
    one = audio_pretrain.synthetic_scores(phone_run / "last.pt", phone_data, "train", every=2)
    assert len(one["clips"]) == (len(clips) + 1) // 2
    assert one["clips"][clips[0].name] == pytest.approx(res["clips"][clips[0].name])
    printed = capsys.readouterr().out.strip().splitlines()
    assert len(printed) == 1 and printed[0].startswith("all: accuracy") and f"{len(clips)} clips" in printed[0]
    assert audio_pretrain.main(["--checkpoint", str(phone_run / "last.pt"), "--data", str(phone_data),
                                "--split", "train", "--quiet", "--confusion"]) == 0
    rows = capsys.readouterr().out.strip().splitlines()[:-1]
    for name in ("aa", "PP"):
        i = res["visemes"].index(name)
        assert any(r.split()[:2] == [name, str(conf[i].sum())] and f"recall {conf[i, i] / conf[i].sum():.2f}" in r
                   for r in rows), rows
    # a split without clips: a clear refusal
    assert audio_pretrain.main(["--checkpoint", str(phone_run / "last.pt"), "--data", str(phone_data),
                                "--split", "nosuch"]) == 2
    assert "nosuch" in capsys.readouterr().err


@pytest.mark.skipif(not (SPEECH / "transcription").is_file(), reason="needs ../shared speech")
def test_synthetic_scores_against_aligned_labels(phone_run, tmp_path, capsys):
    """--aligned labels the English clips with pocketsphinx as real speech is labelled. A clip whose
    'generator' phones are the aligner's own (a LibriVox recording in the test split) must score
    the same both ways, with every frame's labels agreeing."""
    pytest.importorskip("pocketsphinx", reason="pip install pocketsphinx")
    import soundfile as sf

    from backend.audio_io import load_audio
    from tests.test_training import make_dataset
    from training import audio_pretrain
    from training.articulation import align, read_transcriptions

    wav = sorted(SPEECH.glob("*.wav"))[1]
    text = read_transcriptions(SPEECH / "transcription")[wav.stem]
    speech = load_audio(wav)
    sec = len(speech) / 16000
    root = make_dataset(tmp_path / "data", seconds=(sec,))
    n = len(sf.read(root / "wav" / "s04_sent00.wav")[0])
    speech = speech[:n] if len(speech) >= n else np.pad(speech, (0, n - len(speech)))
    sf.write(root / "wav" / "s04_sent00.wav", speech, 16000, subtype="FLOAT")
    phones = [list(p) for p in align(speech, 16000, text)[0]]
    clips = {f"s0{i}_sent00": {"subject": f"s0{i}", "phonemes": [["aa", 0.0, sec]], "language": "de", "text": "x"}
             for i in (1, 2, 3, 4)}
    clips["s04_sent00"] = {"subject": "s04", "phonemes": phones, "language": "en", "text": text}
    (root / "clips.json").write_text(json.dumps({"generator": "test", "clips": clips}))

    out = tmp_path / "a.json"
    assert audio_pretrain.main(["--checkpoint", str(phone_run / "last.pt"), "--data", str(root), "--aligned",
                                "--json", str(out), "--quiet"]) == 0
    res = json.loads(out.read_text())
    assert list(res["clips"]) == ["s04_sent00"] and res["aligned_skipped"] == []
    assert res["label_agreement"] == 1.0 and res["generator"] == res["aligned"] and res["aligned"]["frames"] > 50
    assert "agree on 1.000 of the frames" in capsys.readouterr().out
    # a split without English clips: a clear refusal
    assert audio_pretrain.main(["--checkpoint", str(phone_run / "last.pt"), "--data", str(root), "--aligned",
                                "--split", "train"]) == 2
    assert "English" in capsys.readouterr().err


def test_default_v4_config_fine_tunes_the_shipped_architecture():
    from dataclasses import asdict

    from backend.checkpoint import read_file
    from training.train import build_model_config

    root = Path(__file__).resolve().parents[1]
    v4 = load_config(root / "training" / "configs" / "default_v4.toml", ["data.root=/x"])
    v2 = load_config(root / "training" / "configs" / "default_v2.toml", ["data.root=/x"])
    assert {**asdict(v4.model), "name": ""} == {**asdict(v2.model), "name": ""}
    assert v4.train.audio_pretrain_steps > 0 and v4.train.init_fresh_audio and 0 < v4.train.audio_lr_scale < 1
    assert v4.loss.mae > 0 and v4.loss.phone > 0
    shipped = read_file(root / "backend" / "assets" / "default_model.pt")["config"]
    built = build_model_config(v4, shipped["fps"], shipped["frame_size"]).to_dict()
    # the bundled model is this config's, name included; its speech spread is measured after
    # training (python -m training.speech_spread)
    assert len(shipped["speech_spread"]) == built["latent"] and built["speech_spread"] == []
    assert {**built, "speech_spread": None} == {**shipped, "speech_spread": None}
    # the candidate after it (not shipped) fine-tunes the same architecture, the warp on
    v5 = load_config(root / "training" / "configs" / "default_v5.toml", ["data.root=/x"])
    assert {**asdict(v5.model), "name": ""} == {**asdict(v4.model), "name": ""}
    assert v5.augment.vtlp_prob > 0 and not v5.train.init_fresh_audio and v5.train.audio_lr_scale < v4.train.audio_lr_scale


def test_bilabials_heard_by_what_comes_before():
    """Each run of PP frames counts once, by the viseme before it; heard when any of its frames is
    called PP; unlabelled frames (-1) are skipped."""
    from training.audio_pretrain import bilabials_heard, confusion_lines
    from training.synth.visemes import VISEMES

    v = {name: VISEMES.index(name) for name in ("sil", "PP", "aa", "kk")}
    labels = torch.tensor([v[x] if x else -1 for x in
                           ["sil", "sil", "PP", "PP", "aa", "aa", "PP", None, "kk", "PP", "PP", "aa"]])
    # one per labelled frame: the first run heard on its second frame, the others not at all
    pred = torch.tensor([v[x] for x in ["sil", "sil", "aa", "PP", "aa", "aa", "aa", "kk", "sil", "sil", "aa"]])
    assert bilabials_heard(labels, pred) == {"silence": [1, 1], "vowel": [0, 1], "consonant": [0, 1]}
    pred[8] = v["PP"]  # the last run's first frame (the unlabelled frame takes no place in pred)
    heard = bilabials_heard(labels, pred)
    assert heard["consonant"] == [1, 1]
    lines = confusion_lines({"visemes": list(VISEMES), "confusion": [[0] * len(VISEMES)] * len(VISEMES),
                             "bilabials_heard": heard})
    assert lines == ["  bilabials heard (a frame called PP): after silence 1/1, after a vowel 0/1, after a consonant 1/1"]


def test_false_bilabial_calls_and_the_threshold_free_score():
    """A PP call with no labelled PP within two frames is false; one near a bilabial is not. The AUC
    ranks the PP score of bilabial frames against all others, whatever the head's bias."""
    from training.audio_pretrain import bilabial_auc, confusion_lines, false_bilabials
    from training.synth.visemes import VISEMES

    v = {name: VISEMES.index(name) for name in ("sil", "PP", "aa")}
    labels = torch.tensor([v[x] for x in ["sil", "aa", "PP", "PP", "aa", "aa", "aa", "aa", "aa", "sil"]])
    # a call two frames after the bilabial (near), and one in the middle of the vowel (false)
    pred = torch.tensor([v[x] for x in ["sil", "aa", "aa", "aa", "aa", "PP", "aa", "PP", "aa", "sil"]])
    assert false_bilabials(labels, pred) == (1, 2)
    assert false_bilabials(labels, pred, slack=4) == (0, 2)
    logits = torch.zeros(len(labels), len(VISEMES))
    logits[:, v["PP"]] = torch.tensor([0.0, 1, 5, 6, 2, 3, 0, 4, 0, 0])  # frames 2, 3 highest: separable
    assert bilabial_auc({"a": logits}, {"a": labels}) == pytest.approx(1.0)
    logits[3, v["PP"]] = 3.5  # now below frame 7 (4.0), above all the rest
    assert bilabial_auc({"a": logits}, {"a": labels}) == pytest.approx(15 / 16)
    shifted = logits.clone()
    shifted[:, v["PP"]] += 10.0  # a head that merely calls PP more: the same ranking
    assert bilabial_auc({"a": shifted}, {"a": labels}) == pytest.approx(15 / 16)
    lines = confusion_lines({"visemes": list(VISEMES), "confusion": [[0] * len(VISEMES)] * len(VISEMES),
                             "false_bilabials": [1, 2], "bilabial_auc": 15 / 16})
    assert lines == ["  PP called where no bilabial is within 2 frames: 1 of 2 runs; "
                     "bilabial frames ranked above the others (AUC): 0.938"]


def test_phone_loop_names_the_viseme_of_each_recognised_phone(monkeypatch):
    """The phone loop's logits are one-hot on the viseme of the phone pocketsphinx hears at each
    frame's labelled instant (frame time + the default model's 32 ms lead); silence elsewhere."""
    import backend.phone_stream as ps
    from training import audio_pretrain
    from training.synth.visemes import VISEMES

    # 10 ms frames: silence to 0.1 s, /m/ to 0.25 s, /aa/ to 0.6 s, then nothing recognised
    monkeypatch.setattr(ps, "recognise_phones", lambda wav: [("SIL", 0, 10), ("M", 10, 25), ("AA", 25, 60)])
    scorer = audio_pretrain.phone_loop_scorer()
    assert scorer.name == audio_pretrain.PHONE_LOOP and scorer.phone_lead == 0.032
    assert scorer.num_frames(16000) == 31  # 1 s at 30 fps, first and last sample
    x = scorer.logits(np.zeros(16000, np.float32), 31, 30.0)
    assert x.shape == (31, len(VISEMES)) and torch.equal(x.sum(1), torch.ones(31))
    # frame j shows the phone at j / 30 + 0.032 s: /m/ on frames 3-6, /aa/ on 7-17
    want = ["sil"] * 3 + ["PP"] * 4 + ["aa"] * 11 + ["sil"] * 13
    assert [VISEMES[i] for i in x.argmax(1).tolist()] == want


@pytest.mark.skipif(not (SPEECH / "transcription").is_file(), reason="needs ../shared speech")
def test_phone_loop_scores_real_speech(tmp_path, capsys):
    """--phone-loop scores pocketsphinx's recogniser on real speech as a checkpoint's head is
    scored: on a LibriVox clip it names most frames' visemes (0.66 here; chance, every frame the
    likeliest class, is under 0.3)."""
    pytest.importorskip("pocketsphinx", reason="pip install pocketsphinx")
    import shutil

    from backend.audio_io import load_audio
    from training import audio_pretrain

    speech = tmp_path / "speech"
    speech.mkdir()
    wav = sorted(SPEECH.glob("*.wav"))[1]
    shutil.copy(wav, speech / wav.name)
    (speech / "transcription").write_text(
        next(ln for ln in (SPEECH / "transcription").read_text().splitlines() if wav.stem in ln) + "\n")
    assert audio_pretrain.main(["--phone-loop", "--speech-dir", str(speech), "--confusion",
                                "--json", str(tmp_path / "s.json")]) == 0
    res = json.loads((tmp_path / "s.json").read_text())
    assert res["checkpoint"] == audio_pretrain.PHONE_LOOP
    n = audio_pretrain.phone_loop_scorer().num_frames(len(load_audio(wav)))
    s = res["pooled"]
    assert 0.8 * n < s["frames"] <= n and s["acc"] > 0.5
    conf = np.array(res["confusion"])
    assert conf.sum() == s["frames"] and np.trace(conf) / conf.sum() == pytest.approx(s["acc"])
    heard = sum(h for h, _ in res["bilabials_heard"].values())
    assert 0 < heard <= sum(k for _, k in res["bilabials_heard"].values())
    assert "PP called where no bilabial" in capsys.readouterr().out
    # one scorer at a time
    with pytest.raises(SystemExit):
        audio_pretrain.main(["--phone-loop", "--checkpoint", "x.pt", "--speech-dir", str(speech)])


@pytest.mark.parametrize("factor", [0.9, 1.25])
def test_sped_up_labels_follow_the_audio(factor):
    """A clip of 1/3 s tone bursts and pauses, labelled 1 in the bursts: sped up, each new frame's
    label still says whether its audio is a burst (without the re-timing they drift apart)."""
    from training.audio_pretrain import sped_up

    sr, fps, n = 16000, 30.0, 181
    frame = np.arange(n)
    labels = torch.from_numpy(((frame // 10) % 2 == 0).astype(np.int64))
    t = np.arange(int(6 * sr)) / sr
    wav = np.where(((t * fps).astype(int) // 10) % 2 == 0, 0.5 * np.sin(2 * np.pi * 220 * t), 0.0)
    fast, y = sped_up(wav.astype(np.float32), labels, fps, factor)
    assert len(y) == int(np.floor(len(fast) / sr * fps + 1e-6)) + 1
    hop = sr / fps
    loud = np.array([np.abs(fast[int(j * hop):int(j * hop + hop)]).mean() > 0.1 for j in range(len(y) - 1)])
    edges = np.abs(np.diff(y.numpy()[:-1], prepend=y.numpy()[0])) > 0  # frames at a burst's edge may straddle it
    agree = (loud == y.numpy()[:-1].astype(bool))[~(edges | np.roll(edges, -1))]
    assert agree.mean() > 0.97
