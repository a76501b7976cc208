"""The user's audio track -> 16 kHz mono float32, off the event loop.

`UplinkReader` is a task on the event loop that only awaits the remote track
and drops each decoded frame into a bounded `FrameBuffer` (the oldest frame goes
when a flood outruns the consumer), so a client sending nothing, garbage or too
much never blocks the loop or grows memory. `MonoResampler` runs on the
listener's thread and accepts any rate and channel count (Opus 48 kHz stereo,
PCMU 8 kHz mono), rebuilding itself when the format changes mid-stream.
"""

from __future__ import annotations

import asyncio
import logging
import queue
import time
from typing import Callable, Protocol

import av
import numpy as np
from aiortc import RTCPeerConnection
from aiortc.mediastreams import MediaStreamError, MediaStreamTrack

from media import SAMPLE_RATE
from sync.queues import BoundedQueue

logger = logging.getLogger(__name__)

FRAME_BUFFER_SIZE = 50  # ~1 s of 20 ms frames waiting for the listener thread
UPLINK_PREFETCH_PACKETS = 1  # aiortc holds 4 audio packets (80 ms) before each decode; 1 costs 20 ms


class FrameBuffer:
    """Bounded hand-over from the loop to a thread; full means the oldest frame is dropped."""

    def __init__(self, maxsize: int = FRAME_BUFFER_SIZE):
        self._queue: BoundedQueue[av.AudioFrame] = BoundedQueue(maxsize)
        self.dropped = 0

    def put(self, frame: av.AudioFrame) -> None:
        if not isinstance(frame, av.AudioFrame):
            return
        frame.opaque = time.monotonic()  # its arrival: the echo canceller places the uplink on the wall clock
        while True:
            try:
                self._queue.put_nowait(frame)
                return
            except queue.Full:
                try:
                    self._queue.get_nowait()
                    self.dropped += 1
                except queue.Empty:
                    pass

    def get(self, timeout: float) -> av.AudioFrame | None:
        try:
            return self._queue.get(timeout=timeout)
        except queue.Empty:
            return None

    def clear(self) -> None:
        self._queue.clear()

    def __len__(self) -> int:
        return self._queue.qsize()

    @property
    def maxsize(self) -> int:
        return self._queue.maxsize


def fast_receive(pc: RTCPeerConnection, track: MediaStreamTrack) -> bool:
    """Shorten the receive jitter buffer of the microphone's track (True when done).

    aiortc's RTCRtpReceiver releases an audio frame only once 4 later packets are in
    (`JitterBuffer(capacity=16, prefetch=4)`): 60 ms more delay before every word we hear
    than 1 packet. It has no setting for it, so this reaches its private (name-mangled)
    jitter buffer; on an aiortc without it, nothing changes. A packet arriving more than a
    packet late is then dropped rather than reordered: Opus conceals it, the VAD and ASR
    barely notice.
    """
    for transceiver in pc.getTransceivers():
        receiver = transceiver.receiver
        if receiver is not None and receiver.track is track:
            jitter = getattr(receiver, "_RTCRtpReceiver__jitter_buffer", None)  # private: aiortc 1.x
            if jitter is not None and hasattr(jitter, "_prefetch"):
                jitter._prefetch = UPLINK_PREFETCH_PACKETS
                return True
    logger.info("uplink: aiortc's audio jitter buffer not found; it keeps its default prefetch")
    return False


class FrameSink(Protocol):
    def put(self, frame: av.AudioFrame | av.VideoFrame) -> None: ...


class UplinkReader:
    """Awaits a remote track's frames on the loop and hands each to a sink, nothing more.

    aiortc queues every decoded frame of a remote track until it is read, so every
    track a session accepts has a reader: the microphone's sink is a FrameBuffer,
    the camera's a LatestFrame.
    """

    def __init__(self, track: MediaStreamTrack, sink: FrameSink, name: str,
                 on_first_frame: Callable[[], None] = lambda: None):
        self.track = track
        self.sink = sink
        self.frames = 0
        self._on_first_frame = on_first_frame  # a peer that only receives never gets this far
        self._task = asyncio.create_task(self._run(), name=name)

    async def _run(self) -> None:
        while True:
            try:
                frame = await self.track.recv()
            except MediaStreamError:
                return
            self.frames += 1
            if self.frames == 1:
                self._on_first_frame()
            self.sink.put(frame)

    async def close(self) -> None:
        self._task.cancel()
        await asyncio.gather(self._task, return_exceptions=True)


class MonoResampler:
    """Decoded audio frames of any layout and rate -> 16 kHz mono float32."""

    def __init__(self) -> None:
        self._resampler: av.AudioResampler | None = None
        self.source: tuple[str, str, int] | None = None  # (sample format, layout, rate) of the uplink now

    def __call__(self, frame: av.AudioFrame) -> np.ndarray:
        source = (frame.format.name, frame.layout.name, frame.sample_rate)
        if source != self.source:
            self._resampler = av.AudioResampler(format="flt", layout="mono", rate=SAMPLE_RATE)
            self.source = source
        frame.pts = None  # the uplink's timestamps may jump (packet loss); we only need the samples
        out = self._resampler.resample(frame)
        if not out:
            return np.zeros(0, np.float32)
        return np.concatenate([f.to_ndarray().reshape(-1) for f in out]).astype(np.float32, copy=False)


def arrival_of(frame: av.AudioFrame) -> float:
    """When `FrameBuffer.put` received the frame (now, for a frame that did not come through one)."""
    stamp = frame.opaque
    return stamp if isinstance(stamp, float) else time.monotonic()
