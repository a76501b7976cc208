"""Network TTS backends against local services on 127.0.0.1: streaming, cancel, errors."""

from __future__ import annotations

import asyncio
import socket
import time

import edge_tts.communicate
import numpy as np
import pytest

from media import SAMPLE_RATE
from tests.support.tts_servers import (
    EDGE_RATE,
    PCM_RATE,
    FakeEdgeService,
    FakeSpeechServer,
    encode_mp3,
    pcm_s16,
    pieces,
    sine,
)
from tts.base import TTSError
from tts.edge import EdgeTTS, Mp3Decoder, reachable
from tts.openai_speech import OpenAISpeechTTS

WAIT = 5.0


@pytest.fixture(autouse=True)
def no_proxy_for_loopback(monkeypatch):
    """The clients honour *_PROXY variables; loopback must never go through one."""
    monkeypatch.setenv("NO_PROXY", "127.0.0.1")


def closed_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def consume(backend, text: str, cancel_after_first: bool = False) -> tuple[list[tuple[float, np.ndarray]], float]:
    """Runs `stream` as the TTS thread would; returns (arrival time, audio) pairs and the end time."""
    got: list[tuple[float, np.ndarray]] = []
    for audio in backend.stream(text, lambda: cancel_after_first and bool(got)):
        assert audio.dtype == np.float32 and audio.ndim == 1
        got.append((time.monotonic(), audio))
    return got, time.monotonic()


def peak_hz(audio: np.ndarray) -> float:
    spectrum = np.abs(np.fft.rfft(audio * np.hanning(len(audio))))
    return float(np.argmax(spectrum) * SAMPLE_RATE / len(audio))


def test_mp3_decoder_yields_audio_per_piece_and_all_of_it():
    mp3 = encode_mp3(sine(1.0, EDGE_RATE))
    decoder = Mp3Decoder()
    outputs = [decoder.push(piece) for piece in pieces(mp3, 700)]
    assert outputs[0].size > 0  # the first piece already plays
    audio = np.concatenate(outputs + [decoder.flush()])
    assert abs(len(audio) - SAMPLE_RATE) < 0.1 * SAMPLE_RATE  # one second, give or take encoder padding
    assert abs(peak_hz(audio) - 440) < 5


# ---- edge-tts ----

@pytest.fixture
async def edge_service(monkeypatch):
    services = []

    async def start(**options) -> FakeEdgeService:
        service = FakeEdgeService(encode_mp3(sine(options.pop("seconds", 1.0), EDGE_RATE)), **options)
        await service.start()
        monkeypatch.setattr(edge_tts.communicate, "WSS_URL", service.url)
        services.append(service)
        return service

    yield start
    for service in services:
        await service.close()


async def test_edge_streams_audio_while_the_mp3_still_arrives(edge_service):
    service = await edge_service(delay=0.1)
    got, _ = await asyncio.to_thread(consume, EdgeTTS(voice="en-US-GuyNeural"), "Hello world")
    assert service.log.finished is not None
    assert got[0][0] < service.log.finished  # first audio before the service sent the last piece
    audio = np.concatenate([a for _, a in got])
    assert abs(len(audio) - SAMPLE_RATE) < 0.1 * SAMPLE_RATE
    assert abs(peak_hz(audio) - 440) < 5
    ssml = service.log.requests[1]
    assert "Hello world" in ssml and "(en-US, GuyNeural)" in ssml


async def test_edge_stops_and_hangs_up_when_cancelled(edge_service):
    service = await edge_service(seconds=3.0, delay=0.1)
    got, _ = await asyncio.to_thread(consume, EdgeTTS(), "Hello world", True)
    assert len(got) == 1
    await asyncio.wait_for(service.log.hung_up.wait(), WAIT)
    assert service.log.finished is None


async def test_edge_notices_a_cancel_while_waiting_for_the_service(edge_service):
    service = await edge_service(seconds=3.0, delay=1.0)
    cancelled = lambda: len(service.log.requests) == 2  # the request is in; its first audio is 1 s away
    got = await asyncio.to_thread(lambda: list(EdgeTTS().stream("Hello", cancelled)))
    assert got == [] and service.log.sent_pieces == 0  # returned during the wait
    await asyncio.wait_for(service.log.hung_up.wait(), WAIT)


async def test_edge_through_an_unreachable_proxy_fails_fast_and_clearly():
    tts = EdgeTTS(proxy=f"http://127.0.0.1:{closed_port()}")
    started = time.monotonic()
    with pytest.raises(TTSError) as caught:
        await asyncio.to_thread(consume, tts, "Hello")
    assert time.monotonic() - started < tts.connect_timeout  # refused at once, no waiting for a timeout
    message = str(caught.value)
    assert "could not reach the Microsoft service" in message and "--tts espeak" in message


async def test_edge_service_refusal_and_missing_audio_are_reported(edge_service):
    await edge_service(mode="reject")
    with pytest.raises(TTSError, match=r"refused edge-tts \(HTTP 503\)"):
        await asyncio.to_thread(consume, EdgeTTS(), "Hello")
    await edge_service(mode="no_audio")
    with pytest.raises(TTSError, match="no audio for voice 'en-US-AriaNeural'.*--list-voices"):
        await asyncio.to_thread(consume, EdgeTTS(), "Hello")


async def test_reachable_probes_the_service(edge_service):
    await edge_service()
    assert await asyncio.to_thread(reachable, 2.0)
    await edge_service(mode="reject")
    assert not await asyncio.to_thread(reachable, 2.0)
    await edge_service(delay=10)
    assert not await asyncio.to_thread(reachable, 0.3)  # no audio in time


# ---- OpenAI-compatible /v1/audio/speech ----

@pytest.fixture
async def speech_server():
    servers = []

    async def start(seconds: float = 1.0, **options) -> FakeSpeechServer:
        server = FakeSpeechServer(pcm_s16(sine(seconds, PCM_RATE)), **options)
        await server.start()
        servers.append(server)
        return server

    yield start
    for server in servers:
        await server.close()


async def test_speech_streams_pcm_as_it_arrives(speech_server):
    server = await speech_server(delay=0.05)
    tts = OpenAISpeechTTS(server.base_url, model="tts-test", voice="nova", api_key="sk-test", max_retries=0)
    got, _ = await asyncio.to_thread(consume, tts, "Hello there")
    tts.close()
    assert got[0][0] < server.log.finished  # first audio before the server sent the last piece
    assert len(got) > 3
    audio = np.concatenate([a for _, a in got])
    assert abs(len(audio) - SAMPLE_RATE) < 0.02 * SAMPLE_RATE
    assert abs(peak_hz(audio) - 440) < 5
    assert server.log.requests == [
        {"model": "tts-test", "voice": "nova", "input": "Hello there", "response_format": "pcm"}
    ]


async def test_speech_cancel_closes_the_connection(speech_server):
    server = await speech_server(seconds=3.0, delay=0.1)
    tts = OpenAISpeechTTS(server.base_url, api_key="sk-test", max_retries=0)
    got, _ = await asyncio.to_thread(consume, tts, "Hello", True)
    tts.close()
    assert len(got) == 1
    await asyncio.wait_for(server.log.hung_up.wait(), WAIT)
    assert server.log.finished is None


@pytest.mark.parametrize(
    "status,words", [(401, r"rejected the API key \(401\): set OPENAI_API_KEY"), (500, r"failed \(500\)")]
)
async def test_speech_http_errors_become_tts_errors(speech_server, status, words):
    server = await speech_server(status=status)
    tts = OpenAISpeechTTS(server.base_url, api_key="sk-test", max_retries=0)
    with pytest.raises(TTSError, match=words):
        await asyncio.to_thread(consume, tts, "Hello")
    tts.close()
    assert len(server.log.requests) == 1


async def test_speech_unreachable_server_is_reported():
    tts = OpenAISpeechTTS(f"http://127.0.0.1:{closed_port()}/v1", api_key="sk-test", max_retries=0)
    with pytest.raises(TTSError, match="could not reach .*check the TTS URL"):
        await asyncio.to_thread(consume, tts, "Hello")
    tts.close()
