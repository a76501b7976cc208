"""MuseTalk fidelity on tiny weights: the fp16 decode tail, the blend mask, v1.0/v1.5 geometry."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from musetalk.loader import load_vae, place
from musetalk.vae import decode_to_bgr, scaling_factor
from tests.musetalk_fixtures import write_tiny_weights

CPU = torch.device("cpu")


@pytest.fixture(scope="module")
def vae_dir(tmp_path_factory) -> Path:
    return write_tiny_weights(tmp_path_factory.mktemp("fidelity") / "models")


@pytest.fixture(scope="module")
def latents() -> torch.Tensor:
    torch.manual_seed(0)
    return torch.randn(2, 4, 32, 32) * 3  # wide enough that the faces span 0..255


def _exact_tail(sample: torch.Tensor) -> np.ndarray:
    """MuseTalk's decode tail in float64: (x / 2 + 0.5) clamped, x 255, rounded, RGB -> BGR."""
    pixels = ((sample.double() / 2 + 0.5).clamp(0, 1) * 255).round().to(torch.uint8)
    return pixels.permute(0, 2, 3, 1).numpy()[..., ::-1]


def test_fp16_decode_tail_is_exact(vae_dir, latents):
    """With the decoder in fp16, the pixels equal an exact tail applied to the decoder's own output."""
    vae = place(load_vae(vae_dir), CPU, torch.float16)
    with torch.inference_mode():
        faces = decode_to_bgr(vae, latents.half())
        sample = vae.decode(latents.half() / scaling_factor(vae)).sample
    exact = _exact_tail(sample)
    assert faces.shape == (2, 256, 256, 3) and faces.flags.c_contiguous
    assert faces.min() == 0 and faces.max() == 255  # the test covers the top of the range, where fp16 is coarse
    assert (faces == exact).mean() >= 0.999


def test_fp16_and_fp32_decode_agree_within_one_level(vae_dir, latents):
    with torch.inference_mode():
        full = decode_to_bgr(place(load_vae(vae_dir), CPU, torch.float32), latents)
        half = decode_to_bgr(place(load_vae(vae_dir), CPU, torch.float16), latents.half())
    difference = np.abs(full.astype(np.int16) - half)
    assert (difference <= 1).mean() >= 0.999, (difference <= 1).mean()
