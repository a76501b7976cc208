"""Avatar preparation over HTTP: upload a photo or video, genavatar runs in one bounded worker.

    POST   /api/avatar/task          multipart: file (or video_file), avatar_id, model lite|musetalk, options
    GET    /api/avatar/task/{id}     status pending|running|completed|failed|cancelled, progress 0-100
    GET    /api/avatar/tasks         {tasks: [...]}: every task this process knows (newest first)
    DELETE /api/avatar/task/{id}     cancel a task that has not started
    GET    /api/avatar/preview/{avatar_id}?frame=N   one idle-loop frame as JPEG (the page animates them)

A task answers with LiveTalking's field names (model_type, start_time, end_time,
error_msg), so its avatar.html lists them. LiveTalking's form fields are accepted;
its `video_path` (any file on the server)
and `notifyurl` (a request to any host: SSRF) are refused: progress is polled.
One worker thread prepares one avatar at a time; the queue is bounded. What an
upload may cost is judged before anything is decoded: its bytes, the time it
takes to arrive (--avatar-upload-timeout), how many arrive at once
(--avatar-uploads, else 429), the pixels its header declares (--avatar-max-megapixels)
and, for a video, the memory its frames take once decoded and scaled
(--avatar-decode-mb: checked from the declared size and length, then again while
decoding). An upload lives in data/tmp/ only until its task ends.
"""

from __future__ import annotations

import argparse
import asyncio
import ctypes
import logging
import queue
import threading
import time
import uuid
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

import av
import cv2
from aiohttp import web

from avatars import prepare as preparation
from avatars.format import AvatarError, check_avatar_id
from avatars.store import AvatarStore
from avatars.tracking import Progress
from httpapi import BadRequest, ok, positive_seconds
from server.avatarupload import IMAGE_SUFFIXES, LIMITS_KEY, UploadLimits, judge_upload, parse_options, read_upload

if TYPE_CHECKING:
    from server.context import ServerContext

logger = logging.getLogger(__name__)

MAX_PENDING = 8
MAX_REMEMBERED = 100
PREVIEW_MAX_SIDE = 320
JOIN_TIMEOUT_S = 2.0
DEFAULT_UPLOADS_IN_PROGRESS = 4
DEFAULT_UPLOAD_TIMEOUT_S = 120.0
DEFAULT_DECODE_MB = preparation.MAX_DECODED_BYTES / 2**20
DEFAULT_MAX_MEGAPIXELS = preparation.MAX_SOURCE_PIXELS / 1e6


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--avatar-upload-mb", dest="avatar_upload_mb", type=float, default=100.0,
                        help="largest photo/video accepted by POST /api/avatar/task")
    parser.add_argument("--avatar-max-seconds", dest="avatar_max_seconds", type=float, default=60.0,
                        help="longest video accepted by POST /api/avatar/task")
    parser.add_argument("--avatar-max-megapixels", dest="avatar_max_megapixels", type=float,
                        default=DEFAULT_MAX_MEGAPIXELS,
                        help="largest photo or video frame (width x height, as its header declares) an avatar "
                             "upload may have; larger ones are refused before they are decoded")
    parser.add_argument("--avatar-decode-mb", dest="avatar_decode_mb", type=float, default=DEFAULT_DECODE_MB,
                        help="memory a video upload's frames may take once decoded and scaled to 1280 px")
    parser.add_argument("--avatar-uploads", dest="avatar_uploads", type=int, default=DEFAULT_UPLOADS_IN_PROGRESS,
                        help="avatar uploads that may be arriving at once (more get 429)")
    parser.add_argument("--avatar-upload-timeout", dest="avatar_upload_timeout", type=positive_seconds,
                        default=DEFAULT_UPLOAD_TIMEOUT_S, metavar="SECONDS",
                        help="time a whole avatar upload may take to arrive (else 408)")


@dataclass
class AvatarTask:
    """One preparation job; `asdict` of it is what the API answers (LiveTalking's names where it has them).

    start_time is when the task was queued and end_time when it ended (LiveTalking's meanings, Unix
    seconds); running_since is when the worker took it up. error_msg is "" unless it failed.
    """

    task_id: str
    avatar_id: str
    model_type: str
    kind: str  # photo | video
    status: str = "pending"
    progress: float = 0.0
    message: str = "queued"
    error_msg: str = ""
    frames: int | None = None
    start_time: float = field(default_factory=time.time)
    running_since: float | None = None
    end_time: float | None = None

    def public(self) -> dict:
        data = asdict(self)
        data["progress"] = round(self.progress, 1)
        return data


@dataclass(frozen=True)
class TaskInput:
    upload: Path
    options: preparation.PrepareOptions
    overwrite: bool
    max_pixels: int = preparation.MAX_SOURCE_PIXELS
    max_decoded_bytes: int = preparation.MAX_DECODED_BYTES


def release_freed_memory() -> None:
    """Give the heap a task freed back to the system (glibc keeps freed frames otherwise: a 4K clip's
    hundreds of MB would stay resident after its task). A no-op where there is no glibc."""
    try:
        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except (OSError, AttributeError):
        pass


class AvatarTaskManager:
    """Runs avatar preparations one at a time in a daemon thread, from a bounded queue."""

    def __init__(self, avatars: AvatarStore, data_dir: Path, models_dir: Path, max_pending: int = MAX_PENDING):
        self.avatars = avatars
        self.data_dir = data_dir
        self.models_dir = models_dir
        self.tasks: dict[str, AvatarTask] = {}
        self._inputs: dict[str, TaskInput] = {}
        self._queue: queue.Queue[str | None] = queue.Queue(maxsize=max_pending)
        self._lock = threading.Lock()
        self._stopping = threading.Event()
        self._thread = threading.Thread(target=self._run, name="avatar-tasks", daemon=True)
        self._landmarker = None
        self.uploads_in_progress = 0  # changed on the event loop only

    @property
    def upload_dir(self) -> Path:
        return self.data_dir / "tmp"

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._stopping.set()
        try:
            self._queue.put_nowait(None)
        except queue.Full:
            pass
        if self._thread.is_alive():
            self._thread.join(JOIN_TIMEOUT_S)

    def busy_with(self, avatar_id: str) -> bool:
        with self._lock:
            return any(t.avatar_id == avatar_id and t.status in ("pending", "running") for t in self.tasks.values())

    def submit(self, task: AvatarTask, task_input: TaskInput) -> None:
        with self._lock:
            self.tasks[task.task_id] = task
            self._inputs[task.task_id] = task_input
            try:
                self._queue.put_nowait(task.task_id)
            except queue.Full:
                del self.tasks[task.task_id], self._inputs[task.task_id]
                raise BadRequest(f"{self._queue.maxsize} avatar tasks are already waiting: try again later",
                                 status=429) from None
            self._forget_old()

    def cancel(self, task_id: str) -> AvatarTask:
        with self._lock:
            task = self.tasks.get(task_id)
            if task is None:
                raise BadRequest(f"unknown task {task_id!r}", status=404)
            if task.status != "pending":
                raise BadRequest(f"task {task_id} is {task.status}: only pending tasks can be deleted", status=409)
            task.status, task.message, task.end_time = "cancelled", "cancelled before it started", time.time()
            task_input = self._inputs.pop(task_id)
        task_input.upload.unlink(missing_ok=True)
        return task

    def get(self, task_id: str) -> AvatarTask:
        with self._lock:
            task = self.tasks.get(task_id)
        if task is None:
            raise BadRequest(f"unknown task {task_id!r}", status=404)
        return task

    def listing(self) -> list[dict]:
        with self._lock:
            return [t.public() for t in sorted(self.tasks.values(), key=lambda t: t.start_time, reverse=True)]

    def _forget_old(self) -> None:
        finished = [t for t in self.tasks.values() if t.end_time is not None]
        for task in sorted(finished, key=lambda t: t.end_time)[: max(0, len(self.tasks) - MAX_REMEMBERED)]:
            del self.tasks[task.task_id]

    # ---- worker thread ----------------------------------------------------
    def _run(self) -> None:
        while not self._stopping.is_set():
            task_id = self._queue.get()
            if task_id is None:
                break
            with self._lock:
                task = self.tasks.get(task_id)
                task_input = self._inputs.pop(task_id, None)
                if task is None or task_input is None or task.status != "pending":
                    continue
                task.status, task.message, task.running_since = "running", "preparing", time.time()
            try:
                report = self._build(task, task_input)
            except (AvatarError, ValueError) as exc:
                self._finish(task, "failed", str(exc))
            except (OSError, av.error.FFmpegError) as exc:  # their text names server paths: not for the client
                logger.warning("avatar task %s failed: %s", task.task_id, exc)
                self._finish(task, "failed", f"{type(exc).__name__} while preparing: see the server log")
            except Exception as exc:  # a bug must fail the task, not kill the worker
                logger.exception("avatar task %s failed", task.task_id)
                self._finish(task, "failed", f"internal error ({type(exc).__name__}): see the server log")
            else:
                task.frames = report.frames
                self.avatars.forget(task.avatar_id)
                self._finish(task, "completed", f"{report.frames} frames in {report.seconds:.1f} s")
            finally:
                task_input.upload.unlink(missing_ok=True)
                release_freed_memory()

    def _finish(self, task: AvatarTask, status: str, message: str) -> None:
        with self._lock:
            task.status, task.end_time = status, time.time()
            if status == "failed":
                task.error_msg = message
                task.message = "failed"
            else:
                task.message, task.progress = message, 100.0
        logger.info("avatar task %s (%s): %s: %s", task.task_id, task.avatar_id, status, message)

    def _build(self, task: AvatarTask, task_input: TaskInput) -> preparation.PrepareReport:
        if self._landmarker is None:
            from avatars.facegeom import FaceLandmarker

            self._landmarker = FaceLandmarker()
        out_dir = self.avatars.root / task.avatar_id
        if out_dir.exists() and not task_input.overwrite:
            raise AvatarError(f"avatar {task.avatar_id!r} already exists: choose another id or send overwrite=true")

        def report(percent: float) -> None:
            if self._stopping.is_set():
                raise AvatarError("the server is shutting down: submit the task again")
            task.progress = percent

        progress = Progress(report)
        options = task_input.options
        source = f"upload ({task.kind})"
        if task.kind == "photo":
            image = preparation.read_image(task_input.upload, options.max_side, task_input.max_pixels)
            return preparation.build_avatar(out_dir, options, image=image, source=source,
                                          landmarker=self._landmarker, progress=progress)
        frames = preparation.read_video(task_input.upload, options.fps, options.max_frames, options.max_side,
                                        task_input.max_pixels, task_input.max_decoded_bytes)
        return preparation.build_avatar(out_dir, options, frames=frames, source=source, landmarker=self._landmarker,
                                      progress=progress)


# ---- HTTP -----------------------------------------------------------------------

MANAGER_KEY = web.AppKey("avatar_tasks", AvatarTaskManager)


def manager_of(request: web.Request) -> AvatarTaskManager:
    return request.app[MANAGER_KEY]


async def create_task(request: web.Request) -> web.Response:
    manager, limits = manager_of(request), request.app[LIMITS_KEY]
    if manager.uploads_in_progress >= limits.in_progress:
        raise BadRequest(f"{limits.in_progress} avatar uploads are already arriving: try again later", status=429)
    manager.uploads_in_progress += 1
    try:
        async with asyncio.timeout(limits.timeout_s):
            fields, upload, suffix = await read_upload(request, manager.upload_dir, limits.upload_bytes)
    except TimeoutError:
        raise BadRequest(f"the upload did not arrive within {limits.timeout_s:g} s (--avatar-upload-timeout): "
                         f"send a smaller file or use a faster link", status=408) from None
    finally:
        manager.uploads_in_progress -= 1
    loop = asyncio.get_running_loop()
    try:
        try:
            avatar_id = check_avatar_id(fields.get("avatar_id", ""))
        except AvatarError as exc:
            raise BadRequest(str(exc)) from None
        model, options = parse_options(fields, manager.models_dir, limits.fps)
        if model == "musetalk":
            from engines import resolve_model

            if resolve_model("auto", manager.models_dir) != "musetalk":
                raise BadRequest("model musetalk needs the MuseTalk weights: run `python -m tools.download_models` "
                                 "on the server, or use model lite", status=422)
        overwrite = fields.get("overwrite", "").lower() in ("1", "true", "yes")
        if manager.busy_with(avatar_id):
            raise BadRequest(f"avatar {avatar_id!r} is already being prepared", status=409)
        if manager.avatars.exists(avatar_id) and not overwrite:
            raise BadRequest(f"avatar {avatar_id!r} already exists: choose another id or send overwrite=true",
                             status=409)
        kind = "photo" if suffix in IMAGE_SUFFIXES else "video"
        max_frames = await loop.run_in_executor(None, judge_upload, upload, kind, limits, options)
        if max_frames is not None:
            options = preparation.PrepareOptions(**{**asdict(options), "max_frames": max_frames})
        task = AvatarTask(task_id=uuid.uuid4().hex[:16], avatar_id=avatar_id, model_type=model, kind=kind)
        manager.submit(task, TaskInput(upload, options, overwrite, limits.max_pixels, limits.decoded_bytes))
    except BaseException:
        upload.unlink(missing_ok=True)
        raise
    logger.info("avatar task %s queued: %s from a %s, model %s", task.task_id, avatar_id, kind, model)
    return ok(data=task.public())


async def get_task(request: web.Request) -> web.Response:
    return ok(data=manager_of(request).get(request.match_info["task_id"]).public())


async def delete_task(request: web.Request) -> web.Response:
    return ok(data=manager_of(request).cancel(request.match_info["task_id"]).public())


async def list_tasks(request: web.Request) -> web.Response:
    """`data: {tasks: [...]}`, as LiveTalking answers (its avatar.html reads data.tasks)."""
    return ok(data={"tasks": manager_of(request).listing()})


def preview_jpeg(avatars: AvatarStore, avatar_id: str, frame: int) -> tuple[bytes, int]:
    """One frame of the avatar's idle loop as a small JPEG, and the loop's frame count (blocking)."""
    avatar = avatars.get(avatar_id)
    image = avatar.frames[frame % avatar.frame_count]
    scale = min(1.0, PREVIEW_MAX_SIDE / max(image.shape[:2]))
    if scale < 1.0:
        image = cv2.resize(image, None, fx=scale, fy=scale, interpolation=cv2.INTER_AREA)
    ok_, data = cv2.imencode(".jpg", image, [cv2.IMWRITE_JPEG_QUALITY, 80])
    return data.tobytes(), avatar.frame_count


async def preview(request: web.Request) -> web.Response:
    avatars = manager_of(request).avatars
    try:
        avatar_id = check_avatar_id(request.match_info["avatar_id"])
        if not avatars.exists(avatar_id):
            raise BadRequest(f"unknown avatar {avatar_id!r}", status=404)
        frame = int(request.query.get("frame", "0"))
    except AvatarError as exc:
        raise BadRequest(str(exc)) from None
    except ValueError:
        raise BadRequest("'frame' must be an integer") from None
    try:
        data, count = await asyncio.get_running_loop().run_in_executor(None, preview_jpeg, avatars, avatar_id,
                                                                        max(0, frame))
    except AvatarError as exc:
        raise BadRequest(str(exc), status=422) from None
    return web.Response(body=data, content_type="image/jpeg",
                        headers={"X-Frame-Count": str(count), "Cache-Control": "max-age=60"})


def register(app: web.Application, ctx: "ServerContext") -> None:
    """Add the avatar task routes and run the worker with the app."""
    args = ctx.args
    manager = AvatarTaskManager(ctx.avatars, args.data_dir, args.models_dir)
    app[MANAGER_KEY] = manager
    app[LIMITS_KEY] = UploadLimits.from_args(args)
    app.router.add_post("/api/avatar/task", create_task)
    app.router.add_get("/api/avatar/task/{task_id}", get_task)
    app.router.add_delete("/api/avatar/task/{task_id}", delete_task)
    app.router.add_get("/api/avatar/tasks", list_tasks)
    app.router.add_get("/api/avatar/preview/{avatar_id}", preview)

    async def start(_app: web.Application) -> None:
        manager.start()

    async def stop(_app: web.Application) -> None:
        await asyncio.get_running_loop().run_in_executor(None, manager.stop)

    app.on_startup.append(start)
    app.on_shutdown.append(stop)
