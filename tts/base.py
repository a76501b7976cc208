"""The contract every TTS backend follows, and the resampler they share."""

from __future__ import annotations

from abc import ABC, abstractmethod
from typing import Callable, Iterator

import av
import numpy as np

from media import SAMPLE_RATE
from speech.visemes import LabelledAudio


class TTSError(Exception):
    """Synthesis failed; the message is shown to the user, so say what to do."""


class TTSBackend(ABC):
    """Turns one piece of text into audio, streamed as it is produced.

    `stream` runs in the session's TTS thread. It yields float32 mono arrays at
    16 kHz of any length, as early as it can (first audio first), and stops
    early once `cancelled()` is true (an interrupt).
    """

    name: str = "tts"

    @abstractmethod
    def stream(self, text: str, cancelled: Callable[[], bool]) -> Iterator[np.ndarray]:
        ...

    def stream_labelled(self, text: str, cancelled: Callable[[], bool]) -> Iterator[np.ndarray | LabelledAudio]:
        """`stream`, with viseme labels on the audio where the backend knows its phonemes (espeak)."""
        yield from self.stream(text, cancelled)

    def close(self) -> None:
        """Release connections or library state held by this backend."""


class Resampler:
    """Streaming conversion of mono float32 audio at any rate to 16 kHz float32."""

    def __init__(self, source_rate: int):
        self.source_rate = source_rate
        self._resampler = av.AudioResampler(format="flt", layout="mono", rate=SAMPLE_RATE)
        self._pts = 0

    def push(self, samples: np.ndarray) -> np.ndarray:
        if self.source_rate == SAMPLE_RATE:
            return samples.astype(np.float32, copy=False)
        frame = av.AudioFrame.from_ndarray(samples.astype(np.float32).reshape(1, -1), format="flt", layout="mono")
        frame.sample_rate = self.source_rate
        frame.pts = self._pts
        self._pts += len(samples)
        return self._collect(self._resampler.resample(frame))

    def flush(self) -> np.ndarray:
        if self.source_rate == SAMPLE_RATE:
            return np.zeros(0, np.float32)
        return self._collect(self._resampler.resample(None))

    @staticmethod
    def _collect(frames: list[av.AudioFrame]) -> np.ndarray:
        if not frames:
            return np.zeros(0, np.float32)
        return np.concatenate([f.to_ndarray().reshape(-1) for f in frames]).astype(np.float32, copy=False)
