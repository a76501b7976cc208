"""Listening end to end: an aiortc client speaks espeak-ng sentences into its microphone track."""

from __future__ import annotations

import asyncio
import time

import pytest

from tests.conftest import server_args, start_server
from tests.rtc_client import ReceiverClient
from tests.speech_helpers import channel_events, post, wait_voiced
from tests.speech_sender import SpeechTrack, speak, word_error_rate

SENTENCES = [
    "Please tell me the weather for tomorrow morning.",
    "I would like to visit the museum on Sunday.",
    "The train leaves the station at seven o'clock.",
]


@pytest.fixture
async def listen_server(data_dir):
    running = await start_server(server_args(data_dir, "--max_session", "3"))
    yield running
    await running.runner.cleanup()


async def talking_client(url: str, http, track: SpeechTrack, listen: str | None = None, **options) -> ReceiverClient:
    receiver = ReceiverClient(url, keep_video=False)
    await receiver.connect(http, data_channel=True, uplink=track, listen=listen, **options)
    await receiver.wait_for(video_frames=5, audio_frames=10)
    return receiver


async def wait_events(client: ReceiverClient, predicate, count: int = 1, timeout: float = 15.0) -> list[dict]:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        found = [e for e in channel_events(client) if predicate(e)]
        if len(found) >= count:
            return found
        await asyncio.sleep(0.02)
    raise TimeoutError(f"{count} such events not seen in {channel_events(client)}")


def kinds(client: ReceiverClient) -> list[str]:
    return [e["type"] for e in channel_events(client)]


async def test_echo_transcribes_speech_and_speaks_it_back(listen_server, http):
    track = SpeechTrack()
    client = await talking_client(listen_server.url, http, track, listen="echo")
    try:
        transcripts = []
        for index, sentence in enumerate(SENTENCES):
            track.play(speak(sentence))
            found = await wait_events(client, lambda e: e["type"] == "transcript", count=index + 1, timeout=20)
            transcripts.append(found[-1]["text"])
            await wait_events(client, lambda e: e["type"] == "end", count=index + 1, timeout=20)
        wer = word_error_rate(" ".join(SENTENCES), " ".join(transcripts))
        assert wer <= 0.25, (wer, transcripts)
        assert all(e["final"] for e in channel_events(client) if e["type"] == "transcript")
        sequence = [k for k in kinds(client) if k in ("user_start", "user_end", "transcript", "start", "end")]
        assert sequence == ["user_start", "user_end", "transcript", "start", "end"] * len(SENTENCES), sequence
        spoken = [e["text"] for e in channel_events(client) if e["type"] == "start"]
        assert spoken == transcripts
    finally:
        await client.close()
