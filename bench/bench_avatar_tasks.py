"""Avatar task throughput over HTTP (LiveTalking-parity issue).

    python -m bench.bench_avatar_tasks --tasks 3

Submits --tasks photo tasks (the astronaut at 512 px, a 4 s idle loop) and --tasks
video tasks (a 2 s 512 px clip) to an in-process server at once, polls them like
web/avatar.html does, and reports per task: wall time from upload to completed,
time in the worker, and frames prepared per second. One worker prepares one
avatar at a time, so later tasks wait; the queue time is shown apart.
Then the one-time landmark pass for a LiveTalking folder (lite engine): frames/s.
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import tempfile
import time
from pathlib import Path


import aiohttp

from bench.common import start_server
from tests.test_avatar_tasks import astronaut_jpeg, astronaut_mp4

PHOTO_SIDE = 512
VIDEO_SECONDS = 2.0


async def submit(http, url: str, data: bytes, filename: str, avatar_id: str) -> str:
    form = aiohttp.FormData()
    form.add_field("avatar_id", avatar_id)
    form.add_field("file", data, filename=filename, content_type="application/octet-stream")
    async with http.post(f"{url}/api/avatar/task", data=form) as response:
        body = await response.json()
        assert response.status == 200, body
        return body["data"]["task_id"]


async def wait_all(http, url: str, task_ids: list[str]) -> list[dict]:
    done: dict[str, dict] = {}
    while len(done) < len(task_ids):
        for task_id in task_ids:
            if task_id in done:
                continue
            async with http.get(f"{url}/api/avatar/task/{task_id}") as response:
                task = (await response.json())["data"]
            if task["status"] in ("completed", "failed"):
                assert task["status"] == "completed", task
                done[task_id] = task
        await asyncio.sleep(0.1)
    return [done[t] for t in task_ids]


def report(kind: str, tasks: list[dict]) -> None:
    work = [t["end_time"] - t["running_since"] for t in tasks]
    wall = [t["end_time"] - t["start_time"] for t in tasks]
    fps = [t["frames"] / w for t, w in zip(tasks, work)]
    print(f"{kind}: {len(tasks)} tasks of {tasks[0]['frames']} frames; in the worker p50 {statistics.median(work):.1f} s "
          f"({statistics.median(fps):.1f} frames/s); upload->completed p50 {statistics.median(wall):.1f} s, "
          f"max {max(wall):.1f} s")


def landmark_pass(data_dir: Path, avatar_id: str) -> None:
    """Copy a prepared avatar into LiveTalking's wav2lip layout and time the lite landmark pass."""
    import pickle

    import cv2

    from avatars.store import AvatarStore, load_avatar
    from avatars.livetalking import with_landmarks

    source = load_avatar(data_dir / "avatars" / avatar_id)
    folder = data_dir / "avatars" / "lt_bench"
    (folder / "full_imgs").mkdir(parents=True)
    (folder / "face_imgs").mkdir()
    for index, frame in enumerate(source.frames):
        cv2.imwrite(str(folder / "full_imgs" / f"{index:08d}.png"), frame)
    boxes = [(int(y1), int(y2), int(x1), int(x2)) for x1, y1, x2, y2 in source.face_boxes]
    (folder / "coords.pkl").write_bytes(pickle.dumps(boxes))
    avatar = AvatarStore(data_dir / "avatars").get("lt_bench")
    started = time.monotonic()
    with_landmarks(avatar)
    first = time.monotonic() - started
    started = time.monotonic()
    with_landmarks(avatar)
    cached = time.monotonic() - started
    print(f"LiveTalking folder, lite landmarks: {avatar.frame_count} frames {avatar.size[0]}x{avatar.size[1]} in "
          f"{first:.1f} s ({avatar.frame_count / first:.1f} frames/s) the first time; {cached * 1000:.0f} ms from the cache")


async def main(args: argparse.Namespace) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        data_dir = Path(tmp)
        (data_dir / "avatars").mkdir()
        application, runner, url = await start_server(
            "--data-dir", str(data_dir), "--model", "lite", "--tts", "espeak", "--avatar-upload-mb", "50",
            "--avatar-max-seconds", "10")
        try:
            photo, video = astronaut_jpeg(PHOTO_SIDE), astronaut_mp4(VIDEO_SECONDS, PHOTO_SIDE)
            async with aiohttp.ClientSession() as http:
                photo_ids = [await submit(http, url, photo, "p.jpg", f"photo{i}") for i in range(args.tasks)]
                video_ids = [await submit(http, url, video, "v.mp4", f"video{i}") for i in range(args.tasks)]
                tasks = await wait_all(http, url, photo_ids + video_ids)
        finally:
            await runner.cleanup()
        report("photo", tasks[: args.tasks])
        report("video", tasks[args.tasks:])
        landmark_pass(data_dir, "video0")


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--tasks", type=int, default=3, help="photo tasks and video tasks each")
    asyncio.run(main(parser.parse_args()))
