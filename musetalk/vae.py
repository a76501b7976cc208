"""The sd-vae-ft-mse AutoencoderKL as MuseTalk uses it: 256x256 face crops <-> 4x32x32 latents."""

from __future__ import annotations

import cv2
import numpy as np
import torch
from diffusers import AutoencoderKL

# stabilityai/sd-vae-ft-mse config.json (no scaling_factor key).
OFFICIAL_VAE_CONFIG = {
    "_class_name": "AutoencoderKL",
    "_diffusers_version": "0.4.2",
    "act_fn": "silu",
    "block_out_channels": [128, 256, 512, 512],
    "down_block_types": ["DownEncoderBlock2D"] * 4,
    "in_channels": 3,
    "latent_channels": 4,
    "layers_per_block": 2,
    "norm_num_groups": 32,
    "out_channels": 3,
    "sample_size": 256,
    "up_block_types": ["UpDecoderBlock2D"] * 4,
}
CROP_SIZE = 256
LATENT_SIZE = CROP_SIZE // 8
DEFAULT_SCALING = 0.18215  # sd-vae-ft-mse's config.json has no scaling_factor; diffusers' default applies


def scaling_factor(vae: AutoencoderKL) -> float:
    return float(getattr(vae.config, "scaling_factor", None) or DEFAULT_SCALING)


def crops_to_tensor(crops_bgr: list[np.ndarray]) -> torch.Tensor:
    """256x256 BGR uint8 crops -> (N, 3, 256, 256) RGB float in [-1, 1].

    Contiguous (NCHW): the permuted view would otherwise carry channels-last
    strides into the VAE's convolutions.
    """
    rgb = np.stack([cv2.cvtColor(crop, cv2.COLOR_BGR2RGB) for crop in crops_bgr])
    return torch.from_numpy(rgb).permute(0, 3, 1, 2).contiguous().float() / 127.5 - 1.0


@torch.inference_mode()
def encode_for_unet(vae: AutoencoderKL, crops_bgr: list[np.ndarray]) -> torch.Tensor:
    """(N, 8, 32, 32) UNet inputs: [masked latent (lower half black), reference latent].

    The lower half is set to -1 (black after normalisation), as MuseTalk's mask
    does. The latent is the distribution's mode, so preparation is reproducible
    (MuseTalk's inference samples, its training uses the mode; the VAE's
    variance is tiny either way).
    """
    param = next(vae.parameters())
    pixels = crops_to_tensor(crops_bgr).to(param.device, param.dtype)
    masked = pixels.clone()
    masked[:, :, CROP_SIZE // 2:, :] = -1.0
    scale = scaling_factor(vae)
    masked_latents = vae.encode(masked).latent_dist.mode() * scale
    ref_latents = vae.encode(pixels).latent_dist.mode() * scale
    return torch.cat([masked_latents, ref_latents], dim=1).float().cpu()


def decode_to_bgr(vae: AutoencoderKL, latents: torch.Tensor) -> np.ndarray:
    """(N, 4, 32, 32) latents -> (N, 256, 256, 3) BGR uint8 faces.

    The decoder runs in the models' dtype; the tail runs in float32, because
    fp16 has only 3 significant digits near 255 and would put a few percent
    of pixels one level off.
    """
    images = vae.decode(latents / scaling_factor(vae)).sample.float()
    images = (images / 2 + 0.5).clamp(0, 1).mul(255).round().to(torch.uint8)
    bgr = images.flip(1).permute(0, 2, 3, 1).contiguous()
    return bgr.cpu().numpy()
