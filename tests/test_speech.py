"""The speech path through a live session: echo, playout events, interrupt, uploads."""

from __future__ import annotations

import asyncio
import io
import time
import wave

import aiohttp
import av
import numpy as np
import pytest

from tests.conftest import connected_client
from tests.support.speech_helpers import channel_events, post, voiced_frames, wait_silent, wait_voiced
from tts.espeak import EspeakLibrary, EspeakTTS

SENTENCE = "The quick brown fox jumps over the lazy dog"
LONG_TEXT = " ".join(["This is a long sentence that keeps the avatar talking for a while."] * 8)


@pytest.fixture
async def client(server, http):
    receiver = await connected_client(server.url, http)
    yield receiver
    await receiver.close()


def voiced_span_seconds(samples: np.ndarray, rate: int, level: int) -> float:
    loud = np.flatnonzero(np.abs(samples.astype(np.int32)) > level)
    return (loud[-1] - loud[0]) / rate


async def test_echo_is_heard_with_the_synthesized_duration_and_events_in_order(server, http, client):
    expected = np.concatenate(list(EspeakTTS(EspeakLibrary.shared()).stream(SENTENCE, lambda: False)))
    expected_span = voiced_span_seconds((expected * 32767).astype(np.int16), 16000, 1500)

    since = len(client.audio)
    status, body = await post(http, f"{server.url}/human", {"sessionid": client.sessionid, "text": SENTENCE, "type": "echo"})
    assert status == 200 and body["code"] == 0
    await wait_voiced(client, since)
    status, body = await post(http, f"{server.url}/is_speaking", {"sessionid": client.sessionid})
    assert body == {"code": 0, "msg": "ok", "data": True}
    await wait_silent(client, quiet_s=0.6)
    status, body = await post(http, f"{server.url}/is_speaking", {"sessionid": client.sessionid})
    assert body == {"code": 0, "msg": "ok", "data": False}

    received = np.concatenate([f.data for f in client.audio[since:]])
    received_span = voiced_span_seconds(received, 48000, 1500)
    assert abs(received_span - expected_span) <= 0.04, (received_span, expected_span)

    kinds = [(e["type"], e["utterance"]) for e in channel_events(client) if e["type"] in ("start", "end")]
    assert [k for k, _ in kinds] == ["start", "end"]
    assert kinds[0][1] == kinds[1][1] == body_utterance if (body_utterance := kinds[0][1]) else False


async def test_interrupt_silences_at_once_and_the_session_speaks_again(server, http, client):
    since = len(client.audio)
    await post(http, f"{server.url}/human", {"sessionid": client.sessionid, "text": LONG_TEXT, "type": "echo"})
    await wait_voiced(client, since)
    await asyncio.sleep(1.0)
    status, body = await post(http, f"{server.url}/interrupt_talk", {"sessionid": client.sessionid})
    assert status == 200 and body["code"] == 0
    interrupted_at = time.monotonic()
    await asyncio.sleep(2.0)
    checked_at = time.monotonic()
    after = [f for f in client.audio if f.arrival > interrupted_at + 0.3]
    # The stream goes on (a loaded machine may skip ticks ahead, so count arrivals, not frames):
    # frames keep arriving until the end of the wait, without a long hole.
    arrivals = [interrupted_at + 0.3] + [f.arrival for f in after]
    assert checked_at - arrivals[-1] < 0.5, "the stream stopped instead of sending silence"
    assert max(b - a for a, b in zip(arrivals, arrivals[1:])) < 0.8, "the stream paused after the interrupt"
    assert not voiced_frames(after), "speech of the interrupted utterance kept arriving"
    events = channel_events(client)
    assert events[-1]["type"] == "end" and events[-1]["interrupted"] is True

    since = len(client.audio)
    status, _ = await post(http, f"{server.url}/human", {"sessionid": client.sessionid, "text": "Hello again.", "type": "echo"})
    assert status == 200
    await wait_voiced(client, since)


async def test_human_with_interrupt_flag_replaces_current_speech(server, http, client):
    since = len(client.audio)
    await post(http, f"{server.url}/human", {"sessionid": client.sessionid, "text": LONG_TEXT, "type": "echo"})
    await wait_voiced(client, since)
    status, body = await post(http, f"{server.url}/human",
                              {"sessionid": client.sessionid, "text": "Stop.", "type": "echo", "interrupt": True})
    assert status == 200
    await wait_silent(client, quiet_s=0.6, timeout=5.0)
    starts = [e for e in channel_events(client) if e["type"] == "start"]
    assert starts[-1]["text"] == "Stop."


def tone(seconds: float, rate: int) -> np.ndarray:
    t = np.arange(int(seconds * rate)) / rate
    return (0.4 * np.sin(2 * np.pi * 220 * t) * (1 + np.sin(2 * np.pi * 3 * t)) / 2).astype(np.float32)


def wav_bytes(seconds: float = 1.0, rate: int = 22050) -> bytes:
    buffer = io.BytesIO()
    with wave.open(buffer, "wb") as out:
        out.setnchannels(1)
        out.setsampwidth(2)
        out.setframerate(rate)
        out.writeframes((tone(seconds, rate) * 32767).astype(np.int16).tobytes())
    return buffer.getvalue()


def encoded_bytes(container_format: str, codec: str, seconds: float = 1.0, rate: int = 44100) -> bytes:
    buffer = io.BytesIO()
    with av.open(buffer, "w", format=container_format) as container:
        stream = container.add_stream(codec, rate=rate, layout="mono")
        samples = tone(seconds, rate)
        frame_size = 1152
        for start in range(0, samples.size, frame_size):
            piece = samples[start:start + frame_size]
            frame = av.AudioFrame.from_ndarray(piece.reshape(1, -1), format="flt", layout="mono")
            frame.sample_rate = rate
            frame.pts = start
            for packet in stream.encode(frame):
                container.mux(packet)
        for packet in stream.encode(None):
            container.mux(packet)
    return buffer.getvalue()


async def upload(http, url: str, sessionid: str, data: bytes, filename: str) -> tuple[int, dict]:
    form = aiohttp.FormData()
    form.add_field("sessionid", sessionid)
    form.add_field("file", data, filename=filename, content_type="application/octet-stream")
    async with http.post(f"{url}/humanaudio", data=form) as response:
        return response.status, await response.json()


@pytest.mark.parametrize("kind", ["wav", "mp3", "ogg"])
async def test_humanaudio_plays_uploaded_audio(server, http, client, kind):
    data = {"wav": lambda: wav_bytes(), "mp3": lambda: encoded_bytes("mp3", "mp3"),
            "ogg": lambda: encoded_bytes("ogg", "libopus", rate=48000)}[kind]()
    since = len(client.audio)
    status, body = await upload(http, server.url, client.sessionid, data, f"tone.{kind}")
    assert status == 200, body
    assert 0.9 <= body["data"]["seconds"] <= 1.2
    await wait_voiced(client, since)
    await wait_silent(client, quiet_s=0.5)
    heard = voiced_frames(client.audio[since:])
    assert 0.8 <= len(heard) * 0.02 <= 1.2, f"{len(heard) * 0.02:.2f} s of the 1 s upload heard"
    assert [e["type"] for e in channel_events(client) if e["type"] in ("start", "end")][-2:] == ["start", "end"]


async def test_bad_speech_input_gets_clear_errors_and_the_session_still_speaks(server, http, client):
    url, sid = server.url, client.sessionid
    cases = [
        ({"sessionid": sid, "text": "", "type": "echo"}, 400),
        ({"sessionid": sid, "text": "   ", "type": "echo"}, 400),
        ({"sessionid": sid, "text": "a" * 1_000_000, "type": "echo"}, 413),
        ({"sessionid": "no-such-session", "text": "hi", "type": "echo"}, 404),
        ({"sessionid": sid, "text": "hi", "type": "sing"}, 400),
        ({"sessionid": sid, "text": "hi", "type": "echo", "interrupt": "yes"}, 400),
        ({"sessionid": sid, "text": "hi", "type": "echo", "tts": "no-such-tts"}, 400),
        ({"sessionid": sid, "text": "hi", "type": "echo", "tts": {"backend": "espeak", "voice": "xx-nope"}}, 400),
        ({"sessionid": sid, "text": "🙂 **", "type": "echo"}, 400),
        ({"sessionid": 42, "text": "hi"}, 400),
    ]
    for body, expected in cases:
        status, answer = await post(http, f"{url}/human", body)
        assert status == expected, (body if len(str(body)) < 200 else "1 MB text", status, answer)
        assert answer["code"] == -1 and answer["msg"]
    for path in ("/interrupt_talk", "/is_speaking"):
        status, answer = await post(http, f"{url}{path}", {"sessionid": "nope"})
        assert status == 404 and answer["code"] == -1

    status, answer = await upload(http, url, sid, b"this is not audio at all" * 100, "notes.txt")
    assert status == 415 and "audio" in answer["msg"]
    status, answer = await upload(http, url, sid, b"\0" * (21 * 1024 * 1024), "huge.wav")
    assert status == 413
    status, answer = await upload(http, url, "nope", wav_bytes(0.2), "a.wav")
    assert status == 404

    since = len(client.audio)
    status, _ = await post(http, f"{url}/human", {"sessionid": sid, "text": "Still here.", "type": "echo"})
    assert status == 200
    await wait_voiced(client, since)


async def test_sse_delivers_playout_events(server, http, client):
    received: list[str] = []

    async def listen() -> None:
        async with http.get(f"{server.url}/events", params={"sessionid": client.sessionid}) as response:
            assert response.status == 200
            async for line in response.content:
                if line.startswith(b"data: "):
                    received.append(line[6:].decode().strip())
                    if '"end"' in received[-1]:
                        return

    listener = asyncio.create_task(listen())
    await asyncio.sleep(0.2)
    await post(http, f"{server.url}/human", {"sessionid": client.sessionid, "text": "Hi there.", "type": "echo"})
    await asyncio.wait_for(listener, 10)
    assert ['"start"' in received[0], '"end"' in received[-1]] == [True, True]

    async with http.get(f"{server.url}/events", params={"sessionid": "nope"}) as response:
        assert response.status == 404


async def test_event_streams_per_session_are_limited(server, http, client):
    from session import MAX_SUBSCRIBERS

    streams = []
    try:
        for _ in range(MAX_SUBSCRIBERS):
            response = await http.get(f"{server.url}/events", params={"sessionid": client.sessionid})
            assert response.status == 200
            await response.content.readline()
            streams.append(response)
        async with http.get(f"{server.url}/events", params={"sessionid": client.sessionid}) as extra:
            assert extra.status == 429 and (await extra.json())["code"] == -1
    finally:
        for response in streams:
            response.close()
    await asyncio.sleep(1.2)  # an idle stream notices its listener left within sse.POLL_S
    async with http.get(f"{server.url}/events", params={"sessionid": client.sessionid}) as again:
        assert again.status == 200  # closed streams free their slots
