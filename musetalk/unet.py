"""MuseTalk's UNet (a diffusers UNet2DConditionModel) and the audio positional encoding.

MuseTalk is single-step latent inpainting, not diffusion: the UNet takes
[masked latent, reference latent] (8 channels, 32x32) at timestep 0 and the
whisper audio tokens through cross-attention, and returns the 4-channel latent
of the face with the mouth drawn in.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import torch
from diffusers import UNet2DConditionModel
from torch import nn

# models/musetalk*/musetalk.json as published (the file is not in MuseTalk's git; these are its fields).
OFFICIAL_UNET_CONFIG = {
    "_class_name": "UNet2DConditionModel",
    "_diffusers_version": "0.6.0.dev0",
    "act_fn": "silu",
    "attention_head_dim": 8,
    "block_out_channels": [320, 640, 1280, 1280],
    "center_input_sample": False,
    "cross_attention_dim": 384,
    "down_block_types": ["CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "DownBlock2D"],
    "downsample_padding": 1,
    "flip_sin_to_cos": True,
    "freq_shift": 0,
    "in_channels": 8,
    "layers_per_block": 2,
    "mid_block_scale_factor": 1,
    "norm_eps": 1e-05,
    "norm_num_groups": 32,
    "out_channels": 4,
    "sample_size": 64,
    "up_block_types": ["UpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D"],
}

AUDIO_DIM = 384  # whisper-tiny width = the UNet's cross_attention_dim
PE_MAX_LEN = 5000


class PositionalEncoding(nn.Module):
    """Sinusoidal encoding added to the (B, 50, 384) audio tokens before the UNet."""

    def __init__(self, d_model: int = AUDIO_DIM, max_len: int = PE_MAX_LEN):
        super().__init__()
        position = torch.arange(max_len, dtype=torch.float32)[:, None]
        div_term = torch.exp(torch.arange(0, d_model, 2, dtype=torch.float32) * (-math.log(10000.0) / d_model))
        table = torch.zeros(max_len, d_model)
        table[:, 0::2] = torch.sin(position * div_term)
        table[:, 1::2] = torch.cos(position * div_term)
        self.register_buffer("pe", table[None], persistent=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.pe[:, : x.shape[1]].to(x.dtype)


def read_unet_config(path: Path) -> dict:
    """musetalk.json as a dict (raises ValueError/OSError for the caller to name)."""
    config = json.loads(path.read_text())
    if not isinstance(config, dict) or config.get("in_channels") != 8:
        raise ValueError("not a MuseTalk UNet config (in_channels must be 8: masked + reference latents)")
    return config


def build_unet(config: dict, device: torch.device | str | None = None) -> UNet2DConditionModel:
    """UNet2DConditionModel for a musetalk.json (on `device`, e.g. "meta" to skip allocation).

    from_config drops the `_class_name`/`_diffusers_version` bookkeeping keys;
    the legacy `attention_head_dim: 8` means 8 heads, as in diffusers 0.6.
    """
    with torch.device(device or "cpu"):
        return UNet2DConditionModel.from_config(config)


def expected_unet_keys(config: dict) -> set[str]:
    """The state_dict keys a checkpoint for this config must hold (built on the meta device)."""
    return set(build_unet(config, "meta").state_dict())
