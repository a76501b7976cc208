"""Paced WebRTC tracks for one session, driven by one session clock.

The render pipeline hands `AVBundle`s (one video frame plus its audio chunks)
to a bounded queue. `MediaSchedule` pulls exactly one bundle per clock tick and
gives its video to the video track and its audio to the audio track, so frame n
and audio chunks k*n .. k*n+k-1 carry timestamps from the same tick. When the
engine is late the tick still goes out (last frame repeated, silence) and the
miss is counted; when a consumer is late it skips ahead instead of letting
media time fall behind wall time.
"""

from __future__ import annotations

import asyncio
import fractions
import logging
import queue
import time
from dataclasses import dataclass
from typing import TYPE_CHECKING, Callable

import av
import numpy as np
from aiortc.mediastreams import MediaStreamError, MediaStreamTrack

from media import CHUNK_SAMPLES, SAMPLE_RATE, VIDEO_CLOCK_RATE, AVBundle, SpeechEvent, chunks_per_frame

if TYPE_CHECKING:
    from observers import SessionObserver

logger = logging.getLogger(__name__)

MAX_LAG_TICKS = 12  # a consumer further behind (~0.5 s) skips to the present; less is caught up
CACHE_TICKS = 50  # bundles kept for a track that never pulls (e.g. audio not negotiated)
LATE_LOG_INTERVAL_S = 5.0


class SessionClock:
    """Wall-clock anchor of a session: tick n is due at t0 + n / fps."""

    def __init__(self, fps: int, now: Callable[[], float] = time.monotonic):
        self.fps = fps
        self.frame_period = 1.0 / fps
        self._now = now
        self.t0: float | None = None

    def start(self) -> None:
        if self.t0 is None:
            self.t0 = self._now()

    def due(self, tick: int, fraction: float = 0.0) -> float:
        """Wall time at which tick (+ a fraction of a frame) is due."""
        assert self.t0 is not None, "clock not started"
        return self.t0 + (tick + fraction) * self.frame_period

    def current_tick(self) -> int:
        assert self.t0 is not None, "clock not started"
        return int((self._now() - self.t0) * self.fps + 1e-6)

    def now(self) -> float:
        return self._now()


@dataclass
class StreamStats:
    """Counters a session exposes (and the benchmarks read)."""

    ticks: int = 0
    late_ticks: int = 0  # engine had no bundle ready: last frame repeated + silence
    skipped_ticks: int = 0  # a track's consumer was late: ticks skipped to stay real time
    stale_bundles: int = 0  # bundles of an old epoch dropped at the wire


class MediaSchedule:
    """Hands one bundle per tick to both tracks, fetched at most once per tick."""

    def __init__(
        self,
        source: "queue.Queue[AVBundle]",
        clock: SessionClock,
        current_epoch: Callable[[], int],
        filler: Callable[[av.VideoFrame | None], AVBundle],
        stats: StreamStats,
    ):
        self._source = source
        self._clock = clock
        self._current_epoch = current_epoch
        self._filler = filler
        self.stats = stats
        self._bundles: dict[int, AVBundle] = {}
        self._next_fetch = 0
        self._last_video: av.VideoFrame | None = None
        self._last_late_log = 0.0
        self._late_since_log = 0
        self.tap: Callable[[int, AVBundle], None] | None = None  # sees each bundle once both tracks are done

    def _fetch_one(self) -> AVBundle:
        epoch = self._current_epoch()
        while True:
            try:
                bundle = self._source.get_nowait()
            except queue.Empty:
                self._note_late()
                return self._filler(self._last_video)
            if bundle.epoch >= epoch:
                return bundle
            self.stats.stale_bundles += 1

    def _note_late(self) -> None:
        self.stats.late_ticks += 1
        self._late_since_log += 1
        now = self._clock.now()
        if now - self._last_late_log >= LATE_LOG_INTERVAL_S:
            logger.warning(
                "engine late: %d tick(s) sent as repeated frame + silence (total %d of %d)",
                self._late_since_log, self.stats.late_ticks, self.stats.ticks,
            )
            self._last_late_log = now
            self._late_since_log = 0

    def bundle(self, tick: int) -> AVBundle:
        """The bundle of `tick`; ticks not yet fetched are fetched in order."""
        while self._next_fetch <= tick:
            bundle = self._fetch_one()
            self._bundles[self._next_fetch] = bundle
            self._last_video = bundle.video
            self._next_fetch += 1
            self.stats.ticks += 1
        for old in [t for t in self._bundles if t < self._next_fetch - CACHE_TICKS]:
            self._forget(old)
        return self._bundles[tick]

    def release_before(self, tick: int) -> None:
        """Forget bundles both tracks are done with."""
        for old in [t for t in self._bundles if t < tick]:
            self._forget(old)

    def _forget(self, tick: int) -> None:
        bundle = self._bundles.pop(tick)
        if self.tap is not None:
            self.tap(tick, bundle)

    def drop_pending(self) -> None:
        """Interrupt: forget fetched bundles of older epochs not yet sent."""
        epoch = self._current_epoch()
        for tick in [t for t, b in self._bundles.items() if b.epoch < epoch]:
            self._bundles[tick] = self._filler(self._last_video)


class PlayerStreamTrack(MediaStreamTrack):
    """An audio or video track whose recv() is paced by the session clock."""

    def __init__(self, player: "HumanPlayer", kind: str, start: int = 0):
        super().__init__()
        self.kind = kind
        self._player = player
        self._next = start  # next frame index (video) or chunk index (audio)

    @property
    def next_tick(self) -> int:
        if self.kind == "video":
            return self._next
        return self._next // self._player.chunks_per_frame

    async def _wait_for(self, index: int, per_tick: int) -> int:
        """Sleep until `index` is due; return the index to send (skips if far behind)."""
        clock = self._player.clock
        tick, part = divmod(index, per_tick)
        behind = clock.current_tick() - tick
        if behind > MAX_LAG_TICKS:
            self._player.stats.skipped_ticks += behind
            logger.warning("%s consumer %d ticks behind real time: skipping ahead", self.kind, behind)
            index = clock.current_tick() * per_tick
            tick, part = divmod(index, per_tick)
        delay = clock.due(tick, part / per_tick) - clock.now()
        if delay > 0:
            await asyncio.sleep(delay)
        return index

    async def recv(self) -> av.VideoFrame | av.AudioFrame:
        if self.readyState != "live":
            raise MediaStreamError
        player = self._player
        player.clock.start()
        if self.kind == "video":
            index = await self._wait_for(self._next, 1)
            bundle = player.schedule.bundle(index)
            frame = bundle.video
            frame.pts = index * (VIDEO_CLOCK_RATE // player.clock.fps)
            frame.time_base = fractions.Fraction(1, VIDEO_CLOCK_RATE)
            if player.probe is not None:
                player.probe.video_sent(bundle, player.stats.late_ticks)
        else:
            per_tick = player.chunks_per_frame
            index = await self._wait_for(self._next, per_tick)
            tick, part = divmod(index, per_tick)
            bundle = player.schedule.bundle(tick)
            samples = bundle.audio[part]
            frame = av.AudioFrame.from_ndarray(samples.reshape(1, -1), format="s16", layout="mono")
            frame.sample_rate = SAMPLE_RATE
            frame.pts = index * CHUNK_SAMPLES
            frame.time_base = fractions.Fraction(1, SAMPLE_RATE)
            if player.probe is not None:
                player.probe.audio_sent(bundle)
            if player.far_end is not None:  # the echo canceller's reference, stamped by the session clock
                player.far_end(samples, player.clock.now(), frame.pts)
            if bundle.events and bundle.events[part]:
                for event in bundle.events[part]:
                    player.playout(event)
        if player.stopped:
            raise MediaStreamError
        self._next = index + 1
        player.release_consumed()
        return frame


class HumanPlayer:
    """The two tracks of one session, fed by one engine output queue."""

    def __init__(
        self,
        source: "queue.Queue[AVBundle]",
        fps: int,
        current_epoch: Callable[[], int],
        filler: Callable[[av.VideoFrame | None], AVBundle],
        on_playout: Callable[[SpeechEvent], None] | None = None,
        probe: "SessionObserver | None" = None,
    ):
        self.probe = probe  # times the stages that end on the wire (metrics)
        self.far_end: Callable[[np.ndarray, float, int], None] | None = None  # each audio chunk handed to WebRTC: when, at which pts
        self.clock = SessionClock(fps)
        self.chunks_per_frame = chunks_per_frame(fps)
        self.stats = StreamStats()
        self.schedule = MediaSchedule(source, self.clock, current_epoch, filler, self.stats)
        self._on_playout = on_playout
        self.stopped = False
        self.audio = PlayerStreamTrack(self, "audio")
        self.video = PlayerStreamTrack(self, "video")

    def renew_tracks(self) -> None:
        """New track objects at the present tick, for a new connection of the same session
        (a closing RTCRtpSender stops the tracks it sent)."""
        tick = max(self.audio.next_tick, self.video.next_tick)  # ticks before it may be released
        if self.clock.t0 is not None:
            tick = max(tick, self.clock.current_tick())
        self.audio = PlayerStreamTrack(self, "audio", start=tick * self.chunks_per_frame)
        self.video = PlayerStreamTrack(self, "video", start=tick)

    def playout(self, event: SpeechEvent) -> None:
        if self._on_playout is not None:
            self._on_playout(event)

    def release_consumed(self) -> None:
        self.schedule.release_before(min(self.audio.next_tick, self.video.next_tick))

    def stop(self) -> None:
        self.stopped = True
        self.audio.stop()
        self.video.stop()
