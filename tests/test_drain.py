"""Health, readiness and the SIGTERM drain of a real server process, with real aiortc peers."""

from __future__ import annotations

import asyncio
import json
import time

import pytest

from tests.support.rtc_client import ReceiverClient
from tests.support.worker_process import WorkerProcess

DRAIN_TIMEOUT_S = 4.0


async def get(http, url: str) -> tuple[int, dict]:
    async with http.get(url) as response:
        return response.status, await response.json()


async def wait_until(predicate, timeout: float = 10.0, what: str = "condition") -> None:
    deadline = time.monotonic() + timeout
    while not await predicate():
        if time.monotonic() > deadline:
            raise TimeoutError(f"{what} not reached within {timeout:.0f} s")
        await asyncio.sleep(0.05)


def events(client: ReceiverClient) -> list[dict]:
    return [json.loads(m) for m in client.channel_messages]


@pytest.fixture
async def worker(data_dir, tmp_path, http):
    process = WorkerProcess(data_dir, tmp_path / "server.log", "--max_session", "2",
                            "--drain-timeout", str(DRAIN_TIMEOUT_S))
    try:
        yield await process.start(http)
    finally:
        process.kill()


async def connect(url: str, http) -> ReceiverClient:
    client = ReceiverClient(url, keep_video=False)
    await client.connect(http, data_channel=True)
    await client.wait_for(video_frames=5, audio_frames=10)
    return client


async def test_readiness_follows_the_session_limit_and_drain_closes_with_a_reason(worker, http):
    status, body = await get(http, f"{worker.url}/readyz")
    assert status == 200 and body["limit"] == 2, body
    first = await connect(worker.url, http)
    second = await connect(worker.url, http)
    try:
        status, body = await get(http, f"{worker.url}/readyz")
        assert status == 503 and "session limit" in body["msg"], body
        await second.close()

        async def ready() -> bool:
            return (await get(http, f"{worker.url}/readyz"))[0] == 200
        await wait_until(ready, what="ready again after a session left")

        worker.signal()
        async def draining() -> bool:
            return any(e["type"] == "draining" for e in events(first))
        await wait_until(draining, what="the draining event")
        signalled = time.monotonic()
        status, body = await get(http, f"{worker.url}/readyz")
        assert status == 503 and "draining" in body["msg"], body
        assert (await get(http, f"{worker.url}/healthz"))[0] == 200
        late = ReceiverClient(worker.url)
        late.pc.addTransceiver("video", direction="recvonly")
        await late.pc.setLocalDescription(await late.pc.createOffer())
        async with http.post(f"{worker.url}/offer", json={"sdp": late.pc.localDescription.sdp, "type": "offer"}) as r:
            assert r.status == 503 and "another worker" in (await r.json())["msg"]
        await late.pc.close()

        frames = len(first.video)
        await first.wait_for(video_frames=frames + 25, timeout=DRAIN_TIMEOUT_S)  # still streaming while draining
        assert await worker.wait_exit(DRAIN_TIMEOUT_S + 15) == 0
        assert time.monotonic() - signalled >= DRAIN_TIMEOUT_S - 0.5  # the session was given its time
        closed = [e for e in events(first) if e["type"] == "closed"]
        assert closed and "drain timeout" in closed[0]["reason"], events(first)
        assert "drained and stopped" in worker.log()
    finally:
        await first.close()
        await second.close()


async def test_drain_ends_early_when_the_last_session_leaves(data_dir, tmp_path, http):
    process = WorkerProcess(data_dir, tmp_path / "server.log", "--drain-timeout", "120")
    try:
        await process.start(http)
        client = await connect(process.url, http)
        process.signal()
        await asyncio.sleep(0.5)
        assert process.proc.poll() is None, "exited without waiting for the session"
        await client.close()
        assert await process.wait_exit(30) == 0
    finally:
        process.kill()
