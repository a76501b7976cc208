"""A microphone for loopback tests: an aiortc audio track that sends espeak-ng speech in real time."""

from __future__ import annotations

import asyncio
import fractions
import re
import time
from collections import deque

import av
import numpy as np
from aiortc.mediastreams import MediaStreamError, MediaStreamTrack

from tts.espeak import EspeakLibrary, EspeakTTS

FRAME_S = 0.02
SOURCE_RATE = 16000


def speak(text: str, voice: str = "en-us") -> np.ndarray:
    """espeak-ng speech of `text`: 16 kHz mono float32."""
    tts = EspeakTTS(EspeakLibrary.shared(), voice=voice)
    return np.concatenate(list(tts.stream(text, lambda: False)))


def word_error_rate(reference: str, hypothesis: str) -> float:
    """Word-level Levenshtein distance / reference length, ignoring case and punctuation."""
    ref = re.findall(r"[a-z0-9']+", reference.lower())
    hyp = re.findall(r"[a-z0-9']+", hypothesis.lower())
    row = list(range(len(hyp) + 1))
    for i, r in enumerate(ref, 1):
        previous, row[0] = row[0], i
        for j, h in enumerate(hyp, 1):
            previous, row[j] = row[j], min(row[j] + 1, row[j - 1] + 1, previous + (r != h))
    return row[len(hyp)] / max(len(ref), 1)


class SpeechTrack(MediaStreamTrack):
    """Sends queued 16 kHz audio (silence in between) at `rate` Hz with `channels`, paced in real time.

    `stalled=True` makes a track that never yields a frame: the client sends no RTP at all.
    """

    kind = "audio"

    def __init__(self, rate: int = 48000, channels: int = 1, stalled: bool = False):
        super().__init__()
        self.rate = rate
        self.layout = "stereo" if channels == 2 else "mono"
        self.channels = channels
        self.stalled = stalled
        self._pending: deque[np.ndarray] = deque()  # int16 clips at `rate`, one channel
        self._offset = 0  # samples of the first pending clip already sent
        self._samples = int(rate * FRAME_S)
        self._start: float | None = None
        self._sent = 0
        self.speech_started: list[float] = []  # wall time each clip began to go out
        self.speech_ended: list[float] = []  # wall time each clip's last sample went out

    def play(self, audio_16k: np.ndarray) -> None:
        """Queue a clip (16 kHz mono float32) after what is already queued."""
        resampler = av.AudioResampler(format="s16", layout="mono", rate=self.rate)
        frame = av.AudioFrame.from_ndarray(audio_16k.astype(np.float32).reshape(1, -1), format="flt", layout="mono")
        frame.sample_rate = SOURCE_RATE
        out = resampler.resample(frame) + resampler.resample(None)
        self._pending.append(np.concatenate([f.to_ndarray().reshape(-1) for f in out]))

    @property
    def busy(self) -> bool:
        return bool(self._pending)

    def _take(self, now: float) -> np.ndarray:
        out = np.zeros(self._samples, np.int16)
        filled = 0
        while filled < self._samples and self._pending:
            clip = self._pending[0]
            if self._offset == 0:
                self.speech_started.append(now + filled / self.rate)
            n = min(len(clip) - self._offset, self._samples - filled)
            out[filled:filled + n] = clip[self._offset:self._offset + n]
            filled += n
            self._offset += n
            if self._offset == len(clip):
                self.speech_ended.append(now + filled / self.rate)
                self._pending.popleft()
                self._offset = 0
        return out

    async def recv(self) -> av.AudioFrame:
        if self.readyState != "live":
            raise MediaStreamError
        if self.stalled:
            await asyncio.Event().wait()
        if self._start is None:
            self._start = time.monotonic()
        delay = self._start + self._sent / self.rate - time.monotonic()
        if delay > 0:
            await asyncio.sleep(delay)
        samples = self._take(time.monotonic())
        data = np.repeat(samples[None, :], 2, axis=1) if self.channels == 2 else samples[None, :]
        frame = av.AudioFrame.from_ndarray(data, format="s16", layout=self.layout)
        frame.sample_rate = self.rate
        frame.pts = self._sent
        frame.time_base = fractions.Fraction(1, self.rate)
        self._sent += self._samples
        return frame
