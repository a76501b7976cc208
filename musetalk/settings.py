"""MuseTalk engine settings chosen on the command line (kept free of torch imports)."""

from __future__ import annotations

from dataclasses import dataclass

DEFAULT_CONTEXT_CHUNKS = 10  # 200 ms of 20 ms chunks on each side of a batch
DEFAULT_MAX_BATCH = 32  # frames per UNet pass, summed over sessions
FIRST_BATCH_FRAMES = 2  # after silence, the first batch is small so speech starts fast


@dataclass(frozen=True)
class MuseTalkSettings:
    left_chunks: int = DEFAULT_CONTEXT_CHUNKS
    right_chunks: int = DEFAULT_CONTEXT_CHUNKS  # latency: a batch waits for this much future audio
    max_batch: int = DEFAULT_MAX_BATCH
    first_batch: int = FIRST_BATCH_FRAMES
    version: str = "auto"  # v15 | v1 | auto (v15 when its weights are present)
    device: str | None = None  # None: cuda when available, else cpu
