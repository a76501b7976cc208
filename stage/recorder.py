"""Recording a session to MP4: exactly the bundles it sends, on its own clock.

`MediaSchedule` hands every bundle it is done with (tick n: the video frame and
the audio chunks both tracks sent) to a `Recorder`, which queues it (bounded)
for a named daemon thread that encodes H.264 + AAC with PyAV. Video frame n gets
pts n and its audio the samples of the same tick, so the file has the session's
A/V alignment.

Each recording has its own random id and file, `data/record/<recording id>.mp4`
(written as `.mp4.part`, renamed when complete), so a new recording never
replaces an older one and `GET /record/{id}` only serves finished, playable
files; `GET /record/{sessionid}` serves that session's latest recording. A
recording stopped before its first frame writes no file (end_record says so).
Retention: finished recordings older than --record-keep-hours are deleted, and
the oldest go first whenever all of them together pass --record-keep-mb (the
newest is kept whatever its size); checked at start-up, when a recording
starts and when one ends.
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
import uuid
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
RECORDING_ID_PATTERN = re.compile(r"^[0-9a-f]{16}$")
RECORD_DIR = "record"
RECORDING_SUFFIX = ".mp4"
PART_SUFFIX = ".part"
DEFAULT_KEEP_HOURS = 24.0
DEFAULT_KEEP_MB = 2000.0
SECONDS_PER_HOUR = 3600.0


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--record-max-seconds", dest="record_max_seconds", type=float, default=600.0,
                        help="a /record recording stops by itself after this many seconds")
    parser.add_argument("--record-max-mb", dest="record_max_mb", type=float, default=500.0,
                        help="a /record recording stops by itself when its file reaches this size")
    parser.add_argument("--record-keep-hours", dest="record_keep_hours", type=float, default=DEFAULT_KEEP_HOURS,
                        help="finished recordings older than this are deleted (0: kept until --record-keep-mb)")
    parser.add_argument("--record-keep-mb", dest="record_keep_mb", type=float, default=DEFAULT_KEEP_MB,
                        help="all finished recordings together stay under this size: the oldest are deleted first")


class Recorder:
    """Encodes one session's sent bundles into an MP4 file in its own thread."""

    def __init__(self, path: Path, size: tuple[int, int], fps: int, chunks_per_frame: int,
                 max_seconds: float, max_bytes: int, on_done: Callable[["Recorder"], None], name: str = "record"):
        self.path = path
        self.part = path.with_name(path.name + PART_SUFFIX)
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
    @property
    def written(self) -> bool:
        """A complete file exists (False for a recording stopped before its first frame)."""
        return self.frames > 0 and self.error is None and not self.active

    def _run(self) -> None:
        try:
            first = self._first_bundle()
            if first is None:
                logger.info("recording %s: stopped before its first frame (%s): no file", self.path.name,
                            self.stop_reason)
                return
            self._encode_all(first)
            os.replace(self.part, self.path)
            logger.info("recorded %s: %d frames (%.1f s), %s", self.path.name, self.frames, self.seconds,
                        self.stop_reason)
        except Exception as exc:
            self.error = f"recording failed ({type(exc).__name__}): see the server log"
            logger.exception("recording %s failed", self.path.name)
            self.part.unlink(missing_ok=True)
        finally:
            self._accepting = False
            self._on_done(self)

    def _first_bundle(self) -> tuple[int, AVBundle] | None:
        """Wait for the first bundle; None when the recording is stopped before one comes."""
        while True:
            try:
                return self._queue.get(timeout=0.1)
            except queue.Empty:
                if self._finishing.is_set():
                    return None

    def _encode_all(self, first: tuple[int, AVBundle]) -> None:
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
            pending: tuple[int, AVBundle] | None = first
            while True:
                if pending is not None:
                    (tick, bundle), pending = pending, None
                else:
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

    def __init__(self, folder: Path, max_seconds: float, max_bytes: int, keep_seconds: float = 0.0,
                 keep_bytes: int | None = None):
        self.folder = folder
        self.max_seconds = max_seconds
        self.max_bytes = max_bytes
        self.keep_seconds = keep_seconds
        self.keep_bytes = keep_bytes
        self._active: dict[str, Recorder] = {}
        self._latest: dict[str, str] = {}  # session id -> its latest recording id (forgotten when pruned)
        self._lock = threading.Lock()

    def path(self, recording_id: str) -> Path:
        return self.folder / f"{recording_id}{RECORDING_SUFFIX}"

    def find(self, name: str) -> Path | None:
        """A finished recording by its id, or a session's latest one by the session id."""
        with self._lock:
            recording_id = name if RECORDING_ID_PATTERN.match(name) else self._latest.get(name)
        if recording_id is None:
            return None
        path = self.path(recording_id)
        return path if path.is_file() else None

    def prune(self) -> list[str]:
        """Apply the retention policy to finished recordings (blocking); the names deleted."""
        if not self.folder.is_dir():
            return []
        files = []
        for path in self.folder.glob(f"*{RECORDING_SUFFIX}"):
            try:
                stat = path.stat()
            except FileNotFoundError:
                continue
            files.append((stat.st_mtime, stat.st_size, path))
        files.sort()
        now, total = time.time(), sum(size for _, size, _ in files)
        deleted = []
        for index, (mtime, size, path) in enumerate(files):
            too_old = self.keep_seconds > 0 and now - mtime > self.keep_seconds
            newest = index == len(files) - 1  # the size cap never takes the recording just made
            too_much = self.keep_bytes is not None and total > self.keep_bytes and not newest
            if not (too_old or too_much):
                continue
            path.unlink(missing_ok=True)
            total -= size
            deleted.append(path.stem)
        if deleted:
            with self._lock:
                gone = set(deleted)
                self._latest = {sid: rid for sid, rid in self._latest.items() if rid not in gone}
            logger.info("recordings: deleted %d by the retention policy (%g h, %g MB)", len(deleted),
                        self.keep_seconds / SECONDS_PER_HOUR, (self.keep_bytes or 0) / 2**20)
        return deleted

    def clear_parts(self) -> None:
        """Files of recordings a previous process did not finish (blocking: at start-up)."""
        if self.folder.is_dir():
            for part in self.folder.glob(f"*{RECORDING_SUFFIX}{PART_SUFFIX}"):
                part.unlink(missing_ok=True)

    def active(self, session_id: str) -> Recorder | None:
        with self._lock:
            return self._active.get(session_id)

    def all_active(self) -> list[Recorder]:
        with self._lock:
            return list(self._active.values())

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
                    if recorder.frames > 0 and recorder.error is None:
                        self._latest[session.id] = recorder.path.stem
                if session.player.schedule.tap == recorder.offer:
                    session.player.schedule.tap = None
                events.publish_threadsafe({"type": "record", "status": "end", "reason": recorder.stop_reason,
                                           "seconds": round(recorder.seconds, 3), "error": recorder.error,
                                           "url": recording_url(recorder)})
                self.prune()

            recorder = Recorder(self.path(uuid.uuid4().hex[:16]), engine.output_size, engine.config.fps,
                                engine.chunks_per_frame, self.max_seconds, self.max_bytes, done,
                                name=f"record-{session.tag}")
            self._active[session.id] = recorder
        self.prune()
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


def recording_url(recorder: Recorder) -> str | None:
    return f"/record/{recorder.path.stem}" if recorder.frames > 0 and recorder.error is None else None


RECORDINGS_KEY = web.AppKey("recordings", Recordings)


def register(app: web.Application, ctx: "ServerContext") -> None:
    """Add POST /record and GET /record/{sessionid}."""
    args = ctx.args
    recordings = Recordings(Path(args.data_dir) / RECORD_DIR, args.record_max_seconds,
                            int(args.record_max_mb * 1024 * 1024), args.record_keep_hours * SECONDS_PER_HOUR,
                            int(args.record_keep_mb * 1024 * 1024))
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
            recorder = await loop.run_in_executor(None, recordings.start, session)
            recordings.attach(session, recorder)
            return ok(data={"url": f"/record/{recorder.path.stem}", "recording": recorder.path.stem})
        if kind == "end_record":
            recorder = recordings.active(session.id)
            if recorder is None:
                raise BadRequest("this session is not recording: send start_record first", status=409)
            started = time.monotonic()
            await loop.run_in_executor(None, recordings.finish, recorder, "end_record")
            if recorder.error:
                raise BadRequest(recorder.error, status=500)
            logger.info("session %s: recording finished in %.2f s", session.tag, time.monotonic() - started)
            data = {"url": recording_url(recorder), "recording": recorder.path.stem,
                    "seconds": round(recorder.seconds, 3), "frames": recorder.frames}
            if recorder.frames == 0:
                data["msg"] = "nothing was sent before end_record: no file was written"
            return ok(data=data)
        raise BadRequest("'type' must be \"start_record\" or \"end_record\"")

    async def download(request: web.Request) -> web.StreamResponse:
        name = request.match_info["sessionid"]
        if not SESSION_ID_PATTERN.match(name):
            raise BadRequest("invalid recording or session id")
        active = recordings.active(name)
        if active is not None or any(r.path.stem == name for r in recordings.all_active()):
            raise BadRequest("still recording: send end_record first", status=409)
        path = recordings.find(name)
        if path is None:
            raise BadRequest("no such recording (finished recordings are kept for --record-keep-hours): "
                             "record one with POST /record", status=404)
        return web.FileResponse(path, headers={"Content-Type": "video/mp4",
                                               "Content-Disposition": f'attachment; filename="{path.name}"'})

    async def clean_up(_app: web.Application) -> None:
        await asyncio.get_running_loop().run_in_executor(None, lambda: (recordings.clear_parts(), recordings.prune()))

    app.on_startup.append(clean_up)
    app.router.add_post("/record", record)
    app.router.add_get("/record/{sessionid}", download)
