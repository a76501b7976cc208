"""BaseReal: one session's engine, from 20 ms audio chunks to paced A/V bundles.

Stages, each a daemon thread joined by stop(), connected by bounded queues:

    audio_in (AudioChunk) -> render thread -> rendered -> compose thread -> output (AVBundle)

The render thread pairs `chunks_per_frame` chunks with each video frame and asks
the engine (`render_frames`, overridden by LiteReal/MuseReal) for mouth images.
Idle frames are made just in time: while nothing is spoken the render thread
waits until the wire has almost caught up, and when speech arrives any idle
bundles still queued are dropped so speech is never stuck behind them.
An interrupt bumps the epoch; every stage drops work of an older epoch.

Each frame also gets a `Layer` from the session's `Scene` (custom action clips,
the idle clip, crossfades, an avatar switch); frames are always sent at the
session's first size (`output_size`), whatever avatar or clip they come from.
"""

from __future__ import annotations

import logging
import queue
import threading
import time
from dataclasses import dataclass
from typing import Any, Callable, Protocol

import av
import cv2
import numpy as np

from avatars.format import Avatar
from media import CHUNK_SAMPLES, AudioChunk, AVBundle, chunks_per_frame, float_to_s16
from scene import Layer, Scene, fit_frame, loop_index
from sync.queues import BoundedQueue

logger = logging.getLogger(__name__)

AUDIO_INPUT_CHUNKS = 100  # 2 s of audio may wait for the renderer; producers block beyond that
POLL_S = 0.005
JOIN_TIMEOUT_S = 1.0
SPEECH_GAP_WAIT_S = 0.03  # how long a frame waits for its second chunk mid-utterance


@dataclass(frozen=True)
class EngineConfig:
    fps: int = 25
    batch_size: int = 1
    lookahead_frames: int = 2  # bundles waiting for the wire (each 40 ms at 25 fps)


@dataclass
class FrameWork:
    """What one video frame needs: its audio chunks and the avatar frame under it."""

    index: int  # avatar frame index (ping-pong over the avatar's frames)
    chunks: list[AudioChunk]
    epoch: int
    avatar: Avatar | None = None  # the avatar `index` refers to (None: the engine's)
    layer: Layer | None = None  # laid over the composed frame (clips, crossfades)

    @property
    def speech(self) -> bool:
        return any(chunk.speech for chunk in self.chunks)


class EngineHooks(Protocol):
    """The contract of a lip-sync engine: what a BaseReal subclass overrides (LiteReal, MuseReal).

    BaseReal owns the threads, queues, epochs and pacing; an engine only says how
    to turn speech into frames. Render-thread hooks run on the session's render
    thread, `compose` on its compose thread; `prepare_avatar` and `can_lipsync` run
    in an executor (they may block). None of them touches the event loop.
    """

    name: str  # "lite", "musetalk": shown on the page and in the metrics

    def prepare_avatar(self, avatar: Avatar) -> None:
        """Build what the engine needs for `avatar` (blocking; raises AvatarError if unusable)."""

    def can_lipsync(self, avatar: Avatar) -> bool:
        """Whether speech can be rendered on `avatar`'s frames (blocking: prepares it)."""

    def use_avatar(self, avatar: Avatar) -> None:
        """Render thread: `avatar` becomes the one speech is rendered on."""

    def frames_per_step(self, speech_pending: bool) -> int:
        """Render thread: how many frames to take at once (MuseReal batches)."""

    def render_frames(self, work: list[FrameWork]) -> list[Any]:
        """Render thread: per frame, the engine's result for speech frames (None means idle)."""

    def compose(self, work: FrameWork, result: Any) -> np.ndarray:
        """Compose thread: the full BGR frame for one video frame; the idle frame when result is None."""


def to_video_frame(image_bgr: np.ndarray) -> av.VideoFrame:
    """BGR image -> yuv420p VideoFrame (done here so the encoder thread only encodes)."""
    yuv = cv2.cvtColor(image_bgr, cv2.COLOR_BGR2YUV_I420)
    return av.VideoFrame.from_ndarray(yuv, format="yuv420p")


class BaseReal:
    """Streams the avatar's idle loop and whatever the engine renders for speech; engines override EngineHooks."""

    name = "idle"

    def __init__(self, avatar: Avatar, config: EngineConfig, session_id: str = ""):
        self.avatar = avatar
        self.config = config
        self.session_id = session_id
        self.chunks_per_frame = chunks_per_frame(config.fps)
        self.audio_in: BoundedQueue[AudioChunk] = BoundedQueue(AUDIO_INPUT_CHUNKS)
        self.rendered: BoundedQueue[tuple[FrameWork, Any]] = BoundedQueue(config.lookahead_frames)
        self.output: BoundedQueue[AVBundle] = BoundedQueue(config.lookahead_frames)
        self._epoch = 0
        self._epoch_lock = threading.Lock()
        self._stopping = threading.Event()
        self._threads: list[threading.Thread] = []
        self._step = 0
        self.output_size = avatar.size  # every frame is sent at the session's first size
        self.scene = Scene(self.output_size, self.chunks_per_frame)
        self._next_avatar: Avatar | None = None
        self.on_render: Callable[[int, float], None] | None = None  # (frames, seconds) per speech step (metrics)

    # ---- public API -------------------------------------------------------
    @property
    def epoch(self) -> int:
        return self._epoch

    def start(self) -> None:
        tag = self.session_id[:8] or "session"
        for name, target in (("render", self._render_loop), ("compose", self._compose_loop)):
            thread = threading.Thread(target=self._guarded(target), name=f"{name}-{tag}", daemon=True)
            thread.start()
            self._threads.append(thread)

    def stop(self) -> None:
        """Stop every thread this engine started; returns within about a second."""
        self._stopping.set()
        for q in (self.audio_in, self.rendered, self.output):
            _drain(q)
        for thread in self._threads:
            thread.join(JOIN_TIMEOUT_S)
            if thread.is_alive():
                logger.error("thread %s did not stop within %.1f s", thread.name, JOIN_TIMEOUT_S)
        self._threads.clear()
        self.close()

    def close(self) -> None:
        """Release engine resources (subclasses); called once by stop()."""

    @property
    def stopped(self) -> bool:
        return self._stopping.is_set()

    def interrupt(self) -> int:
        """Drop everything not yet on the wire; returns the new epoch."""
        with self._epoch_lock:
            self._epoch += 1
            epoch = self._epoch
        self.scene.stop()
        for q in (self.audio_in, self.rendered, self.output):
            _drain(q)
        return epoch

    def prepare_avatar(self, avatar: Avatar) -> None:
        """Build what this engine needs for `avatar` (blocking; raises AvatarError if unusable)."""

    def can_lipsync(self, avatar: Avatar) -> bool:
        """Whether speech can be rendered on `avatar`'s frames (blocking: prepares it)."""
        return False

    def switch_avatar(self, avatar: Avatar) -> None:
        """Show `avatar` from the next frame on, crossfaded (call prepare_avatar first)."""
        self._next_avatar = avatar

    def use_avatar(self, avatar: Avatar) -> None:
        """Render-thread hook: `avatar` becomes the one speech is rendered on."""
        self.avatar = avatar

    def put_audio(self, chunk: AudioChunk) -> bool:
        """Queue one chunk, blocking while the input is full (back-pressure on TTS).

        Returns False, dropping the chunk, once its epoch is stale or the engine stops.
        """
        while not self._stopping.is_set() and chunk.epoch == self._epoch:
            try:
                self.audio_in.put(chunk, timeout=0.05)
                return True
            except queue.Full:
                continue
        return False

    def idle_bundle(self, last_video: av.VideoFrame | None) -> AVBundle:
        """What the wire sends when the engine has nothing ready: last frame + silence."""
        video = last_video if last_video is not None else self.idle_video_frame(0)
        silence = np.zeros((self.chunks_per_frame, CHUNK_SAMPLES), np.int16)
        return AVBundle(video=video, audio=silence, epoch=self._epoch, speech=False,
                        events=((),) * self.chunks_per_frame)

    def idle_video_frame(self, index: int) -> av.VideoFrame:
        return to_video_frame(fit_frame(self.avatar.frames[index], self.output_size))

    # ---- engine hooks (EngineHooks) ------------------------------------------
    def frames_per_step(self, speech_pending: bool) -> int:
        """How many frames the render thread takes at once (MuseReal batches)."""
        return 1

    def render_frames(self, work: list[FrameWork]) -> list[Any]:
        """Per frame, the engine's result for speech frames (None means idle)."""
        return [None] * len(work)

    def compose(self, work: FrameWork, result: Any) -> np.ndarray:
        """Full BGR frame for one video frame; the idle frame when result is None."""
        return self.avatar.frames[work.index]

    # ---- stages -----------------------------------------------------------
    def _guarded(self, target):
        def run() -> None:
            try:
                target()
            except Exception:
                logger.exception("engine thread %s failed", threading.current_thread().name)
        return run

    def _speech_pending(self) -> bool:
        return self.audio_in.any(lambda chunk: chunk.speech)

    def peek_audio(self, count: int) -> list[AudioChunk]:
        """The next `count` chunks queued (lookahead for engines), without taking them."""
        return self.audio_in.peek(count)

    def _downstream_frames(self) -> int:
        return self.rendered.qsize() + self.output.qsize()

    def _wait_for_need(self) -> bool:
        """Block until a frame is needed soon or speech is queued; True if speech."""
        while not self._stopping.is_set():
            if self._speech_pending():
                return True
            if self._downstream_frames() < self.config.lookahead_frames:
                return False
            time.sleep(POLL_S)
        return False

    def _take_chunk(self, wait_s: float) -> AudioChunk | None:
        try:
            return self.audio_in.get(timeout=wait_s) if wait_s > 0 else self.audio_in.get_nowait()
        except queue.Empty:
            return None

    def _take_switch(self) -> None:
        avatar, self._next_avatar = self._next_avatar, None
        if avatar is None or avatar is self.avatar:
            return
        held = fit_frame(self.avatar.frames[loop_index(self._step, self.avatar.frame_count)], self.output_size)
        self.use_avatar(avatar)
        self.scene.switch_avatar(held)

    def _next_work(self, frames: int) -> list[FrameWork]:
        epoch = self._epoch
        self._take_switch()
        work: list[FrameWork] = []
        for _ in range(frames):
            clip = self.scene.clip_frame(self._speech_pending())
            chunks: list[AudioChunk] = []
            if clip is not None:  # an action clip's own audio goes out with its frames (lip-synced or not)
                chunks = [AudioChunk(samples, speech=clip.lipsync, epoch=epoch) for samples in clip.audio]
            for _ in range(self.chunks_per_frame - len(chunks)):
                mid_speech = bool(chunks) and chunks[-1].speech
                chunk = self._take_chunk(SPEECH_GAP_WAIT_S if mid_speech else 0.0)
                if chunk is None or chunk.epoch != epoch:
                    chunk = AudioChunk.silence(epoch)
                chunks.append(chunk)
            avatar, index = self.avatar, loop_index(self._step, self.avatar.frame_count)
            self._step += 1
            layer = self.scene.layer(any(chunk.speech for chunk in chunks),
                                     lambda a=avatar, i=index: fit_frame(a.frames[i], self.output_size))
            if clip is not None and clip.lipsync:
                avatar, index = clip.avatar, clip.index
            work.append(FrameWork(index=index, chunks=chunks, epoch=epoch, avatar=avatar, layer=layer))
        return work

    def _render_loop(self) -> None:
        while not self._stopping.is_set():
            speech = self._wait_for_need()
            if self._stopping.is_set():
                return
            work = self._next_work(self.frames_per_step(speech))
            if any(item.speech for item in work):
                self._drop_queued_idle()
            started = time.perf_counter()
            results = self.render_frames(work)
            if self.on_render is not None and any(item.speech for item in work):
                self.on_render(len(work), time.perf_counter() - started)
            for item, result in zip(work, results):
                if item.epoch != self._epoch:
                    break
                if not _put_until(self.rendered, (item, result), self._stopping):
                    return

    def _drop_queued_idle(self) -> None:
        """Speech is ready: idle bundles waiting ahead of it would only delay it."""
        for q in (self.rendered, self.output):
            q.remove_if(lambda item: not _is_speech(item))

    def _compose_loop(self) -> None:
        while not self._stopping.is_set():
            try:
                work, result = self.rendered.get(timeout=0.1)
            except queue.Empty:
                continue
            if work.epoch != self._epoch:
                continue
            video = to_video_frame(self._frame_image(work, result))
            audio = np.stack([float_to_s16(chunk.samples) for chunk in work.chunks])
            events = tuple(tuple(chunk.events) for chunk in work.chunks)
            bundle = AVBundle(video=video, audio=audio, epoch=work.epoch, speech=work.speech, events=events)
            if work.epoch != self._epoch:
                continue
            if not _put_until(self.output, bundle, self._stopping):
                return

    def _frame_image(self, work: FrameWork, result: Any) -> np.ndarray:
        """The frame as sent: composed avatar (at the session's size) under the scene's layer."""
        layer = work.layer
        if layer is not None and layer.opaque:
            return layer.image  # a clip frame covers the avatar: nothing to compose
        if result is None and not work.speech:
            image = (work.avatar or self.avatar).frames[work.index]
        else:
            image = self.compose(work, result)
        image = fit_frame(image, self.output_size)
        return layer.over(image) if layer is not None else image


def _is_speech(item: Any) -> bool:
    if isinstance(item, AVBundle):
        return item.speech or any(item.events)
    work, _ = item
    return work.speech or any(chunk.events for chunk in work.chunks)


def _put_until(q: BoundedQueue, item: Any, stopping: threading.Event) -> bool:
    while not stopping.is_set():
        try:
            q.put(item, timeout=0.05)
            return True
        except queue.Full:
            continue
    return False


def _drain(q: BoundedQueue) -> None:
    q.clear()
