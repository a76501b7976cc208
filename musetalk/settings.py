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


def right_context(text: str) -> int:
    """argparse type for -r: future audio after a batch, 0..MAX_RIGHT_CHUNKS chunks of 20 ms."""
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a whole number of 20 ms chunks") from None
    if not 0 <= value <= MAX_RIGHT_CHUNKS:
        raise argparse.ArgumentTypeError(f"right context must be 0..{MAX_RIGHT_CHUNKS} chunks of 20 ms")
    return value
