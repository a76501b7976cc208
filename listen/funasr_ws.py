"""`GET /api/asr`: FunASR's websocket client protocol, answered by this server's own ASR worker.

LiveTalking's ASR page speaks it: a JSON message `{"is_speaking": true, "mode": ...,
"wav_name": ...}` opens an utterance, binary messages carry 16 kHz mono PCM16, and
`{"is_speaking": false}` closes it; the server answers one final result per utterance,
`{"mode", "wav_name", "text", "is_final": true}`. An utterance is capped at the ASR's
30 s window (the rest is ignored), and the socket's messages are bounded in bytes.
Sockets are capped (in all and per client address; more are answered 429), one that
sends nothing for `IDLE_TIMEOUT_S` is closed, and each socket is one source of the
recogniser's fair queue: it waits its turn beside the WebRTC sessions, and what it has
waiting is withdrawn when it closes.

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

from httpapi import BadRequest
from listen.asr import ASRBusy
from listen.settings import MAX_UTTERANCE_S
from media import SAMPLE_RATE

if TYPE_CHECKING:
    from listen.asr import ASRWorker

logger = logging.getLogger(__name__)

MAX_MESSAGE_BYTES = 256 * 1024
MAX_UTTERANCE_BYTES = int(MAX_UTTERANCE_S * SAMPLE_RATE) * 2
TRANSCRIBE_TIMEOUT_S = 60.0
HANG_UP_CHECK_S = 0.25  # while an utterance waits for its text, how often the connection is checked
HEARTBEAT_S = 30.0
IDLE_TIMEOUT_S = 30.0  # no message (data or control) for this long: the socket is closed
MAX_SOCKETS = 32
MAX_SOCKETS_PER_ADDRESS = 4
IDLE_CLOSE_CODE = 4000  # application-defined close code: closed for idling
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


async def transcribe(asr_worker: "ASRWorker", audio: np.ndarray, source: object,
                     gone: Callable[[], bool]) -> str:
    """The text of `audio`; withdrawn from the recogniser when the deadline passes or the client hangs up."""
    loop = asyncio.get_running_loop()
    done: asyncio.Future[str] = loop.create_future()

    def settle(result: str, failed: bool) -> None:
        if done.done():
            return
        if failed:
            done.set_exception(RuntimeError(result))
        else:
            done.set_result(result)

    ticket = asr_worker.submit(audio, lambda transcript: loop.call_soon_threadsafe(settle, transcript.text, False),
                               lambda message: loop.call_soon_threadsafe(settle, message, True), source=source,
                               group="socket")
    deadline = loop.time() + TRANSCRIBE_TIMEOUT_S
    try:
        while True:
            try:
                return await asyncio.wait_for(asyncio.shield(done), HANG_UP_CHECK_S)
            except asyncio.TimeoutError:
                if gone():
                    raise ConnectionResetError("the client hung up") from None
                if loop.time() >= deadline:
                    raise
    finally:
        asr_worker.cancel(ticket)  # timed out or the client went away: nobody waits for it any more


class SocketLimits:
    """The server's open /api/asr sockets, counted in all and per client address."""

    def __init__(self, total: int = MAX_SOCKETS, per_address: int = MAX_SOCKETS_PER_ADDRESS):
        self.total = total
        self.per_address = per_address
        self.open: dict[str, int] = {}

    def admit(self, address: str) -> None:
        if sum(self.open.values()) >= self.total:
            raise BadRequest(f"{self.total} speech sockets are open: try again when one closes", status=429)
        if self.open.get(address, 0) >= self.per_address:
            raise BadRequest(f"{self.per_address} speech sockets are open from this address: close one first",
                             status=429)
        self.open[address] = self.open.get(address, 0) + 1

    def release(self, address: str) -> None:
        left = self.open.get(address, 0) - 1
        if left > 0:
            self.open[address] = left
        else:
            self.open.pop(address, None)


async def receive(socket: web.WebSocketResponse):
    """The next message, or None when the client sent nothing (not even a pong) for IDLE_TIMEOUT_S."""
    try:
        async with asyncio.timeout(IDLE_TIMEOUT_S):
            return await socket.receive()
    except TimeoutError:
        return None


async def funasr_socket(request: web.Request, asr_worker: Callable[[], "ASRWorker"]) -> web.WebSocketResponse:
    socket = web.WebSocketResponse(max_msg_size=MAX_MESSAGE_BYTES, heartbeat=HEARTBEAT_S)
    await socket.prepare(request)
    worker = asr_worker()

    def gone() -> bool:
        return request.transport is None or request.transport.is_closing()

    try:
        await serve(socket, worker, gone)
    except ConnectionResetError:
        logger.debug("/api/asr: the client hung up while its utterance was transcribed")
    finally:
        worker.cancel_source(socket)
    return socket


async def serve(socket: web.WebSocketResponse, worker: "ASRWorker", gone: Callable[[], bool]) -> None:
    utterance: Utterance | None = None
    while True:
        message = await receive(socket)
        if message is None:
            await socket.close(code=IDLE_CLOSE_CODE, message=b"idle")
            return
        if message.type == WSMsgType.BINARY:
            if utterance is not None:
                utterance.add(message.data)
            continue
        if message.type != WSMsgType.TEXT:
            return
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
                reply["text"] = await transcribe(worker, audio, socket, gone)
            except (ASRBusy, RuntimeError, asyncio.TimeoutError) as exc:
                reply["error"] = str(exc) or "speech recognition timed out"
        await socket.send_json(reply)


def register(app: web.Application, asr_worker: Callable[[], "ASRWorker"]) -> None:
    limits = SocketLimits()

    async def handler(request: web.Request) -> web.WebSocketResponse:
        address = request.remote or "?"
        limits.admit(address)
        try:
            return await funasr_socket(request, asr_worker)
        finally:
            limits.release(address)

    app.router.add_get("/api/asr", handler)
