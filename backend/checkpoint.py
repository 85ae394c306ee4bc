"""Load and save model checkpoints: our own format and the official ScanTalk `*.pth.tar` files.

Every file is read with `torch.load(weights_only=True)`: a checkpoint is data, never code. A file
carrying pickled objects is refused before anything in it runs.
"""
from __future__ import annotations

import pickle
import re
from pathlib import Path

import torch

from .errors import CheckpointError
from .model import ModelConfig, ScanTalk

FORMAT = "scantalk-blender/1"

# The centre and bounding-box diagonal of FLAME's template head (metres), the frame the official
# weights were trained in. Numbers only: no FLAME data is shipped.
FLAME_FRAME_CENTRE = (-0.000246, -0.021027, -0.041420)
FLAME_FRAME_SIZE = 0.43999


def read_file(path) -> dict:
    """torch.load a checkpoint safely, turning every failure into a message a user can act on."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"checkpoint not found: {path}")
    if path.stat().st_size == 0:
        raise CheckpointError(f"{path.name} is empty; download or copy the checkpoint again")
    try:
        data = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as exc:
        raise CheckpointError(
            f"{path.name} contains Python objects other than tensors and plain data; it was not "
            f"loaded because unpickling could run code. Use a checkpoint saved as a state dict "
            f"(details: {str(exc).splitlines()[0][:200]})"
        ) from exc
    except Exception as exc:  # torch raises many kinds (RuntimeError, KeyError, EOFError ...) for junk
        raise CheckpointError(
            f"{path.name} is not a readable PyTorch checkpoint (truncated or another kind of file?): "
            f"{str(exc).splitlines()[0][:200]}"
        ) from exc
    if not isinstance(data, dict):
        raise CheckpointError(f"{path.name} holds a {type(data).__name__}, not a checkpoint dictionary")
    return data


def infer_hubert_config(sd: dict, prefix: str = "audio_encoder.") -> dict:
    """The HuBERT architecture from tensor shapes alone (12 heads as in HuBERT-base)."""
    conv = sorted(
        (int(m.group(1)), v) for k, v in sd.items()
        if (m := re.fullmatch(re.escape(prefix) + r"feature_extractor\.conv_layers\.(\d+)\.conv\.weight", k))
    )
    if not conv:
        raise CheckpointError("no HuBERT feature extractor weights found under 'audio_encoder.'")
    kernels = [int(w.shape[-1]) for _, w in conv]
    # Strides are not in the shapes; the HuBERT/wav2vec2 family pairs kernel 10 with stride 5.
    strides = [5 if k == 10 else 2 for k in kernels]
    layers = {int(m.group(1)) for k in sd if (m := re.match(re.escape(prefix) + r"encoder\.layers\.(\d+)\.", k))}
    hidden = int(sd[prefix + "feature_projection.projection.weight"].shape[0])
    pos_v = sd.get(prefix + "encoder.pos_conv_embed.conv.weight_v")
    if pos_v is None:
        pos_v = sd[prefix + "encoder.pos_conv_embed.conv.parametrizations.weight.original1"]
    has_norm_1 = (prefix + "feature_extractor.conv_layers.1.layer_norm.weight") in sd
    return dict(
        hidden_size=hidden,
        num_hidden_layers=len(layers),
        num_attention_heads=12,
        intermediate_size=int(sd[prefix + "encoder.layers.0.feed_forward.intermediate_dense.weight"].shape[0]),
        conv_dim=[int(w.shape[0]) for _, w in conv],
        conv_kernel=kernels,
        conv_stride=strides,
        conv_bias=(prefix + "feature_extractor.conv_layers.0.conv.bias") in sd,
        feat_extract_norm="layer" if has_norm_1 else "group",
        do_stable_layer_norm=False,
        num_conv_pos_embeddings=int(pos_v.shape[2]),
        num_conv_pos_embedding_groups=hidden // int(pos_v.shape[1]),
    )


def _diffusionnet_sizes(sd: dict, prefix: str) -> tuple[int, int]:
    width = int(sd[prefix + "first_lin.weight"].shape[0])
    blocks = len({int(m.group(1)) for k in sd if (m := re.match(re.escape(prefix) + r"block_(\d+)\.", k))})
    return width, blocks


def _remap_weight_norm(sd: dict, model: ScanTalk) -> dict:
    """Old transformers stored the positional conv's weight norm as weight_g/weight_v; current
    torch parametrizes it as original0/original1. Rename to whatever this model expects."""
    expected = set(model.state_dict())
    out = {}
    for k, v in sd.items():
        for old, new in ((".weight_g", ".parametrizations.weight.original0"),
                         (".weight_v", ".parametrizations.weight.original1")):
            if k.endswith(old) and k not in expected:
                cand = k[: -len(old)] + new
                if cand in expected:
                    k = cand
        out[k] = v
    return out


def official_config(sd: dict) -> ModelConfig:
    width, blocks = _diffusionnet_sizes(sd, "decoder.")
    latent = int(sd["encoder.last_lin.weight"].shape[0])
    lstm_layers = len({k.split("_l")[-1].split("_")[0] for k in sd if k.startswith("lstm.weight_ih_l")})
    return ModelConfig(
        audio={"kind": "hubert", "config": infer_hubert_config(sd)},
        latent=latent, width=width, n_blocks=blocks, lstm_layers=lstm_layers,
        k_eig=128, grad_eps=1e-5, log_time=False, fps=30.0,
        frame_centre=FLAME_FRAME_CENTRE, frame_size=FLAME_FRAME_SIZE, name="scantalk-official",
    )


def _load_state(model: ScanTalk, sd: dict, name: str) -> None:
    sd = _remap_weight_norm(sd, model)
    missing, unexpected = model.load_state_dict(sd, strict=False)
    # masked_spec_embed only matters for training-time masking; older files may lack it.
    missing = [k for k in missing if not k.endswith("masked_spec_embed")]
    if missing or unexpected:
        raise CheckpointError(
            f"{name} does not match the model it describes: "
            f"{len(missing)} missing tensors (e.g. {missing[:3]}), "
            f"{len(unexpected)} unexpected (e.g. {unexpected[:3]})"
        )


def load_official(data: dict, name: str = "checkpoint") -> ScanTalk:
    sd = data["autoencoder_state_dict"]
    try:
        cfg = official_config(sd)
    except KeyError as exc:
        raise CheckpointError(f"{name} looks like an official ScanTalk file but lacks {exc}") from exc
    model = ScanTalk(cfg)
    sd = {("audio_encoder.model." + k[len("audio_encoder."):] if k.startswith("audio_encoder.") else k): v
          for k, v in sd.items()}
    _load_state(model, sd, name)
    return model


def load_model(path, device="cpu") -> ScanTalk:
    """A ScanTalk model in eval mode from our checkpoint or an official `.pth.tar`."""
    path = Path(path)
    data = read_file(path)
    if "autoencoder_state_dict" in data:
        model = load_official(data, path.name)
    elif data.get("format") == FORMAT:
        model = ScanTalk(ModelConfig.from_dict(data["config"]))
        _load_state(model, data["model"], path.name)
    else:
        raise CheckpointError(
            f"{path.name} is a PyTorch file but not a ScanTalk checkpoint (keys: {sorted(data)[:6]}); "
            f"expected an official ScanTalk .pth.tar or a checkpoint written by this project's trainer"
        )
    return model.to(device).eval()


def save_model(path, model: ScanTalk, **extra) -> None:
    """Write our format: the model config travels with the weights. `extra` must be plain data."""
    data = {"format": FORMAT, "config": model.cfg.to_dict(), "model": model.state_dict(), **extra}
    path = Path(path)
    tmp = path.with_name(path.name + ".tmp")
    torch.save(data, tmp)
    tmp.replace(path)
