"""Local stand-ins for network TTS services, on 127.0.0.1, for tests.

`FakeEdgeService` speaks the edge-tts websocket protocol (turn.start, binary
audio messages with a length-prefixed header, turn.end) and streams a real MP3
in pieces; tests point edge-tts at it by replacing its service URL.
`FakeSpeechServer` is an OpenAI-compatible `/v1/audio/speech` streaming raw
24 kHz s16le PCM. Both record requests and whether the client hung up early.
"""

from __future__ import annotations

import asyncio
import io
import time
from dataclasses import dataclass, field

import av
import numpy as np
from aiohttp import web

EDGE_RATE = 24000
PCM_RATE = 24000


def sine(seconds: float, rate: int, hz: float = 440.0) -> np.ndarray:
    t = np.arange(int(seconds * rate)) / rate
    return (0.4 * np.sin(2 * np.pi * hz * t)).astype(np.float32)


def encode_mp3(samples: np.ndarray, rate: int = EDGE_RATE) -> bytes:
    """Raw MP3 frames at 48 kbit/s mono, like the Edge service sends (no ID3 tag, no Xing header)."""
    out_file = io.BytesIO()
    with av.open(out_file, "w", format="mp3", options={"id3v2_version": "0", "write_xing": "0"}) as container:
        stream = container.add_stream("libmp3lame", rate=rate)
        stream.layout = "mono"
        stream.bit_rate = 48000
        frame = av.AudioFrame.from_ndarray(samples.reshape(1, -1), format="flt", layout="mono")
        frame.sample_rate = rate
        for packet in [*stream.encode(frame), *stream.encode(None)]:
            container.mux(packet)
    return out_file.getvalue()


def pieces(data: bytes, size: int) -> list[bytes]:
    return [data[i : i + size] for i in range(0, len(data), size)]


@dataclass
class ServiceLog:
    requests: list[str | dict] = field(default_factory=list)
    sent_pieces: int = 0
    finished: float | None = None  # everything was sent
    hung_up: asyncio.Event = field(default_factory=asyncio.Event)  # the client left before the end


class LocalServer:
    def __init__(self) -> None:
        self.log = ServiceLog()
        self._runner: web.AppRunner | None = None
        self.port = 0

    def _routes(self, app: web.Application) -> None:
        raise NotImplementedError

    async def start(self) -> None:
        app = web.Application()
        self._routes(app)
        self._runner = web.AppRunner(app, handler_cancellation=True)
        await self._runner.setup()
        site = web.TCPSite(self._runner, "127.0.0.1", 0)
        await site.start()
        self.port = site._server.sockets[0].getsockname()[1]

    async def close(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()


class FakeEdgeService(LocalServer):
    """`mode`: "audio" (stream `mp3` in pieces), "no_audio" (end the turn at once), "reject" (HTTP 503)."""

    def __init__(self, mp3: bytes, piece_bytes: int = 1440, delay: float = 0.05, mode: str = "audio"):
        super().__init__()
        self.mp3, self.piece_bytes, self.delay, self.mode = mp3, piece_bytes, delay, mode

    @property
    def url(self) -> str:
        return f"ws://127.0.0.1:{self.port}/edge/v1?TrustedClientToken=test"

    def _routes(self, app: web.Application) -> None:
        app.router.add_get("/edge/v1", self._speak)

    async def _speak(self, request: web.Request) -> web.StreamResponse:
        if self.mode == "reject":
            return web.Response(status=503, text="unavailable")
        ws = web.WebSocketResponse()
        await ws.prepare(request)
        sender: asyncio.Task | None = None
        try:
            for _ in range(2):  # speech.config, then the SSML
                self.log.requests.append(await ws.receive_str())
            sender = asyncio.create_task(self._send(ws))
            async for _ in ws:  # answers the client's close frame, like the real service
                pass
        except asyncio.CancelledError:
            self.log.hung_up.set()  # the connection dropped
            raise
        finally:
            if sender is not None and not sender.done():
                self.log.hung_up.set()  # the client closed before the end
                sender.cancel()
        return ws

    async def _send(self, ws: web.WebSocketResponse) -> None:
        await ws.send_str(self._text("turn.start"))
        if self.mode == "audio":
            for piece in pieces(self.mp3, self.piece_bytes):
                await asyncio.sleep(self.delay)
                await ws.send_bytes(self._audio(piece))
                self.log.sent_pieces += 1
        await ws.send_str(self._text("turn.end"))
        self.log.finished = time.monotonic()

    @staticmethod
    def _text(path: str) -> str:
        return f"X-RequestId:test\r\nContent-Type:application/json; charset=utf-8\r\nPath:{path}\r\n\r\n{{}}"

    @staticmethod
    def _audio(data: bytes) -> bytes:
        header = b"X-RequestId:test\r\nContent-Type:audio/mpeg\r\nPath:audio\r\n"
        return len(header).to_bytes(2, "big") + header + data


class FakeSpeechServer(LocalServer):
    """`POST /v1/audio/speech` streaming `pcm` (24 kHz s16le) in pieces, or failing with `status`."""

    def __init__(self, pcm: bytes, piece_bytes: int = 4801, delay: float = 0.05, status: int = 200):
        super().__init__()
        self.pcm, self.piece_bytes, self.delay, self.status = pcm, piece_bytes, delay, status

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.port}/v1"

    def _routes(self, app: web.Application) -> None:
        app.router.add_post("/v1/audio/speech", self._speech)

    async def _speech(self, request: web.Request) -> web.StreamResponse:
        self.log.requests.append(await request.json())
        if self.status != 200:
            body = {"error": {"message": "scripted failure", "type": "test", "code": self.status}}
            return web.json_response(body, status=self.status)
        response = web.StreamResponse(headers={"Content-Type": "audio/pcm"})
        await response.prepare(request)
        try:
            for piece in pieces(self.pcm, self.piece_bytes):  # odd size: samples split across pieces
                await asyncio.sleep(self.delay)
                await response.write(piece)
                self.log.sent_pieces += 1
            await response.write_eof()
            self.log.finished = time.monotonic()
        except (asyncio.CancelledError, ConnectionResetError):
            self.log.hung_up.set()
            raise
        return response


def pcm_s16(samples: np.ndarray) -> bytes:
    return (np.clip(samples, -1, 1) * 32767).astype("<i2").tobytes()
