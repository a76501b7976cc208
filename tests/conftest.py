"""Shared fixtures: loopback-only ICE, a small test avatar and a live server."""

from __future__ import annotations

import socket
from pathlib import Path

import aiohttp
import aioice.ice
import cv2
import numpy as np
import pytest
from aiohttp import web

import app as server_app
from avatars.prepare import PrepareOptions, build_avatar, default_photo, write_avatar
from server.context import ServerContext

TEST_AVATAR_ID = "testface"
TEST_AVATAR_SIZE = 160
TEST_AVATAR_FRAMES = 6
PHOTO_AVATAR_ID = "testphoto"  # the astronaut, small, with face data (lite lip movement)
PHOTO_AVATAR_SIZE = 320


@pytest.fixture(autouse=True)
def loopback_ice(monkeypatch):
    """aioice skips 127.0.0.1 by default; tests must gather on loopback only."""
    monkeypatch.setattr(aioice.ice, "get_host_addresses", lambda use_ipv4, use_ipv6: ["127.0.0.1"])


def synthetic_frames(count: int = TEST_AVATAR_FRAMES, size: int = TEST_AVATAR_SIZE) -> list[np.ndarray]:
    """Distinct frames (a bar that moves) so idle playback order is observable."""
    frames = []
    for index in range(count):
        frame = np.full((size, size, 3), 90, np.uint8)
        cv2.circle(frame, (size // 2, size // 2), size // 3, (150, 170, 200), -1)
        x = 10 + index * (size - 30) // max(count - 1, 1)
        cv2.rectangle(frame, (x, 5), (x + 10, 25), (255, 255, 255), -1)
        frames.append(frame)
    return frames


@pytest.fixture(scope="session")
def data_dir(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("data")
    write_avatar(root / "avatars" / TEST_AVATAR_ID, synthetic_frames(), {"source": "synthetic", "fps": 25})
    photo = cv2.resize(default_photo(), (PHOTO_AVATAR_SIZE, PHOTO_AVATAR_SIZE), interpolation=cv2.INTER_AREA)
    build_avatar(root / "avatars" / PHOTO_AVATAR_ID, PrepareOptions(loop_seconds=1.0), image=photo, source="astronaut")
    return root


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def server_args(data_dir: Path, *extra: str):
    return server_app.build_parser().parse_args(
        ["--data-dir", str(data_dir), "--avatar_id", TEST_AVATAR_ID, "--model", "lite", "--tts", "espeak",
         "--models-dir", str(data_dir / "no-models"), *extra]
    )


class RunningServer:
    def __init__(self, application: web.Application, runner: web.AppRunner, url: str):
        self.app = application
        self.runner = runner
        self.url = url

    @property
    def context(self) -> ServerContext:
        return self.app[server_app.CONTEXT_KEY]


async def start_server(args) -> RunningServer:
    application = server_app.create_app(args)
    runner = web.AppRunner(application)
    await runner.setup()
    port = free_port()
    await web.TCPSite(runner, "127.0.0.1", port).start()
    return RunningServer(application, runner, f"http://127.0.0.1:{port}")


@pytest.fixture
async def server(data_dir):
    running = await start_server(server_args(data_dir, "--max_session", "3"))
    yield running
    await running.runner.cleanup()


ASTRONAUT_LOOP_SECONDS = 2.0


@pytest.fixture(scope="session")
def landmarker():
    from avatars.facegeom import FaceLandmarker

    return FaceLandmarker()


@pytest.fixture(scope="session")
def astronaut_build(tmp_path_factory, landmarker):
    """The bundled photo prepared at full size (512 px, a 2 s idle loop): (report, avatar)."""
    from avatars.store import load_avatar
    from avatars.prepare import PrepareOptions, build_avatar, default_photo

    folder = tmp_path_factory.mktemp("astro") / "astro"
    report = build_avatar(folder, PrepareOptions(loop_seconds=ASTRONAUT_LOOP_SECONDS), image=default_photo(),
                          source="astronaut", landmarker=landmarker)
    return report, load_avatar(folder)


@pytest.fixture
async def llm_server():
    """A scripted OpenAI-compatible chat server on 127.0.0.1."""
    from tests.support.llm_server import FakeLLMServer

    server = FakeLLMServer()
    await server.start()
    yield server
    await server.close()


async def connected_client(url: str, http):
    """A loopback receiver with a data channel, already receiving the stream."""
    from tests.support.rtc_client import ReceiverClient

    receiver = ReceiverClient(url, keep_video=False)
    await receiver.connect(http, data_channel=True)
    await receiver.wait_for(video_frames=5, audio_frames=10)
    return receiver


@pytest.fixture
async def http():
    async with aiohttp.ClientSession() as session:
        yield session
