"""MuseTalk engine settings chosen on the command line (kept free of torch imports)."""

from __future__ import annotations

import argparse
from dataclasses import dataclass

DEFAULT_CONTEXT_CHUNKS = 10  # 200 ms of 20 ms chunks of future audio after a batch
MAX_RIGHT_CHUNKS = 100  # 2 s: the rest of whisper's 30 s window holds the utterance so far
DEFAULT_MAX_BATCH = 32  # frames per UNet pass, summed over sessions
FIRST_BATCH_FRAMES = 2  # after silence, the first batch is small so speech starts fast


@dataclass(frozen=True)
class MuseTalkSettings:
    right_chunks: int = DEFAULT_CONTEXT_CHUNKS  # future audio a batch uses, when queued (latency)
    max_batch: int = DEFAULT_MAX_BATCH
    first_batch: int = FIRST_BATCH_FRAMES
    version: str = "auto"  # v15 | v1 | auto (v15 when its weights are present)
    device: str | None = None  # None: cuda when available, else cpu
    channels_last: bool = False  # GPU speed-ups (musetalk/accel.py)
    compile: str = "off"  # off | default | reduce-overhead (CUDA graphs) | max-autotune


COMPILE_CHOICES = ("off", "default", "reduce-overhead", "max-autotune")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """The MuseTalk speed-up flags (app.py and bench/bench_musetalk.py)."""
    parser.add_argument("--musetalk-channels-last", dest="musetalk_channels_last", action="store_true",
                        help="musetalk: channels-last memory format for the UNet and VAE (GPU)")
    parser.add_argument("--musetalk-compile", dest="musetalk_compile", choices=COMPILE_CHOICES, default="off",
                        help="musetalk: torch.compile the models; reduce-overhead adds CUDA graphs (GPU)")


def right_context(text: str) -> int:
    """argparse type for -r: future audio after a batch, 0..MAX_RIGHT_CHUNKS chunks of 20 ms."""
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a whole number of 20 ms chunks") from None
    if not 0 <= value <= MAX_RIGHT_CHUNKS:
        raise argparse.ArgumentTypeError(f"right context must be 0..{MAX_RIGHT_CHUNKS} chunks of 20 ms")
    return value
