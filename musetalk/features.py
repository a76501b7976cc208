"""MuseTalk's audio features, the worker's half: 30 s whisper windows, their encoding, per-frame slices.

museasr.py (the session's half) cuts a session's speech into `AudioWindow`s and
`BatchAudio`; the inference worker encodes every session's windows in one pass
(`encode_windows`) and slices each frame's 10 encoder frames x 5 layers
(`batch_features`). The indexing follows MuseTalk's offline rule (see museasr.py).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from media import CHUNK_SAMPLES, SAMPLE_RATE

FRAMES_BEFORE = 4  # encoder frames before a video frame's own audio
FEATURE_FRAMES = 10  # encoder frames per video frame
WINDOW_SECONDS = 30  # whisper's input length
WINDOW_SAMPLES = WINDOW_SECONDS * SAMPLE_RATE
WINDOW_CHUNKS = WINDOW_SAMPLES // CHUNK_SAMPLES  # = whisper's 1500 encoder frames
EDGE_MODES = ("zero", "repeat")  # v1.5 zero features, v1.0 repeats the utterance's first/last frame
ZERO = -1  # an index that selects zero features
ENCODE_GROUP = 8  # windows per encoder pass (bounds memory: each is 30 s)


def edge_mode_for(version: str) -> str:
    return "repeat" if version == "v1" else "zero"


def feature_indices(first_chunk: int, frames: int, per_frame: int) -> np.ndarray:
    """(frames, 10) encoder-frame indices for consecutive video frames whose first chunk is `first_chunk`."""
    return frame_indices(first_chunk + per_frame * np.arange(frames))


def frame_indices(centres: np.ndarray) -> np.ndarray:
    """(n, 10) encoder-frame indices [c - 4, c + 6) for video frames whose own audio starts at `centres`."""
    return np.asarray(centres)[:, None] + np.arange(-FRAMES_BEFORE, FEATURE_FRAMES - FRAMES_BEFORE)[None, :]


def edge_indices(indices: np.ndarray, start: int, end: int, edge: str) -> np.ndarray:
    """Indices into a clip [start, end): outside it, ZERO (v1.5) or the nearest end frame (v1.0)."""
    if edge not in EDGE_MODES:
        raise ValueError(f"edge must be one of {EDGE_MODES}")
    if edge == "repeat":
        return np.clip(indices, start, end - 1)
    return np.where((indices >= start) & (indices < end), indices, ZERO)


def slice_features(layers: torch.Tensor, indices: np.ndarray) -> torch.Tensor:
    """(T, L, D) per-layer encoder output -> (frames, 10 * L, D) tokens (frame-major, then layer); ZERO -> 0."""
    index = torch.as_tensor(indices, device=layers.device)
    picked = layers[index.clamp(min=0)]  # (frames, 10, L, D)
    picked = picked * (index >= 0).to(layers.dtype)[:, :, None, None]
    return picked.reshape(indices.shape[0], -1, layers.shape[-1])


@dataclass(frozen=True)
class AudioWindow:
    """One utterance's audio as whisper sees it, and the encoder frames each of its video frames takes."""

    samples: np.ndarray  # float32 from the window start, at most 30 s (zero-padded to 30 s when encoded)
    rows: np.ndarray  # (n,) the batch's video frames this window serves
    indices: np.ndarray  # (n, 10) encoder frames in window coordinates, ZERO for a zero feature


@dataclass(frozen=True)
class BatchAudio:
    """The audio side of one batch: usually one window; one per utterance when a batch spans two."""

    frames: int
    windows: tuple[AudioWindow, ...]


def padded(samples: np.ndarray) -> np.ndarray:
    """Audio zero-padded to whisper's 30 s, as its feature extractor does before the log-mel."""
    if len(samples) > WINDOW_SAMPLES:
        raise ValueError("a window holds at most 30 s of audio")
    return np.pad(samples, (0, WINDOW_SAMPLES - len(samples)))


@torch.inference_mode()
def encode_windows(models, windows: list[AudioWindow]) -> list[torch.Tensor]:
    """Whisper layers (1500, 5, 384) for each window: 30 s inputs, up to ENCODE_GROUP per encoder pass."""
    results: list[torch.Tensor] = []
    for start in range(0, len(windows), ENCODE_GROUP):
        group = windows[start:start + ENCODE_GROUP]
        audio = torch.from_numpy(np.stack([padded(w.samples) for w in group])).to(models.device)
        mel = models.log_mel(audio).to(models.dtype)
        results.extend(models.whisper(mel).unbind(0))
    return results


def batch_features(batch: BatchAudio, layers: list[torch.Tensor]) -> torch.Tensor:
    """(frames, 50, 384) UNet audio tokens of a batch from its windows' encoder layers.

    Frames no window serves (no speech) get zeros; they are not shown.
    """
    if len(layers) != len(batch.windows):
        raise ValueError("one encoder output per window")
    if not layers:
        raise ValueError("a batch without speech has no features")
    first = layers[0]
    tokens = torch.zeros(batch.frames, FEATURE_FRAMES * first.shape[1], first.shape[2],
                         dtype=first.dtype, device=first.device)
    for window, encoded in zip(batch.windows, layers):
        tokens[torch.as_tensor(window.rows, device=first.device)] = slice_features(encoded, window.indices)
    return tokens
