"""Media units that travel through a session: 20 ms audio chunks and A/V bundles.

One video frame and its audio chunks always travel together as an `AVBundle`,
from the engine's compose stage to the WebRTC tracks, so audio and video are
timestamped by one clock and cannot drift apart (DESIGN.md invariant 1).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import av
import numpy as np

SAMPLE_RATE = 16000
CHUNK_MS = 20
CHUNK_SAMPLES = SAMPLE_RATE * CHUNK_MS // 1000
VIDEO_CLOCK_RATE = 90000
SUPPORTED_FPS = (5, 10, 25, 50)


def chunks_per_frame(fps: int) -> int:
    """How many 20 ms audio chunks belong to one video frame (2 at 25 fps)."""
    if fps not in SUPPORTED_FPS:
        raise ValueError(f"fps must be one of {SUPPORTED_FPS} so a frame holds whole 20 ms chunks")
    return 1000 // fps // CHUNK_MS


@dataclass(frozen=True)
class SpeechEvent:
    """A playout event of one utterance: fired when its audio reaches the wire."""

    kind: str  # "start" | "end"
    utterance_id: str
    text: str = ""
    interrupted: bool = False

    def as_dict(self) -> dict:
        return {
            "type": self.kind,
            "utterance": self.utterance_id,
            "text": self.text,
            "interrupted": self.interrupted,
        }


@dataclass(frozen=True)
class AudioChunk:
    """20 ms of 16 kHz mono float32 audio in [-1, 1] entering an engine."""

    samples: np.ndarray
    speech: bool
    epoch: int
    events: tuple[SpeechEvent, ...] = ()
    visemes: np.ndarray | None = None  # uint8 viseme codes, one per 5 ms, when the TTS knows its phonemes

    @staticmethod
    def silence(epoch: int) -> "AudioChunk":
        return AudioChunk(np.zeros(CHUNK_SAMPLES, np.float32), speech=False, epoch=epoch)


@dataclass
class AVBundle:
    """One video frame and the audio chunks played during it, from one epoch."""

    video: av.VideoFrame
    audio: np.ndarray  # (chunks_per_frame, CHUNK_SAMPLES) int16
    epoch: int
    speech: bool
    events: tuple[tuple[SpeechEvent, ...], ...] = field(default_factory=tuple)


def float_to_s16(samples: np.ndarray) -> np.ndarray:
    return (np.clip(samples, -1.0, 1.0) * 32767.0).astype(np.int16)
