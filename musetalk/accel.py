"""Optional GPU speed-ups for the MuseTalk models: channels-last memory, torch.compile, CUDA graphs.

torch.compile specialises on tensor shapes, so with compilation on the worker
pads each pass to a batch bucket (1, 2, 4, ... max_batch): a handful of
compiled graphs instead of one per batch size. `reduce-overhead` is
torch.compile's CUDA-graph mode (replays the captured kernels, which removes
the launch overhead that dominates small batches).
"""

from __future__ import annotations

import logging

import torch

from musetalk.loader import MuseTalkModels
from musetalk.settings import COMPILE_CHOICES as COMPILE_MODES

logger = logging.getLogger(__name__)


def accelerate(models: MuseTalkModels, channels_last: bool = False, compile_mode: str = "off") -> MuseTalkModels:
    """Apply the chosen speed-ups in place (the UNet, the VAE decoder and the whisper encoder)."""
    if compile_mode not in COMPILE_MODES:
        raise ValueError(f"compile mode must be one of {COMPILE_MODES}")
    if channels_last:
        models.unet.to(memory_format=torch.channels_last)
        models.vae.to(memory_format=torch.channels_last)
    if compile_mode != "off":
        options = {"mode": None if compile_mode == "default" else compile_mode, "dynamic": False}
        models.unet = torch.compile(models.unet, **options)
        models.vae.decoder = torch.compile(models.vae.decoder, **options)
        models.whisper = torch.compile(models.whisper, **options)
    if channels_last or compile_mode != "off":
        logger.info("MuseTalk speed-ups: channels_last=%s, torch.compile=%s", channels_last, compile_mode)
    return models


def bucket(frames: int, max_batch: int) -> int:
    """The smallest power of two >= frames (capped at max_batch): the batch a compiled pass runs."""
    size = 1
    while size < frames:
        size *= 2
    return min(size, max(max_batch, frames))
