"""Checkpoint files: safe loading, clear errors, our format round trip."""
import os
import zipfile

import pytest
import torch

from backend.checkpoint import load_model, save_model
from backend.diffusionnet import TorchOperators, compute_operators
from backend.errors import CheckpointError
from backend.model import ModelConfig, ScanTalk
from tests.meshes import icosphere


class _Exploit:
    """Unpickling this would create a marker file: the loader must never do it."""

    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return (os.mkdir, (self.marker,))


def test_checkpoint_with_pickled_code_is_refused_and_not_executed(tmp_path):
    marker = str(tmp_path / "pwned")
    path = tmp_path / "evil.pth.tar"
    torch.save({"autoencoder_state_dict": {}, "payload": _Exploit(marker)}, path)
    with pytest.raises(CheckpointError, match="could run code"):
        load_model(path)
    assert not os.path.exists(marker)


def test_truncated_checkpoint(tmp_path):
    model = ScanTalk(ModelConfig(audio={"kind": "logmel", "config": {"n_mels": 8, "hidden": 8, "out_dim": 8}},
                                 latent=8, width=8, n_blocks=1, lstm_layers=1))
    good = tmp_path / "good.pt"
    save_model(good, model)
    bad = tmp_path / "bad.pt"
    bad.write_bytes(good.read_bytes()[: good.stat().st_size // 2])
    with pytest.raises(CheckpointError, match="truncated"):
        load_model(bad)


@pytest.mark.parametrize("content,words", [(b"", "empty"), (b"hello, I am text", "not a readable")])
def test_files_that_are_not_checkpoints(tmp_path, content, words):
    p = tmp_path / "x.pth.tar"
    p.write_bytes(content)
    with pytest.raises(CheckpointError, match=words):
        load_model(p)


def test_a_torch_file_that_is_not_scantalk(tmp_path):
    p = tmp_path / "other.pt"
    torch.save({"state_dict": {"w": torch.zeros(2)}}, p)
    with pytest.raises(CheckpointError, match="not a ScanTalk checkpoint"):
        load_model(p)
    with pytest.raises(CheckpointError, match="not found"):
        load_model(tmp_path / "missing.pt")


def test_our_format_round_trip_keeps_config_and_predictions(tmp_path):
    torch.manual_seed(0)
    cfg = ModelConfig(audio={"kind": "logmel", "config": {"n_mels": 16, "hidden": 16, "out_dim": 16}},
                      latent=8, width=8, n_blocks=2, lstm_layers=2, k_eig=16, log_time=True, fps=25.0,
                      frame_centre=(0.0, 0.1, 0.2), frame_size=0.4, name="tiny")
    model = ScanTalk(cfg).eval()
    torch.nn.init.normal_(model.decoder.last_lin.weight, std=0.1)
    save_model(tmp_path / "m.pt", model, epoch=3)
    again = load_model(tmp_path / "m.pt")
    assert again.cfg == cfg
    v, f = icosphere(1)
    ops = TorchOperators.from_numpy(compute_operators(v, f, k_eig=16))
    wav = torch.randn(1, 12000)
    n = model.num_frames(12000)
    with torch.no_grad():
        torch.testing.assert_close(model(wav, torch.from_numpy(v).float(), ops, n),
                                   again(wav, torch.from_numpy(v).float(), ops, n))
    assert zipfile.is_zipfile(tmp_path / "m.pt")
