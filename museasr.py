"""MuseASR: streaming whisper features for MuseTalk, equal to the offline ones.

MuseTalk gives video frame i of an audio clip the whisper encoder frames
[c - 4, c + 6) around c = i * 50 / fps (one encoder frame per 20 ms chunk),
10 frames x 5 layers -> 50 tokens of 384. Offline, whisper encodes the clip
padded to 30 s (the log-mel clamp, max - 8, is taken over that padded input),
the output is trimmed to the clip's length, and indices outside the clip are
MuseTalk's edges: v1.5 uses zero features there, v1.0 repeats the first/last
frame.

Streaming, a clip is an utterance: a run of consecutive speech chunks (an
interrupt, i.e. a new epoch, also ends one). Each
batch of B video frames is encoded in one 30 s window placed at the start of
its utterance (or, after 30 s of speech, as far back as fits):

    [ utterance start ... the batch's chunks | right context ] + zero padding to 30 s
      real audio history    consumed now       peeked, not consumed

So a frame's features equal the offline ones computed over the same audio;
they differ from features of the whole, finished utterance only through
attention to audio beyond the right context (and the log-mel ceiling of
audio not yet heard). Right context is latency: a frame can only use the
`right` chunks already queued behind its batch (default 10 = 200 ms); when
fewer are queued (the utterance ends, or TTS is behind), the window ends
where the audio ends and later indices are edges, as at the end of a clip.
Whisper's cost does not depend on how much of the 30 s holds audio.
"""

from __future__ import annotations

from collections import deque
from itertools import takewhile
from dataclasses import dataclass

import numpy as np
import torch

from media import CHUNK_SAMPLES, SAMPLE_RATE, AudioChunk, chunks_per_frame
from musetalk.settings import DEFAULT_CONTEXT_CHUNKS, MAX_RIGHT_CHUNKS

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


class MuseASR:
    """Keeps a session's utterance history and builds each batch's windows."""

    def __init__(self, fps: int, right_chunks: int = DEFAULT_CONTEXT_CHUNKS, edge: str = "zero",
                 max_batch: int = 32):
        if not 0 <= right_chunks <= MAX_RIGHT_CHUNKS:
            raise ValueError(f"right audio context must be 0..{MAX_RIGHT_CHUNKS} chunks")
        if edge not in EDGE_MODES:
            raise ValueError(f"edge must be one of {EDGE_MODES}")
        self.per_frame = chunks_per_frame(fps)
        self.right = right_chunks
        self.edge = edge
        self.max_batch = max_batch
        # The whole window must fit in 30 s: left history + a batch + right context + the first frame's 4 back.
        self.max_history = WINDOW_CHUNKS - right_chunks - self.per_frame * max_batch - FRAMES_BEFORE
        if self.max_history <= 0:
            raise ValueError("batch and right context do not fit whisper's 30 s window")
        self._utterance: deque[np.ndarray] = deque(maxlen=self.max_history)  # speech chunks of the current run
        self._epoch: int | None = None  # an interrupt (new epoch) ends the utterance too

    def push(self, chunks: list[AudioChunk]) -> None:
        """Record consumed audio: speech extends the current utterance, anything else ends it."""
        for chunk in chunks:
            if chunk.epoch != self._epoch:
                self._utterance.clear()
                self._epoch = chunk.epoch
            if chunk.speech:
                self._utterance.append(chunk.samples)
            else:
                self._utterance.clear()

    def window(self, chunks: list[AudioChunk], future: list[AudioChunk]) -> BatchAudio:
        """The windows for a batch of `chunks` (consumed) with `future` chunks (peeked) as right context."""
        if len(chunks) % self.per_frame:
            raise ValueError(f"a batch needs whole frames of {self.per_frame} chunks")
        if len(chunks) > self.per_frame * self.max_batch:
            raise ValueError(f"a batch holds at most {self.max_batch} frames")
        history = list(self._utterance) if chunks and chunks[0].epoch == self._epoch else []
        future = list(takewhile(lambda c: c.epoch == chunks[-1].epoch, future[: self.right])) if chunks else []
        sequence = [*history, *(c.samples for c in chunks), *(c.samples for c in future)]
        speech = [True] * len(history) + [c.speech for c in chunks] + [c.speech for c in future]
        runs = _runs(speech)
        frames = len(chunks) // self.per_frame
        firsts = len(history) + self.per_frame * np.arange(frames)
        by_run: dict[tuple[int, int], list[int]] = {}
        for row, first in enumerate(firsts):
            spoken = [i for i in range(first, first + self.per_frame) if speech[i]]
            if spoken:
                by_run.setdefault(runs[spoken[0]], []).append(row)
        windows = []
        for (start, end), rows in by_run.items():
            # The history is capped (max_history), so the window [start, end) always fits in 30 s.
            indices = edge_indices(frame_indices(firsts[rows]), start, end, self.edge)
            indices = np.where(indices == ZERO, ZERO, indices - start)
            samples = np.concatenate(sequence[start:end]).astype(np.float32, copy=False)
            windows.append(AudioWindow(samples=samples, rows=np.asarray(rows), indices=indices))
        self.push(chunks)
        return BatchAudio(frames=frames, windows=tuple(windows))


def _runs(speech: list[bool]) -> list[tuple[int, int] | None]:
    """For each position, the [start, end) of the speech run holding it (None outside speech)."""
    out: list[tuple[int, int] | None] = [None] * len(speech)
    position = 0
    while position < len(speech):
        if not speech[position]:
            position += 1
            continue
        end = position
        while end < len(speech) and speech[end]:
            end += 1
        for i in range(position, end):
            out[i] = (position, end)
        position = end
    return out


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
