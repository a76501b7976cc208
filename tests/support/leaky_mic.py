"""A microphone that also hears the loudspeaker: what a kiosk or a speakerphone without echo cancellation sends.

`LeakyMic` is a `SpeechTrack` (the user's queued sentences) plus the avatar's audio as
the client received it, played by a "device" that starts `delay_s` after the first
received frame and runs on the microphone's own clock, mixed in at `gain_db`.
No echo cancellation anywhere on the client.
"""

from __future__ import annotations

import numpy as np

from tests.support.rtc_client import ReceiverClient
from tests.support.speech_sender import FRAME_S, SpeechTrack


class LeakyMic(SpeechTrack):
    def __init__(self, client: ReceiverClient, gain_db: float, delay_s: float, rate: int = 48000):
        super().__init__(rate=rate)
        self.client = client
        self.gain = float(10 ** (gain_db / 20))
        self.delay_s = delay_s
        self.leaked_frames = 0  # mic frames that carried some of the avatar's voice
        self._plays: list[float] = []  # wall time each received frame starts to play
        self._cursor = 0  # the first frame still playing

    def _schedule(self) -> None:
        """Playout start of each received frame: `delay_s` after it arrived, never before the previous ended
        (a device behind a jitter buffer: a late frame delays what follows, as on a real client)."""
        frames = self.client.audio
        while len(self._plays) < len(frames):
            frame = frames[len(self._plays)]
            if len(frame.data) != self.rate // 50:
                raise AssertionError(f"received {len(frame.data)} samples per 20 ms; the leak expects {self.rate} Hz")
            after = self._plays[-1] + FRAME_S if self._plays else float("-inf")
            self._plays.append(max(frame.arrival + self.delay_s, after))

    def _leak(self, t: float, count: int) -> np.ndarray:
        """What the loudspeaker plays from wall time t, `count` samples."""
        self._schedule()
        frames, plays, per_frame = self.client.audio, self._plays, self.rate // 50
        while self._cursor < len(plays) and plays[self._cursor] + FRAME_S <= t:
            self._cursor += 1
        out = np.zeros(count, np.float32)
        filled, j = 0, self._cursor
        while filled < count and j < len(plays):
            at = t + filled / self.rate
            if plays[j] > at + 0.5 / self.rate:  # nothing playing until frame j starts
                filled += max(1, int(round((plays[j] - at) * self.rate)))
                continue
            offset = int(round((at - plays[j]) * self.rate))
            if offset < per_frame:
                n = min(per_frame - offset, count - filled)
                out[filled:filled + n] = frames[j].data[offset:offset + n]
                filled += n
            j += 1
        return out

    def _take(self, now: float) -> np.ndarray:
        out = super()._take(now)
        leak = self._leak(self._start + (self._sent) / self.rate, len(out)) * self.gain
        if np.abs(leak).max() > 300:
            self.leaked_frames += 1
        mixed = out.astype(np.float32) + leak
        return np.clip(mixed, -32768, 32767).astype(np.int16)
