"""Push one session to an RTMP server (nginx-rtmp, SRS, ...): H.264 + AAC in FLV, muxed by PyAV.

The session's own paced tracks are read exactly as a WebRTC sender reads them
(one clock for audio and video, speech events at playout), so the broadcast
keeps the same timing. Encoding and network writes happen in one thread fed by
a bounded queue; if the server goes away the thread reconnects with backoff
while the session keeps running and the frames in between are dropped.
"""

from __future__ import annotations

import asyncio
import fractions
import logging
import queue
import threading
import time

import av
from aiortc.mediastreams import MediaStreamError, MediaStreamTrack

from httpapi import redact_url
from media import SAMPLE_RATE, VIDEO_CLOCK_RATE

logger = logging.getLogger(__name__)

QUEUE_FRAMES = 100  # ~1.3 s of video+audio frames may wait for the encoder
OPEN_TIMEOUT_S = 10.0
BACKOFF_S = (1.0, 2.0, 4.0, 8.0, 15.0)
X264_OPTIONS = {"preset": "veryfast", "tune": "zerolatency"}
VIDEO_BITRATE = 1_000_000
AUDIO_BITRATE = 64_000
KEYFRAME_INTERVAL_S = 1  # a viewer joining a live stream waits for the next keyframe to see video


class PushStats:
    """What the pusher did (read by tests and the benchmark)."""

    def __init__(self) -> None:
        self.connects = 0
        self.video_frames = 0
        self.audio_frames = 0
        self.dropped = 0  # frames dropped: queue full or no connection
        self.last_error = ""


class RtmpPusher:
    """Encodes and pushes `video` and `audio` (paced tracks) to `url` until stopped."""

    def __init__(self, url: str, video: MediaStreamTrack, audio: MediaStreamTrack, fps: int,
                 backoff: tuple[float, ...] = BACKOFF_S):
        self.url = url
        self.fps = fps
        self.stats = PushStats()
        self._tracks = (video, audio)
        self._backoff = backoff
        self._queue: queue.Queue[tuple[int, av.VideoFrame | av.AudioFrame]] = queue.Queue(maxsize=QUEUE_FRAMES)
        self._stopping = threading.Event()
        self._pumps: list[asyncio.Task] = []
        self._thread = threading.Thread(target=self._run, name="rtmp-push", daemon=True)

    def start(self) -> None:
        self._thread.start()
        self._pumps = [asyncio.create_task(self._pump(track), name=f"rtmp-{track.kind}") for track in self._tracks]

    async def stop(self) -> None:
        for task in self._pumps:
            task.cancel()
        await asyncio.gather(*self._pumps, return_exceptions=True)
        self._stopping.set()
        await asyncio.get_running_loop().run_in_executor(None, self._thread.join, OPEN_TIMEOUT_S + 2)

    async def _pump(self, track: MediaStreamTrack) -> None:
        """Pull the paced track as a WebRTC sender would and hand frames to the encoder thread."""
        while True:
            try:
                frame = await track.recv()
            except MediaStreamError:
                return
            # pts read here, on the loop: an idle tick may hand out the same frame object again later
            try:
                self._queue.put_nowait((frame.pts, frame))
            except queue.Full:
                self.stats.dropped += 1

    # ---- encoder thread ----------------------------------------------------------
    def _run(self) -> None:
        attempt = 0
        while not self._stopping.is_set():
            try:
                self._stream_once()
                attempt = 0
            except Exception as exc:  # FFmpeg, network or codec: log, back off, reconnect
                self.stats.last_error = str(exc)
                if not isinstance(exc, (av.error.FFmpegError, OSError)):
                    logger.exception("rtmp push failed unexpectedly")
                delay = self._backoff[min(attempt, len(self._backoff) - 1)]
                attempt += 1
                logger.warning("rtmp push to %s failed (%s): retrying in %.0f s", redact_url(self.url),
                               type(exc).__name__, delay)
                self._discard_for(delay)

    def _discard_for(self, seconds: float) -> None:
        """Wait out a backoff, dropping frames so the queue holds the present when we reconnect."""
        deadline = time.monotonic() + seconds
        while not self._stopping.is_set() and time.monotonic() < deadline:
            try:
                self._queue.get(timeout=0.05)
                self.stats.dropped += 1
            except queue.Empty:
                pass

    def _stream_once(self) -> None:
        container = av.open(self.url, mode="w", format="flv", timeout=OPEN_TIMEOUT_S)
        try:
            video = container.add_stream("libx264", rate=self.fps, options=X264_OPTIONS)
            video.pix_fmt = "yuv420p"
            video.bit_rate = VIDEO_BITRATE
            video.codec_context.time_base = fractions.Fraction(1, self.fps)
            video.codec_context.gop_size = self.fps * KEYFRAME_INTERVAL_S
            audio = container.add_stream("aac", rate=SAMPLE_RATE, layout="mono")
            audio.bit_rate = AUDIO_BITRATE
            self.stats.connects += 1
            logger.info("rtmp: pushing to %s", redact_url(self.url))
            opened = False
            ticks_per_frame = VIDEO_CLOCK_RATE // self.fps
            while not self._stopping.is_set():
                try:
                    pts, frame = self._queue.get(timeout=0.1)
                except queue.Empty:
                    continue
                if isinstance(frame, av.VideoFrame):
                    if not opened:  # the first frame fixes the picture size
                        video.width, video.height = frame.width, frame.height
                        opened = True
                    frame.pts = pts // ticks_per_frame
                    frame.time_base = video.codec_context.time_base
                    container.mux(video.encode(frame))
                    self.stats.video_frames += 1
                elif opened:  # audio before the first video frame would open the muxer without video
                    container.mux(audio.encode(frame))
                    self.stats.audio_frames += 1
            if opened:
                container.mux(video.encode(None))
                container.mux(audio.encode(None))
        finally:
            container.close()
