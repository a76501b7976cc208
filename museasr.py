"""MuseASR: streaming whisper features for MuseTalk, one batch of video frames at a time.

MuseTalk gives video frame i the whisper encoder frames [c - 4, c + 6) around
c = i * 50 / fps (encoder frames run at 50 per second, one per 20 ms chunk),
10 frames x 5 layers -> 50 tokens of 384. The original computes features for
a whole file up front; here each batch of B frames (B * chunks_per_frame
chunks) is encoded inside a window with `left` chunks of past audio and
`right` chunks of future audio:

    [ left context | the batch's chunks | right context ]
      history        consumed now         peeked, not consumed

Right context is latency: the batch waits until `right` more chunks exist
(default 10 chunks = 200 ms, padded with silence at the end of an utterance).
Indices that fall outside the window are MuseTalk's edges: v1.5 pads with zero
features, v1.0 repeats the edge frame.
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass

import numpy as np
import torch

from media import CHUNK_SAMPLES, AudioChunk, chunks_per_frame
from musetalk.settings import DEFAULT_CONTEXT_CHUNKS

FRAMES_BEFORE = 4  # encoder frames before a video frame's own audio
FEATURE_FRAMES = 10  # encoder frames per video frame
EDGE_MODES = ("zero", "clamp")  # v1.5 zero-pads, v1.0 replicates the edge


def edge_mode_for(version: str) -> str:
    return "clamp" if version == "v1" else "zero"


def feature_indices(first_chunk: int, frames: int, per_frame: int) -> np.ndarray:
    """(frames, 10) encoder-frame indices for consecutive video frames whose first chunk is `first_chunk`."""
    centres = first_chunk + per_frame * np.arange(frames)
    return centres[:, None] + np.arange(-FRAMES_BEFORE, FEATURE_FRAMES - FRAMES_BEFORE)[None, :]


def slice_features(layers: torch.Tensor, indices: np.ndarray, edge: str) -> torch.Tensor:
    """(T, L, D) per-layer encoder output -> (frames, 10 * L, D) tokens (frame-major, then layer)."""
    if edge not in EDGE_MODES:
        raise ValueError(f"edge must be one of {EDGE_MODES}")
    length = layers.shape[0]
    index = torch.as_tensor(indices, device=layers.device)
    picked = layers[index.clamp(0, length - 1)]  # (frames, 10, L, D)
    if edge == "zero":
        inside = ((index >= 0) & (index < length)).to(layers.dtype)
        picked = picked * inside[:, :, None, None]
    return picked.reshape(indices.shape[0], -1, layers.shape[-1])


@dataclass(frozen=True)
class AudioWindow:
    """One batch's audio with its context; chunk `first_chunk` is the batch's first."""

    samples: np.ndarray  # float32, a whole number of chunks
    first_chunk: int
    frames: int

    @property
    def chunks(self) -> int:
        return len(self.samples) // CHUNK_SAMPLES


class MuseASR:
    """Builds each batch's audio window from a session's stream and maps features back to frames."""

    def __init__(self, fps: int, left_chunks: int = DEFAULT_CONTEXT_CHUNKS,
                 right_chunks: int = DEFAULT_CONTEXT_CHUNKS, edge: str = "zero"):
        if left_chunks < 0 or right_chunks < 0:
            raise ValueError("audio context must be >= 0 chunks")
        if edge not in EDGE_MODES:
            raise ValueError(f"edge must be one of {EDGE_MODES}")
        self.per_frame = chunks_per_frame(fps)
        self.left = left_chunks
        self.right = right_chunks
        self.edge = edge
        silence = np.zeros(CHUNK_SAMPLES, np.float32)
        self._history: deque[np.ndarray] = deque([silence] * left_chunks, maxlen=left_chunks)

    def push(self, chunks: list[AudioChunk]) -> None:
        """Record consumed audio that needs no features (idle frames) as future left context."""
        self._history.extend(chunk.samples for chunk in chunks)

    def window(self, chunks: list[AudioChunk], future: list[AudioChunk]) -> AudioWindow:
        """The window for a batch of `chunks` (consumed) with `future` as right context."""
        if len(chunks) % self.per_frame:
            raise ValueError(f"a batch needs whole frames of {self.per_frame} chunks")
        right = [chunk.samples for chunk in future[: self.right]]
        right += [np.zeros(CHUNK_SAMPLES, np.float32)] * (self.right - len(right))
        parts = [*self._history, *(chunk.samples for chunk in chunks), *right]
        self.push(chunks)
        return AudioWindow(samples=np.concatenate(parts).astype(np.float32, copy=False),
                           first_chunk=self.left, frames=len(chunks) // self.per_frame)

    def features(self, layers: torch.Tensor, window: AudioWindow) -> torch.Tensor:
        """(T, 5, 384) encoder output of `window` -> (frames, 50, 384) UNet audio tokens."""
        return slice_features(layers, feature_indices(window.first_chunk, window.frames, self.per_frame), self.edge)


@torch.inference_mode()
def encode_windows(models, windows: list[AudioWindow]) -> list[torch.Tensor]:
    """Whisper layers (T, 5, 384) for each window; windows of equal length share one encoder pass."""
    results: list[torch.Tensor | None] = [None] * len(windows)
    by_length: dict[int, list[int]] = {}
    for position, window in enumerate(windows):
        by_length.setdefault(len(window.samples), []).append(position)
    for positions in by_length.values():
        audio = torch.from_numpy(np.stack([windows[p].samples for p in positions])).to(models.device)
        mel = models.log_mel(audio).to(models.dtype)
        layers = models.whisper(mel)
        for row, position in enumerate(positions):
            results[position] = layers[row]
    return results
