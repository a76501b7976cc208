"""`GET /api/asr`: FunASR's websocket client protocol, answered by this server's own ASR worker.

LiveTalking's ASR page speaks it: a JSON message `{"is_speaking": true, "mode": ...,
"wav_name": ...}` opens an utterance, binary messages carry 16 kHz mono PCM16, and
`{"is_speaking": false}` closes it; the server answers one final result per utterance,
`{"mode", "wav_name", "text", "is_final": true}`. An utterance is capped at the ASR's
30 s window (the rest is ignored), and the socket's messages are bounded in bytes.

The reply's mode is FunASR's: a "2pass" client's final result is "2pass-offline" (its
partials would be "2pass-online"); LiveTalking's ASR page forwards to /human only
results whose mode is "2pass-offline" or "offline". Like LiveTalking's own /api/asr,
no partial results are sent: the text comes once, when the utterance closes.
"""

from __future__ import annotations

import asyncio
import json
import logging
from typing import TYPE_CHECKING, Callable

import numpy as np
from aiohttp import WSMsgType, web

from listen.asr import ASRBusy
from listen.settings import MAX_UTTERANCE_S
from media import SAMPLE_RATE

if TYPE_CHECKING:
    from listen.asr import ASRWorker

logger = logging.getLogger(__name__)

MAX_MESSAGE_BYTES = 256 * 1024
MAX_UTTERANCE_BYTES = int(MAX_UTTERANCE_S * SAMPLE_RATE) * 2
TRANSCRIBE_TIMEOUT_S = 60.0
HEARTBEAT_S = 30.0
S16_SCALE = 32768.0


class Utterance:
    """The PCM of one `is_speaking` span, bounded by the ASR window."""

    def __init__(self, mode: str, wav_name: str):
        self.mode = mode
        self.wav_name = wav_name
        self._pcm = bytearray()

    def add(self, data: bytes) -> None:
        room = MAX_UTTERANCE_BYTES - len(self._pcm)
        if room > 0:
            self._pcm += data[:room]

    def audio(self) -> np.ndarray:
        usable = len(self._pcm) - len(self._pcm) % 2
        return np.frombuffer(bytes(self._pcm[:usable]), "<i2").astype(np.float32) / S16_SCALE


TWO_PASS_MODES = {"2pass": "2pass-offline"}  # FunASR: a 2pass client's final result (its partials: "2pass-online")


def final_mode(client_mode: str) -> str:
    """The mode a final result carries, as FunASR's server names it for the mode the client asked for."""
    return TWO_PASS_MODES.get(client_mode, client_mode)


def text_field(config: dict, key: str, default: str) -> str:
    value = config.get(key, default)
    return value[:64] if isinstance(value, str) else default


async def transcribe(asr_worker: Callable[[], "ASRWorker"], audio: np.ndarray) -> str:
    loop = asyncio.get_running_loop()
    done: asyncio.Future[str] = loop.create_future()

    def settle(result: str, failed: bool) -> None:
        if done.done():
            return
        if failed:
            done.set_exception(RuntimeError(result))
        else:
            done.set_result(result)

    asr_worker().submit(audio, lambda text: loop.call_soon_threadsafe(settle, text, False),
                                lambda message: loop.call_soon_threadsafe(settle, message, True))
    return await asyncio.wait_for(done, TRANSCRIBE_TIMEOUT_S)


async def funasr_socket(request: web.Request, asr_worker: Callable[[], "ASRWorker"]) -> web.WebSocketResponse:
    socket = web.WebSocketResponse(max_msg_size=MAX_MESSAGE_BYTES, heartbeat=HEARTBEAT_S)
    await socket.prepare(request)
    utterance: Utterance | None = None
    async for message in socket:
        if message.type == WSMsgType.BINARY:
            if utterance is not None:
                utterance.add(message.data)
            continue
        if message.type != WSMsgType.TEXT:
            break
        try:
            config = json.loads(message.data)
        except (ValueError, RecursionError):
            config = None
        if not isinstance(config, dict) or not isinstance(config.get("is_speaking", True), bool):
            await socket.send_json({"error": "send JSON like {\"is_speaking\": true, \"mode\": \"offline\"}"})
            continue
        if config.get("is_speaking", True):
            utterance = Utterance(text_field(config, "mode", "offline"), text_field(config, "wav_name", "asr"))
            continue
        if utterance is None:
            continue
        finished, utterance = utterance, None
        reply = {"mode": final_mode(finished.mode), "wav_name": finished.wav_name, "is_final": True,
                 "text": ""}
        audio = finished.audio()
        if audio.size:
            try:
                reply["text"] = await transcribe(asr_worker, audio)
            except (ASRBusy, RuntimeError, asyncio.TimeoutError) as exc:
                reply["error"] = str(exc) or "speech recognition timed out"
        await socket.send_json(reply)
    return socket


def register(app: web.Application, asr_worker: Callable[[], "ASRWorker"]) -> None:
    async def handler(request: web.Request) -> web.WebSocketResponse:
        return await funasr_socket(request, asr_worker)

    app.router.add_get("/api/asr", handler)
