"""Measuring speech in audio received by a loopback client."""

from __future__ import annotations

import asyncio
import json
import time

import numpy as np

from tests.support.rtc_client import Received, ReceiverClient

VOICED_LEVEL = 300  # int16 peak above which a received 20 ms frame counts as speech


def is_voiced(frame: Received) -> bool:
    return int(np.abs(frame.data.astype(np.int32)).max()) > VOICED_LEVEL


def voiced_frames(frames: list[Received]) -> list[Received]:
    return [f for f in frames if is_voiced(f)]


async def post(http, url: str, body: dict) -> tuple[int, dict]:
    async with http.post(url, json=body) as response:
        return response.status, await response.json()


async def wait_voiced(client: ReceiverClient, since: int, timeout: float = 10.0) -> Received:
    """The first voiced audio frame received at index >= since."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        for frame in client.audio[since:]:
            if is_voiced(frame):
                return frame
        await asyncio.sleep(0.01)
    raise TimeoutError("no speech received")


async def wait_silent(client: ReceiverClient, quiet_s: float, timeout: float = 20.0) -> None:
    """Wait until the last `quiet_s` seconds of received audio had no speech."""
    frames_needed = int(quiet_s / 0.02)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        tail = client.audio[-frames_needed:]
        if len(tail) == frames_needed and not voiced_frames(tail):
            return
        await asyncio.sleep(0.05)
    raise TimeoutError("speech did not stop")


def channel_events(client: ReceiverClient) -> list[dict]:
    return [json.loads(message) for message in client.channel_messages]
