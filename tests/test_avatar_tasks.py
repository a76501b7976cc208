"""Avatar tasks over HTTP: a real photo and a real video through the real genavatar, then a live session."""

from __future__ import annotations

import asyncio
import io
import shutil
import threading
import time

import aiohttp
import av
import cv2
import numpy as np
import pytest

from server import avatartasks
from avatars.prepare import default_photo
from tests.conftest import server_args, start_server
from tests.support.rtc_client import ReceiverClient

PHOTO_SIDE = 256


def astronaut_jpeg(side: int = PHOTO_SIDE) -> bytes:
    photo = cv2.resize(default_photo(), (side, side), interpolation=cv2.INTER_AREA)
    return cv2.imencode(".jpg", photo)[1].tobytes()


def astronaut_mp4(seconds: float, side: int = PHOTO_SIDE, fps: int = 25) -> bytes:
    """A short H.264 clip of the photo drifting sideways (a face in every frame)."""
    photo = cv2.resize(default_photo(), (side, side), interpolation=cv2.INTER_AREA)
    out = io.BytesIO()
    with av.open(out, "w", format="mp4") as container:
        stream = container.add_stream("libx264", rate=fps)
        stream.width = stream.height = side
        stream.pix_fmt = "yuv420p"
        for index in range(int(seconds * fps)):
            shifted = np.roll(photo, index % 4, axis=1)
            frame = av.VideoFrame.from_ndarray(np.ascontiguousarray(shifted), format="bgr24")
            for packet in stream.encode(frame):
                container.mux(packet)
        for packet in stream.encode(None):
            container.mux(packet)
    return out.getvalue()


def form(data: bytes, filename: str, **fields: str) -> aiohttp.FormData:
    body = aiohttp.FormData()
    for name, value in fields.items():
        body.add_field(name, value)
    body.add_field("file", data, filename=filename, content_type="application/octet-stream")
    return body


async def submit(http, url: str, data: bytes, filename: str, **fields: str) -> tuple[int, dict]:
    async with http.post(f"{url}/api/avatar/task", data=form(data, filename, **fields)) as response:
        return response.status, await response.json()


async def wait_done(http, url: str, task_id: str, timeout: float = 120) -> tuple[dict, list[float]]:
    """Poll until the task ends; returns its last state and every progress value seen."""
    seen: list[float] = []
    deadline = time.monotonic() + timeout
    while True:
        async with http.get(f"{url}/api/avatar/task/{task_id}") as response:
            assert response.status == 200
            task = (await response.json())["data"]
        seen.append(task["progress"])
        if task["status"] in ("completed", "failed", "cancelled"):
            return task, seen
        assert time.monotonic() < deadline, task
        await asyncio.sleep(0.05)


@pytest.fixture
async def task_server(tmp_path, data_dir):
    """A server on its own data dir (tasks write avatars there), with a copy of the test avatar."""
    (tmp_path / "avatars").mkdir()
    shutil.copytree(data_dir / "avatars" / "testface", tmp_path / "avatars" / "testface")
    running = await start_server(server_args(tmp_path, "--avatar-upload-mb", "2", "--avatar-max-seconds", "1"))
    yield running
    await running.runner.cleanup()


async def test_photo_task_end_to_end_then_connect_with_the_avatar(task_server, http):
    url = task_server.url
    status, body = await submit(http, url, astronaut_jpeg(), "astronaut.jpg", avatar_id="astro_task",
                                model="lite", loop_seconds="0.4")
    assert status == 200 and body["code"] == 0, body
    assert body["data"]["status"] in ("pending", "running") and body["data"]["kind"] == "photo"
    task, seen = await wait_done(http, url, body["data"]["task_id"])
    assert task["status"] == "completed", task
    assert task["progress"] == 100 and task["frames"] == 10
    assert seen == sorted(seen) and any(0 < p < 100 for p in seen), seen  # progress moved forward in steps
    async with http.get(f"{url}/api/avatar/tasks") as response:
        listed = (await response.json())["data"]["tasks"]  # LiveTalking's shape: its avatar.html reads data.tasks
    assert [t["task_id"] for t in listed] == [task["task_id"]]
    assert listed[0]["model_type"] == "lite" and listed[0]["error_msg"] == ""
    assert listed[0]["start_time"] <= listed[0]["running_since"] <= listed[0]["end_time"] <= time.time()
    async with http.get(f"{url}/config") as response:
        assert "astro_task" in (await response.json())["avatars"]
    async with http.get(f"{url}/api/avatar/preview/astro_task?frame=3") as response:
        assert response.status == 200 and response.headers["X-Frame-Count"] == "10"
        image = cv2.imdecode(np.frombuffer(await response.read(), np.uint8), cv2.IMREAD_COLOR)
    assert image.shape == (PHOTO_SIDE, PHOTO_SIDE, 3)
    assert not any((task_server.context.args.data_dir / "tmp").iterdir()), "the upload was not removed"

    client = ReceiverClient(url, avatar="astro_task")
    try:
        await client.connect(http)
        await client.wait_for(video_frames=5, timeout=30)
    finally:
        await client.close()
    received = client.video[-1].data
    assert received.shape == (PHOTO_SIDE, PHOTO_SIDE, 3)
    assert np.abs(received.astype(np.float32) - image).mean() < 25  # it is the astronaut, from its loop


async def test_video_task_and_upload_limits(task_server, http):
    url = task_server.url
    status, body = await submit(http, url, astronaut_mp4(0.4), "clip.mp4", avatar_id="astro_video")
    assert status == 200, body
    task, _ = await wait_done(http, url, body["data"]["task_id"])
    assert task["status"] == "completed" and task["kind"] == "video" and task["frames"] == 10, task

    status, body = await submit(http, url, astronaut_mp4(1.6), "long.mp4", avatar_id="too_long")
    assert status == 413 and "over the 1 s limit" in body["msg"]
    status, body = await submit(http, url, b"\0" * (2 * 1024 * 1024 + 10), "big.mp4", avatar_id="too_big")
    assert status == 413 and "2 MB" in body["msg"]
    status, body = await submit(http, url, b"not a video", "clip.mp4", avatar_id="broken")
    assert status == 415 and "cannot read the video" in body["msg"] and "tmp" not in body["msg"]
    status, body = await submit(http, url, astronaut_jpeg(), "x.exe", avatar_id="weird")
    assert status == 415
    assert not any((task_server.context.args.data_dir / "tmp").iterdir()), "a refused upload was kept"


@pytest.mark.parametrize("fields, status, words", [
    ({"avatar_id": "../escape"}, 400, "invalid avatar id"),
    ({"avatar_id": ""}, 400, "invalid avatar id"),
    ({"avatar_id": "ok", "model": "ernerf"}, 400, "'model' must be one of"),
    ({"avatar_id": "ok", "notifyurl": "http://169.254.169.254/"}, 400, "notifyurl is not supported"),
    ({"avatar_id": "ok", "bbox_shift": "lots"}, 400, "'bbox_shift' must be a number"),
    ({"avatar_id": "ok", "loop_seconds": "1000"}, 400, "'loop_seconds' must be between"),
    ({"avatar_id": "ok", "model": "musetalk"}, 422, "tools.download_models"),
    ({"avatar_id": "testface"}, 409, "already exists"),
])
async def test_bad_task_requests_are_refused(task_server, http, fields, status, words):
    got, body = await submit(http, task_server.url, astronaut_jpeg(64), "a.jpg", **fields)
    assert got == status and words in body["msg"], body


async def test_server_paths_are_refused_and_unknown_tasks_are_404(task_server, http):
    body = aiohttp.FormData()
    body.add_field("avatar_id", "x")
    body.add_field("video_path", "/etc/passwd")
    async with http.post(f"{task_server.url}/api/avatar/task", data=body) as response:
        assert response.status == 400 and "video_path" in (await response.json())["msg"]
    for method in ("GET", "DELETE"):
        async with http.request(method, f"{task_server.url}/api/avatar/task/nope") as response:
            assert response.status == 404


async def test_only_pending_tasks_can_be_deleted(task_server, http, monkeypatch):
    manager = task_server.app[avatartasks.MANAGER_KEY]
    gate, real_build = threading.Event(), manager._build

    def held_build(task, task_input):
        gate.wait(30)
        return real_build(task, task_input)

    monkeypatch.setattr(manager, "_build", held_build)
    _, first = await submit(http, task_server.url, astronaut_jpeg(), "a.jpg", avatar_id="first", loop_seconds="0.2")
    _, second = await submit(http, task_server.url, astronaut_jpeg(), "b.jpg", avatar_id="second")
    first_id, second_id = first["data"]["task_id"], second["data"]["task_id"]
    try:
        deadline = time.monotonic() + 10
        while manager.get(first_id).status != "running":
            assert time.monotonic() < deadline
            await asyncio.sleep(0.02)
        async with http.delete(f"{task_server.url}/api/avatar/task/{first_id}") as response:
            assert response.status == 409 and "only pending" in (await response.json())["msg"]
        async with http.delete(f"{task_server.url}/api/avatar/task/{second_id}") as response:
            assert response.status == 200 and (await response.json())["data"]["status"] == "cancelled"
    finally:
        gate.set()
    task, _ = await wait_done(http, task_server.url, first_id)
    assert task["status"] == "completed"
    assert manager.get(second_id).status == "cancelled"
    assert not (task_server.context.args.data_dir / "avatars" / "second").exists()


async def test_the_token_guards_tasks_but_not_the_page(tmp_path, data_dir, http):
    shutil.copytree(data_dir / "avatars" / "testface", tmp_path / "avatars" / "testface")
    running = await start_server(server_args(tmp_path, "--auth-token", "tok"))
    try:
        async with http.get(f"{running.url}/avatar.html") as response:
            assert response.status == 200
        status, body = await submit(http, running.url, astronaut_jpeg(64), "a.jpg", avatar_id="x")
        assert status == 401, body
        for path in ("/api/avatar/tasks", "/api/avatar/task/x", "/api/avatar/preview/testface"):
            async with http.get(running.url + path) as response:
                assert response.status == 401, path
        async with http.get(f"{running.url}/api/avatar/preview/testface?token=tok") as response:
            assert response.status == 200  # an <img> can only carry the token in its URL
        assert not (tmp_path / "tmp").exists() or not any((tmp_path / "tmp").iterdir())
    finally:
        await running.runner.cleanup()
