"""A microphone that also hears the loudspeaker: what a kiosk or a speakerphone without echo cancellation sends.

`LeakyMic` is a `SpeechTrack` (the user's queued sentences) plus the avatar's audio as
the client received it, played by a "device" that starts `delay_s` after the first
received frame and runs on the microphone's own clock, mixed in at `gain_db`.
No echo cancellation anywhere on the client.
"""

from __future__ import annotations

import numpy as np

from tests.support.rtc_client import ReceiverClient
from tests.support.speech_sender import SpeechTrack


class LeakyMic(SpeechTrack):
    def __init__(self, client: ReceiverClient, gain_db: float, delay_s: float, rate: int = 48000):
        super().__init__(rate=rate)
        self.client = client
        self.gain = float(10 ** (gain_db / 20))
        self.delay_s = delay_s
        self.leaked_frames = 0  # mic frames that carried some of the avatar's voice

    def _played(self, position: int, count: int) -> np.ndarray:
        """Samples [position, position + count) of the received stream (frames back to back); 0 where none yet."""
        frames = self.client.audio
        out = np.zeros(count, np.float32)
        per_frame = self.rate // 50
        filled = 0
        while filled < count:
            index, offset = divmod(position + filled, per_frame)
            if index >= len(frames):
                break
            data = frames[index].data
            if len(data) != per_frame:
                raise AssertionError(f"received {len(data)} samples per 20 ms; the leak expects {self.rate} Hz")
            n = min(per_frame - offset, count - filled)
            out[filled:filled + n] = data[offset:offset + n]
            filled += n
        return out

    def _take(self, now: float) -> np.ndarray:
        out = super()._take(now)
        if not self.client.audio:
            return out
        first = self.client.audio[0].arrival
        position = int(round((self._start + self._sent / self.rate - first - self.delay_s) * self.rate))
        if position < 0:
            return out
        leak = self._played(position, len(out)) * self.gain
        if np.abs(leak).max() > 300:
            self.leaked_frames += 1
        mixed = out[:len(leak)].astype(np.float32) + leak
        out[:len(leak)] = np.clip(mixed, -32768, 32767).astype(np.int16)
        return out
