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

import numpy as np

from media import AudioChunk, chunks_per_frame
from musetalk.features import (EDGE_MODES, FRAMES_BEFORE, WINDOW_CHUNKS, ZERO, AudioWindow, BatchAudio, edge_indices,
                               frame_indices)
from musetalk.settings import DEFAULT_CONTEXT_CHUNKS, MAX_RIGHT_CHUNKS


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


