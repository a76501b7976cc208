"""Local stand-ins for the voice-cloning TTS services, on 127.0.0.1, speaking their documented HTTP APIs.

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
import struct
import time
from urllib.parse import parse_qsl

from aiohttp import web

from tests.support.tts_servers import LocalServer, pcm_s16, pieces, sine

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
        await response.prepare(request)
        try:
            for piece in pieces(header + self.pcm, self.piece_bytes):  # odd size: samples split across pieces
                await asyncio.sleep(self.delay)
                await response.write(piece)
                self.log.sent_pieces += 1
            await response.write_eof()
            self.log.finished = time.monotonic()
        except (asyncio.CancelledError, ConnectionResetError):
            self.log.hung_up.set()
            raise
        return response
