"""Recording a session to MP4: exactly the bundles it sends, on its own clock.

`MediaSchedule` hands every bundle it is done with (tick n: the video frame and
the audio chunks both tracks sent) to a `Recorder`, which queues it (bounded)
for a named daemon thread that encodes H.264 + AAC with PyAV. Video frame n gets
pts n and its audio the samples of the same tick, so the file has the session's
A/V alignment. The file is written as `<id>.mp4.part` and renamed when it is
complete, so `GET /record/{id}` only ever serves finished, playable files.
"""

from __future__ import annotations

import argparse
import asyncio
import fractions
import logging
import os
import queue
import re
import threading
import time
from pathlib import Path
from typing import TYPE_CHECKING, Callable

import av
import numpy as np
from aiohttp import web

from httpapi import BadRequest, ok, read_json
from media import CHUNK_SAMPLES, SAMPLE_RATE, AVBundle

if TYPE_CHECKING:
    from server.context import ServerContext

logger = logging.getLogger(__name__)

QUEUE_BUNDLES = 250  # 10 s at 25 fps may wait for the encoder; more means it cannot keep up
JOIN_TIMEOUT_S = 10.0
SIZE_CHECK_EVERY = 25  # frames between two looks at the file size
VIDEO_CODEC = "libx264"
VIDEO_OPTIONS = {"preset": "veryfast", "crf": "23"}
AUDIO_CODEC = "aac"
SESSION_ID_PATTERN = re.compile(r"^[A-Za-z0-9-]{1,64}$")
RECORD_DIR = "record"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--record-max-seconds", dest="record_max_seconds", type=float, default=600.0,
                        help="a /record recording stops by itself after this many seconds")
    parser.add_argument("--record-max-mb", dest="record_max_mb", type=float, default=500.0,
                        help="a /record recording stops by itself when its file reaches this size")


class Recorder:
    """Encodes one session's sent bundles into an MP4 file in its own thread."""

    def __init__(self, path: Path, size: tuple[int, int], fps: int, chunks_per_frame: int,
                 max_seconds: float, max_bytes: int, on_done: Callable[["Recorder"], None], name: str = "record"):
        self.path = path
        self.part = path.with_name(path.name + ".part")
        self.size = size
        self.fps = fps
        self.chunks_per_frame = chunks_per_frame
        self.max_frames = max(1, int(max_seconds * fps))
        self.max_bytes = max_bytes
        self.frames = 0
        self.stop_reason = ""
        self.error: str | None = None
        self._on_done = on_done
        self._queue: queue.Queue[tuple[int, AVBundle]] = queue.Queue(maxsize=QUEUE_BUNDLES)
        self._accepting = True
        self._finishing = threading.Event()
        self._thread = threading.Thread(target=self._run, name=name, daemon=True)
        self._thread.start()

    @property
    def active(self) -> bool:
        return self._thread.is_alive()

    @property
    def seconds(self) -> float:
        return self.frames / self.fps

    def offer(self, tick: int, bundle: AVBundle) -> None:
        """Called on the event loop for each bundle sent; never blocks."""
        if not self._accepting:
            return
        try:
            self._queue.put_nowait((tick, bundle))
        except queue.Full:
            self.stop("the encoder fell behind the stream")

    def stop(self, reason: str) -> None:
        """Finish the file after what is queued (any thread, never blocks; idempotent)."""
        if self._accepting:
            self._accepting = False
            self.stop_reason = reason
        self._finishing.set()

    def join(self, timeout: float = JOIN_TIMEOUT_S) -> None:
        self._thread.join(timeout)
        if self._thread.is_alive():
            logger.error("recorder %s did not finish within %.0f s", self._thread.name, timeout)

    # ---- recorder thread ---------------------------------------------------
    def _run(self) -> None:
        try:
            self._encode_all()
            os.replace(self.part, self.path)
            logger.info("recorded %s: %d frames (%.1f s), %s", self.path.name, self.frames, self.seconds,
                        self.stop_reason)
        except Exception as exc:
            self.error = f"recording failed: {exc}"
            logger.exception("recording %s failed", self.path.name)
            self.part.unlink(missing_ok=True)
        finally:
            self._accepting = False
            self._on_done(self)

    def _encode_all(self) -> None:
        width, height = self.size
        with av.open(str(self.part), mode="w", format="mp4") as container:
            video = container.add_stream(VIDEO_CODEC, rate=self.fps, options=dict(VIDEO_OPTIONS))
            video.width, video.height, video.pix_fmt = width, height, "yuv420p"
            audio = container.add_stream(AUDIO_CODEC, rate=SAMPLE_RATE, layout="mono")
            video_base = fractions.Fraction(1, self.fps)
            audio_base = fractions.Fraction(1, SAMPLE_RATE)
            samples_per_tick = CHUNK_SAMPLES * self.chunks_per_frame
            first_tick: int | None = None
            next_tick = 0
            while True:
                try:
                    tick, bundle = self._queue.get(timeout=0.1)
                except queue.Empty:
                    if self._finishing.is_set():
                        break
                    continue
                if first_tick is None:
                    first_tick = tick
                rel = tick - first_tick
                if rel < next_tick:
                    continue
                while next_tick < rel:  # ticks skipped on the wire: keep the audio continuous
                    self._mux(container, audio, self._audio_frame(np.zeros(samples_per_tick, np.int16),
                                                                  next_tick * samples_per_tick, audio_base))
                    next_tick += 1
                picture = av.VideoFrame.from_ndarray(bundle.video.to_ndarray(), format="yuv420p")
                picture.pts, picture.time_base = rel, video_base
                self._mux(container, video, picture)
                self._mux(container, audio, self._audio_frame(bundle.audio.reshape(-1), rel * samples_per_tick,
                                                              audio_base))
                next_tick = rel + 1
                self.frames = next_tick
                if self._capped():
                    break
            for stream in (video, audio):
                for packet in stream.encode(None):
                    container.mux(packet)

    def _capped(self) -> bool:
        if self.frames >= self.max_frames:
            self._stop_from_inside(f"reached the {self.max_frames / self.fps:g} s limit")
            return True
        if self.frames % SIZE_CHECK_EVERY == 0 and self.part.stat().st_size >= self.max_bytes:
            self._stop_from_inside(f"reached the {self.max_bytes / 1e6:g} MB limit")
            return True
        return False

    def _stop_from_inside(self, reason: str) -> None:
        self._accepting = False
        self.stop_reason = reason
        logger.info("recording %s stopped: %s", self.path.name, reason)

    @staticmethod
    def _audio_frame(samples: np.ndarray, pts: int, time_base: fractions.Fraction) -> av.AudioFrame:
        frame = av.AudioFrame.from_ndarray(np.ascontiguousarray(samples, np.int16).reshape(1, -1),
                                           format="s16", layout="mono")
        frame.sample_rate, frame.pts, frame.time_base = SAMPLE_RATE, pts, time_base
        return frame

    @staticmethod
    def _mux(container, stream, frame) -> None:
        for packet in stream.encode(frame):
            container.mux(packet)


class Recordings:
    """The recorders of live sessions, by session id (loop side; recorders report back from their threads)."""

    def __init__(self, folder: Path, max_seconds: float, max_bytes: int):
        self.folder = folder
        self.max_seconds = max_seconds
        self.max_bytes = max_bytes
        self._active: dict[str, Recorder] = {}
        self._lock = threading.Lock()

    def path(self, session_id: str) -> Path:
        return self.folder / f"{session_id}.mp4"

    def active(self, session_id: str) -> Recorder | None:
        with self._lock:
            return self._active.get(session_id)

    def start(self, session) -> Recorder:
        """Start a recorder for `session` (blocking: makes the folder; run it in an executor)."""
        with self._lock:
            if session.id in self._active:
                raise BadRequest("this session is already recording: send end_record first", status=409)
            self.folder.mkdir(parents=True, exist_ok=True)
            engine = session.engine
            events = session.events

            def done(recorder: Recorder) -> None:
                with self._lock:
                    if self._active.get(session.id) is recorder:
                        del self._active[session.id]
                if session.player.schedule.tap == recorder.offer:
                    session.player.schedule.tap = None
                events.publish_threadsafe({"type": "record", "status": "end", "reason": recorder.stop_reason,
                                           "seconds": round(recorder.seconds, 3), "error": recorder.error})

            recorder = Recorder(self.path(session.id), engine.output_size, engine.config.fps,
                                engine.chunks_per_frame, self.max_seconds, self.max_bytes, done,
                                name=f"record-{session.id[:8]}")
            self._active[session.id] = recorder
        return recorder

    def attach(self, session, recorder: Recorder) -> None:
        """On the event loop: feed the recorder what the session sends, and finish it on close."""
        if session.closed:
            recorder.stop("session closed")
            raise BadRequest("the session closed", status=404)
        session.player.schedule.tap = recorder.offer
        loop = asyncio.get_running_loop()
        session.add_closer(lambda: loop.run_in_executor(None, self.finish, recorder, "session closed"))

    @staticmethod
    def finish(recorder: Recorder, reason: str) -> None:
        """Stop and wait until the file is complete (blocking)."""
        recorder.stop(reason)
        recorder.join()


RECORDINGS_KEY = web.AppKey("recordings", Recordings)


def register(app: web.Application, ctx: "ServerContext") -> None:
    """Add POST /record and GET /record/{sessionid}."""
    args = ctx.args
    recordings = Recordings(Path(args.data_dir) / RECORD_DIR, args.record_max_seconds,
                            int(args.record_max_mb * 1024 * 1024))
    app[RECORDINGS_KEY] = recordings

    async def record(request: web.Request) -> web.Response:
        """`type: start_record` starts; `end_record` stops and waits for a playable file."""
        body = await read_json(request)
        unnamed = ctx.missing_session(body)  # LiveTalking's webrtcapi-asr.html sends no sessionid
        if unnamed is not None:
            return unnamed
        session = ctx.session_from(body)
        kind = body.get("type")
        loop = asyncio.get_running_loop()
        if kind == "start_record":
            recordings.attach(session, await loop.run_in_executor(None, recordings.start, session))
            return ok(data={"url": f"/record/{session.id}"})
        if kind == "end_record":
            recorder = recordings.active(session.id)
            if recorder is None:
                raise BadRequest("this session is not recording: send start_record first", status=409)
            started = time.monotonic()
            await loop.run_in_executor(None, recordings.finish, recorder, "end_record")
            if recorder.error:
                raise BadRequest(recorder.error, status=500)
            logger.info("session %s: recording finished in %.2f s", session.id[:8], time.monotonic() - started)
            return ok(data={"url": f"/record/{session.id}", "seconds": round(recorder.seconds, 3),
                            "frames": recorder.frames})
        raise BadRequest("'type' must be \"start_record\" or \"end_record\"")

    async def download(request: web.Request) -> web.StreamResponse:
        session_id = request.match_info["sessionid"]
        if not SESSION_ID_PATTERN.match(session_id):
            raise BadRequest("invalid session id")
        if recordings.active(session_id) is not None:
            raise BadRequest("still recording: send end_record first", status=409)
        path = recordings.path(session_id)
        if not path.is_file():
            raise BadRequest("no recording for this session: record it with POST /record first", status=404)
        return web.FileResponse(path, headers={"Content-Type": "video/mp4",
                                               "Content-Disposition": f'attachment; filename="{path.name}"'})

    app.router.add_post("/record", record)
    app.router.add_get("/record/{sessionid}", download)
