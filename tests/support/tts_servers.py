"""Local stand-ins for network TTS services, on 127.0.0.1, for tests.

`FakeEdgeService` speaks the edge-tts websocket protocol (turn.start, binary
audio messages with a length-prefixed header, turn.end) and streams a real MP3
in pieces; tests point edge-tts at it by replacing its service URL.
`FakeSpeechServer` is an OpenAI-compatible `/v1/audio/speech` streaming raw
24 kHz s16le PCM. Both record requests and whether the client hung up early.

The voice-cloning services, speaking their documented HTTP APIs:

- GPT-SoVITS api_v2: `POST /tts` JSON (text, text_lang, ref_audio_path, prompt_text, prompt_lang,
  media_type, streaming_mode); with streaming and media_type "wav": a WAV header, then raw PCM (32 kHz).
- CosyVoice FastAPI: `GET /inference_zero_shot` form (tts_text, prompt_text) + file `prompt_wav`,
  `GET /inference_sft` form (tts_text, spk_id); raw s16le PCM (22050 Hz).
- Fish-Speech: `POST /v1/tts` JSON (text, format, streaming, references [{audio base64, text}] or
  reference_id); with streaming: a WAV header, then PCM (44.1 kHz).
- XTTS streaming server: `POST /clone_speaker` file `wav_file` -> {gpt_cond_latent, speaker_embedding};
  `POST /tts_stream` JSON -> raw PCM (24 kHz), a WAV header first only if add_wav_header.

Each answers 422 (FastAPI's validation error) when a required field is missing, streams
a 440 Hz tone in pieces with a delay, and records requests and early hang-ups.
"""

from __future__ import annotations

import asyncio
import base64
import io
import struct
import time
from dataclasses import dataclass, field
from urllib.parse import parse_qsl

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
        return await stream_pieces(request, response, self.pcm, self.piece_bytes, self.delay, self.log)


def pcm_s16(samples: np.ndarray) -> bytes:
    return (np.clip(samples, -1, 1) * 32767).astype("<i2").tobytes()


async def stream_pieces(request: web.Request, response: web.StreamResponse, data: bytes, piece_bytes: int,
                        delay: float, log: ServiceLog) -> web.StreamResponse:
    """Send `data` in pieces with a delay before each, logging pieces, the end and a hang-up."""
    await response.prepare(request)
    try:
        for piece in pieces(data, piece_bytes):  # odd size: samples split across pieces
            await asyncio.sleep(delay)
            await response.write(piece)
            log.sent_pieces += 1
        await response.write_eof()
        log.finished = time.monotonic()
    except (asyncio.CancelledError, ConnectionResetError):
        log.hung_up.set()
        raise
    return response


RATES = {"sovits": 32000, "cosyvoice": 22050, "fishtts": 44100, "xtts": 24000}
REQUIRED = {
    "sovits": ("text", "text_lang", "ref_audio_path", "prompt_lang"),
    "fishtts": ("text",),
    "xtts": ("text", "language", "gpt_cond_latent", "speaker_embedding"),
}


def wav_header(rate: int) -> bytes:
    """A streaming WAV header (data size unknown, written as 0xFFFFFFFF... like the services do)."""
    fmt = struct.pack("<HHIIHH", 1, 1, rate, rate * 2, 2, 16)
    return b"RIFF" + struct.pack("<I", 0xFFFFFFFF) + b"WAVE" + b"fmt " + struct.pack("<I", 16) + fmt \
        + b"data" + struct.pack("<I", 0xFFFFFFFF)


class FakeCloningService(LocalServer):
    """One service by name; `status` != 200 makes every synthesis request fail."""

    def __init__(self, service: str, seconds: float = 1.0, piece_bytes: int = 3001, delay: float = 0.04,
                 status: int = 200):
        super().__init__()
        self.service, self.piece_bytes, self.delay, self.status = service, piece_bytes, delay, status
        self.rate = RATES[service]
        self.pcm = pcm_s16(sine(seconds, self.rate))
        self.uploads: list[dict] = []  # multipart fields (files as bytes)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def _routes(self, app: web.Application) -> None:
        app.router.add_post("/tts", self._sovits)
        app.router.add_get("/inference_zero_shot", self._cosy_zero_shot)
        app.router.add_get("/inference_sft", self._cosy_sft)
        app.router.add_post("/v1/tts", self._fish)
        app.router.add_post("/clone_speaker", self._xtts_clone)
        app.router.add_post("/tts_stream", self._xtts_stream)

    async def _json(self, request: web.Request, service: str) -> dict | web.Response:
        body = await request.json()
        self.log.requests.append(body)
        missing = [key for key in REQUIRED[service] if key not in body]
        if missing:
            return web.json_response({"detail": [{"loc": ["body", k], "msg": "field required"} for k in missing]},
                                     status=422)
        return body

    async def _form(self, request: web.Request, required: tuple[str, ...]) -> dict | web.Response:
        fields: dict = {}
        if request.content_type.startswith("multipart/"):
            reader = await request.multipart()
            while (part := await reader.next()) is not None:
                fields[part.name] = await part.read() if part.filename else (await part.text())
        else:
            fields = dict(parse_qsl((await request.read()).decode()))  # aiohttp's post() skips GET bodies
        self.uploads.append(fields)
        self.log.requests.append({k: v for k, v in fields.items() if not isinstance(v, (bytes, bytearray))})
        missing = [key for key in required if key not in fields]
        if missing:
            return web.json_response({"detail": [{"loc": ["body", k], "msg": "field required"} for k in missing]},
                                     status=422)
        return fields

    async def _sovits(self, request: web.Request) -> web.StreamResponse:
        body = await self._json(request, "sovits")
        if isinstance(body, web.Response):
            return body
        if body.get("media_type") != "wav" or body.get("streaming_mode") is not True:
            return web.json_response({"message": "this fake streams wav only"}, status=400)
        return await self._stream(request, wav_header(self.rate))

    async def _cosy_zero_shot(self, request: web.Request) -> web.StreamResponse:
        fields = await self._form(request, ("tts_text", "prompt_text", "prompt_wav"))
        return fields if isinstance(fields, web.Response) else await self._stream(request)

    async def _cosy_sft(self, request: web.Request) -> web.StreamResponse:
        fields = await self._form(request, ("tts_text", "spk_id"))
        return fields if isinstance(fields, web.Response) else await self._stream(request)

    async def _fish(self, request: web.Request) -> web.StreamResponse:
        body = await self._json(request, "fishtts")
        if isinstance(body, web.Response):
            return body
        for reference in body.get("references", []):
            base64.b64decode(reference["audio"], validate=True)
        return await self._stream(request, wav_header(self.rate))

    async def _xtts_clone(self, request: web.Request) -> web.Response:
        fields = await self._form(request, ("wav_file",))
        if isinstance(fields, web.Response):
            return fields
        return web.json_response({"gpt_cond_latent": [[0.1, 0.2], [0.3, 0.4]], "speaker_embedding": [0.5, 0.6]})

    async def _xtts_stream(self, request: web.Request) -> web.StreamResponse:
        body = await self._json(request, "xtts")
        if isinstance(body, web.Response):
            return body
        return await self._stream(request, wav_header(self.rate) if body.get("add_wav_header", True) else b"")

    async def _stream(self, request: web.Request, header: bytes = b"") -> web.StreamResponse:
        if self.status != 200:
            return web.json_response({"message": "scripted failure"}, status=self.status)
        response = web.StreamResponse(headers={"Content-Type": "audio/wav" if header else "audio/pcm"})
        return await stream_pieces(request, response, header + self.pcm, self.piece_bytes, self.delay, self.log)
